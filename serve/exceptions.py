"""The errors this app raises on purpose, each with the status and envelope it deserves.

Kept apart from ``serve.errors`` (which maps every exception, and so imports the engine,
the ledger and the registry) so that light modules such as ``serve.auth`` stay light.
"""

from __future__ import annotations

from ouro.errors import OuroError


class ServeError(OuroError):
    """An error this app raises on purpose, with the status and envelope it deserves."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:  # a more specific code than the class's own
            self.code = code


class InvalidRequestError(ServeError):
    """The request cannot be served as written (400)."""

    status = 400
    type = "invalid_request_error"


class AuthenticationError(ServeError):
    """No API key, or one this server does not know (401)."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(ServeError):
    """A valid key without the right to do this (403)."""

    status = 403
    type = "permission_error"
    code = "admin_key_required"


class NotFoundError(ServeError):
    """No such route or resource (404)."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class PayloadTooLargeError(ServeError):
    """Body over the configured limit (413)."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class OverloadedError(ServeError):
    """The queue is full; try again later (429)."""

    status = 429
    type = "rate_limit_error"
    code = "overloaded"


class NotReadyError(ServeError):
    """The model or the registry is not ready yet (503)."""

    status = 503
    type = "service_unavailable"
    code = "not_ready"
