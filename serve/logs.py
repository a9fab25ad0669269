"""Logging with the request id in every line.

The ingress sets the id of the request it is handling (Serve's proxy honours an
incoming ``x-request-id`` header, makes one up otherwise, and echoes it in the response);
the LLM server sets it again from the call it receives. A filter copies it onto every
log record of Ouro's loggers.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar, Token

# Id of the request being handled in this task ('-' outside a request). Used through the
# functions below: Serve pickles deployment classes by value, and a ContextVar cannot be.
request_id_var: ContextVar[str] = ContextVar("ouro_request_id", default="-")


def set_request_id(request_id: str) -> Token[str]:
    """Make ``request_id`` the current request's id (undo with ``reset_request_id``)."""
    return request_id_var.set(request_id)


def reset_request_id(token: Token[str]) -> None:
    request_id_var.reset(token)


def current_request_id() -> str:
    return request_id_var.get()


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
OURO_LOGGERS = ("serve", "ouro", "train_job")
"""Top-level loggers of this project's packages."""


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` from the current context (never filters anything out)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class _OuroHandler(logging.StreamHandler):
    """Marks the handler this module installs, so configuring twice adds nothing."""


def configure_logging(level: str | int = logging.INFO) -> None:
    """Send Ouro's loggers to stderr with request ids (Ray collects a replica's stderr).

    Only Ouro's own loggers are touched: Ray Serve configures its ``ray.serve`` logger
    itself and the root logger belongs to the host process.
    """
    for name in OURO_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if any(isinstance(handler, _OuroHandler) for handler in logger.handlers):
            continue
        handler = _OuroHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.addFilter(RequestIdFilter())
        logger.addHandler(handler)
        logger.propagate = False
