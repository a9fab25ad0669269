"""One mapping from exceptions to OpenAI's error envelope and an HTTP status.

``api_error(exc)`` is the only place that decides what a failure looks like to a client:
bad input is a 4xx with a message that says what to fix; anything unexpected is a 500
that says nothing internal (the details go to the log, with the request id). The
official ``openai`` client raises its matching exception class for each status.
``stream_error_event`` renders the same envelope as a server-sent event, for a failure
after a stream has started (the status line is gone by then).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from ouro.chat import PromptTooLongError
from ouro.engine import (
    AdapterIncompatibleError,
    AdapterNotFoundError,
    EngineOverloadedError,
    EngineStoppedError,
    RequestAbortedError,
)
from ouro.engine import InvalidRequestError as EngineRequestError
from ouro.ledger import FeedbackTooLargeError, InvalidFeedbackError, LedgerUnavailableError
from ouro.names import UnknownModelError
from ouro.personal import UnknownCorrectionError
from ouro.registry import AdapterArtifactError, RegistryError, RegistryUnavailableError
from ouro.scopes import InvalidScopeError
from serve.exceptions import (
    InvalidRequestError,
    NotFoundError,
    NotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    ServeError,
)
from serve.protocol import ErrorInfo, ErrorResponse

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiError:
    """What a failure looks like to a client."""

    status: int
    info: ErrorInfo

    def envelope(self) -> dict:
        return ErrorResponse(error=self.info).model_dump()


def _cause(exc: BaseException) -> BaseException:
    """The exception raised in another replica, without Ray's wrapper."""
    while isinstance(exc, RayTaskError) and exc.cause is not None and exc.cause is not exc:
        exc = exc.cause
    return exc


def _message(exc: BaseException) -> str:
    return str(exc.args[0]) if exc.args else type(exc).__name__


def _validation_error(errors: list[dict]) -> ApiError:
    first = errors[0] if errors else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    text = first.get("msg", "invalid request")
    if first.get("type") == "json_invalid":
        return ApiError(
            400,
            ErrorInfo(
                message="the body is not valid JSON",
                type="invalid_request_error",
                code="invalid_json",
            ),
        )
    message = f"{param}: {text}" if param else text
    return ApiError(400, ErrorInfo(message=message, type="invalid_request_error", param=param))


def api_error(exc: BaseException) -> ApiError:
    """The status and envelope for ``exc`` (logs unexpected ones with their traceback)."""
    exc = _cause(exc)
    if isinstance(exc, ServeError):
        info = ErrorInfo(message=exc.message, type=exc.type, param=exc.param, code=exc.code)
        return ApiError(exc.status, info)
    if isinstance(exc, RequestValidationError):
        return _validation_error(list(exc.errors()))
    if isinstance(exc, ValidationError):
        return _validation_error(exc.errors())
    if isinstance(exc, FeedbackTooLargeError):
        return api_error(PayloadTooLargeError(_message(exc), exc.param))
    if isinstance(exc, InvalidFeedbackError):
        return api_error(InvalidRequestError(_message(exc), exc.param))
    if isinstance(exc, InvalidScopeError):
        return api_error(InvalidRequestError(_message(exc), exc.param))
    if isinstance(exc, UnknownCorrectionError):
        return api_error(NotFoundError(_message(exc), "record_id"))
    if isinstance(exc, UnknownModelError):
        return api_error(NotFoundError(_message(exc), "model", code="model_not_found"))
    if isinstance(exc, AdapterNotFoundError):
        message = f"the model version cannot be loaded: {_message(exc)}"
        return api_error(NotFoundError(message, "model", code="model_not_found"))
    if isinstance(exc, AdapterIncompatibleError | AdapterArtifactError):
        message = f"the model version is broken: {_message(exc)}"
        return api_error(InvalidRequestError(message, "model", code="model_unusable"))
    if isinstance(exc, PromptTooLongError):
        return api_error(
            InvalidRequestError(_message(exc), "messages", code="context_length_exceeded")
        )
    if isinstance(exc, EngineRequestError):
        return api_error(InvalidRequestError(_message(exc), exc.param))
    if isinstance(exc, BackPressureError | EngineOverloadedError):
        return api_error(OverloadedError("the server is busy; retry shortly"))
    if isinstance(exc, EngineStoppedError):
        logger.error("engine stopped: %s", exc)
        return api_error(NotReadyError("the model server is restarting; retry shortly"))
    if isinstance(exc, RequestAbortedError):
        # Its adapter version was removed under it (an operator deleted it, or a forget).
        return api_error(NotReadyError(f"the request was cut short: {_message(exc)}"))
    if isinstance(exc, RegistryUnavailableError):
        return api_error(NotReadyError(f"the model registry is unreachable: {_message(exc)}"))
    if isinstance(exc, RegistryError):
        logger.error("model registry error: %s", exc)
        return api_error(NotReadyError("the model registry failed; retry shortly"))
    if isinstance(exc, LedgerUnavailableError):
        logger.error("feedback ledger unavailable: %s", exc)
        return api_error(NotReadyError("the feedback store is unavailable; retry shortly"))
    if isinstance(exc, DeploymentUnavailableError):
        return api_error(NotReadyError("the model server is not available yet"))
    logger.error("unexpected error", exc_info=(type(exc), exc, exc.__traceback__))
    return ApiError(500, ErrorInfo(message="internal server error", type="server_error"))


def error_response(exc: BaseException, headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON response carrying ``exc`` as OpenAI's envelope."""
    error = api_error(exc)
    if error.status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return JSONResponse(error.envelope(), status_code=error.status, headers=headers)


def stream_error_event(exc: BaseException) -> str:
    """A server-sent event carrying ``exc`` as OpenAI's envelope (for mid-stream failures)."""
    return f"data: {json.dumps(api_error(exc).envelope())}\n\n"
