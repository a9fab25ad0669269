"""ASGI middleware of the HTTP front: request id into the log context, request metrics,
and the body size limit.

Serve's proxy already honours an incoming ``x-request-id`` (or makes one up), passes it
on in the request headers and echoes it in the response; this middleware only reads it.
Run without Serve's proxy, it makes one up and echoes it itself.
"""

from __future__ import annotations

import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.errors import error_response
from serve.exceptions import PayloadTooLargeError
from serve.logs import reset_request_id, set_request_id
from serve.metrics import ServeMetrics

REQUEST_ID_HEADER = "x-request-id"


class RequestContextMiddleware:
    """Sets the request id for the request and counts it in the metrics."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = MutableHeaders(scope=scope)
        request_id = headers.get(REQUEST_ID_HEADER)
        echo = request_id is None
        if request_id is None:
            request_id = uuid.uuid4().hex
            headers[REQUEST_ID_HEADER] = request_id
        token = set_request_id(request_id)
        started = time.monotonic()
        status = 500

        async def send_with_context(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if echo:
                    MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_context)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(
                route=path, method=scope["method"], status=str(status)
            ).inc()
            self.metrics.latency.labels(route=path).observe(time.monotonic() - started)
            if status >= 400:
                self.metrics.errors.labels(route=path, status=str(status)).inc()
            reset_request_id(token)


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413 and OpenAI's envelope.

    A declared Content-Length over the limit is answered before the body is read; a
    body that grows past it while streaming (no or a false Content-Length) fails the
    read with an HTTP 413, which the app's handler turns into the envelope. (FastAPI's
    own ``max_body_size`` answers in plain text, which the openai client cannot parse.)
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(self._error())
            await response(scope, receive, send)
            return
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._error().message)
            return message

        await self.app(scope, receive_limited, send)

    def _error(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(f"the body is larger than {self.max_bytes} bytes")
