"""Every failure maps to OpenAI's envelope with the right status; nothing internal leaks."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError

from ouro.chat import PromptTooLongError
from ouro.engine import AdapterIncompatibleError, AdapterNotFoundError
from ouro.engine import InvalidRequestError as EngineRequestError
from ouro.ledger import FeedbackTooLargeError, InvalidFeedbackError, LedgerUnavailableError
from ouro.names import UnknownModelError
from ouro.registry import AdapterArtifactError, RegistryUnavailableError
from serve.errors import api_error, error_response, stream_error_event
from serve.exceptions import (
    AuthenticationError,
    InvalidRequestError,
    NotReadyError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from serve.protocol import ChatCompletionRequest


def validation_error() -> ValidationError:
    try:
        ChatCompletionRequest.model_validate({"model": "ouro", "messages": "hi"})
    except ValidationError as exc:
        return exc
    raise AssertionError("expected a validation error")


CASES = [
    # (exception, status, type, param, code)
    (InvalidRequestError("bad n", "n"), 400, "invalid_request_error", "n", None),
    (validation_error(), 400, "invalid_request_error", "messages", None),
    (EngineRequestError("top_p must be in (0, 1]"), 400, "invalid_request_error", None, None),
    (
        PromptTooLongError("too long"),
        400,
        "invalid_request_error",
        "messages",
        "context_length_exceeded",
    ),
    (InvalidFeedbackError("empty", "correction"), 400, "invalid_request_error", "correction", None),
    (AdapterIncompatibleError("shapes"), 400, "invalid_request_error", "model", "model_unusable"),
    (AdapterArtifactError("no config"), 400, "invalid_request_error", "model", "model_unusable"),
    (AuthenticationError("missing API key"), 401, "authentication_error", None, "invalid_api_key"),
    (PermissionDeniedError("admin only"), 403, "permission_error", None, "admin_key_required"),
    (UnknownModelError("no such model"), 404, "invalid_request_error", "model", "model_not_found"),
    (AdapterNotFoundError("gone"), 404, "invalid_request_error", "model", "model_not_found"),
    (PayloadTooLargeError("big"), 413, "invalid_request_error", None, "request_too_large"),
    (
        FeedbackTooLargeError("long", "reason"),
        413,
        "invalid_request_error",
        "reason",
        "request_too_large",
    ),
    (
        BackPressureError(num_queued_requests=9, max_queued_requests=8),
        429,
        "rate_limit_error",
        None,
        "overloaded",
    ),
    (NotReadyError("loading"), 503, "service_unavailable", None, "not_ready"),
    (RegistryUnavailableError("down"), 503, "service_unavailable", None, "not_ready"),
    (LedgerUnavailableError("disk full"), 503, "service_unavailable", None, "not_ready"),
    (ZeroDivisionError("secret internal detail"), 500, "server_error", None, None),
]


@pytest.mark.parametrize(
    ("exc", "status", "type_", "param", "code"),
    CASES,
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_each_failure_has_its_status_and_envelope(exc, status, type_, param, code) -> None:
    error = api_error(exc)
    assert error.status == status
    body = error.envelope()["error"]
    assert (body["type"], body["param"], body["code"]) == (type_, param, code)
    assert body["message"]


def test_an_unexpected_error_says_nothing_internal() -> None:
    response = error_response(ZeroDivisionError("secret internal detail"))
    assert response.status_code == 500
    assert b"secret" not in response.body
    assert json.loads(response.body)["error"]["message"] == "internal server error"


def test_errors_raised_in_another_replica_are_unwrapped() -> None:
    wrapped = RayTaskError("generate", "Traceback ...", UnknownModelError("no ouro@v9"))
    assert api_error(wrapped).status == 404
    assert api_error(wrapped.as_instanceof_cause()).envelope()["error"]["message"] == "no ouro@v9"


def test_a_401_tells_the_client_how_to_authenticate() -> None:
    response = error_response(AuthenticationError("missing API key"))
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_mid_stream_error_is_one_server_sent_event() -> None:
    event = stream_error_event(UnknownModelError("no such model"))
    assert event.startswith("data: ") and event.endswith("\n\n")
    assert json.loads(event.removeprefix("data: "))["error"]["code"] == "model_not_found"
