"""The served OpenAPI spec, fuzzed with schemathesis against the real app.

Every operation gets generated requests (chat with valid model names, so generation
runs instead of a 404 every time); each answer must not be a 5xx, and its status,
content type and body must be what the spec declares for that route. No 422 may be
documented: this app answers validation failures with 400 and OpenAI's envelope.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from serve.protocol import NOT_YET_SUPPORTED
from tests.fixtures.serve import ServeStack

pytestmark = pytest.mark.integration

ADMIN_KEY = "sk-admin-" + "f" * 24
MAX_TOKENS_LIMIT = 8
EXAMPLES = 30
"""Generated requests per operation: bounds the run (about a minute on two cores)."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
OPERATIONS = [
    ("/v1/chat/completions", "POST"),
    ("/v1/models", "GET"),
    ("/v1/models/{model_id}", "GET"),
    ("/v1/feedback", "POST"),
    ("/v1/feedback/stats", "GET"),
    ("/admin/registry/refresh", "POST"),
    ("/healthz", "GET"),
    ("/readyz", "GET"),
    ("/metrics", "GET"),
]


@pytest.fixture(scope="module")
def stack(serve_stack_factory, mlflow_server: str, tiny_random_model_dir: Path) -> ServeStack:
    return serve_stack_factory(
        {
            "base_model": str(tiny_random_model_dir),
            "mlflow_tracking_uri": mlflow_server,
            "registered_model_name": f"ouro-fuzz-{uuid.uuid4().hex[:8]}",
            "admin_api_keys": [ADMIN_KEY],
            "max_tokens_limit": MAX_TOKENS_LIMIT,
            "default_max_tokens": 4,
            "max_body_bytes": 20_000,
        }
    )


@pytest.fixture(scope="module")
def spec(stack: ServeStack) -> dict:
    return httpx.get(f"{stack.base_url}/openapi.json", timeout=60).json()


@pytest.fixture(scope="module")
def schema(spec: dict):
    narrowed = _narrowed(spec)
    return schemathesis.openapi.from_dict(narrowed)


def _narrowed(spec: dict) -> dict:
    """The spec narrowed so that generated chat requests reach generation: served model
    names, user turns, max_tokens within the limit, none of the parameters refused until the engine
    supports them (their 400s are tested in test_openai_api); and the refresh wait short.
    Otherwise nearly every chat request would be a 404 or a 400, and a refresh could wait
    10 minutes."""
    chat = spec["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    chat["model"] = {"enum": ["ouro", "ouro-base"]}
    # Turns whose rules span fields (tool_call_id, content null beside tool_calls, the
    # last turn the user's) are beyond JSON Schema: the fuzzer sends user turns, and the
    # protocol tests cover the rest.
    chat["messages"] = {
        "type": "array",
        "minItems": 1,
        "maxItems": 4,
        "items": {
            "type": "object",
            "required": ["role", "content"],
            "properties": {"role": {"const": "user"}, "content": {"type": "string"}},
        },
    }
    for name in ("max_tokens", "max_completion_tokens"):
        chat[name] = {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS_LIMIT}
    for name in NOT_YET_SUPPORTED:
        del chat[name]
    _parameter(spec, "/v1/models/{model_id}", "get", "model_id")["schema"] = {
        "enum": ["ouro", "ouro-base", "ouro@v1", "gpt-4"]
    }
    _parameter(spec, "/admin/registry/refresh", "post", "wait_s")["schema"]["maximum"] = 1.0
    return spec


def _parameter(spec: dict, path: str, method: str, name: str) -> dict:
    (parameter,) = [p for p in spec["paths"][path][method]["parameters"] if p["name"] == name]
    return parameter


def test_the_spec_documents_no_422_and_the_envelope_for_errors(spec: dict) -> None:
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            assert "422" not in statuses, f"{method} {path}"
            for status in statuses:
                if int(status) < 400 or path == "/readyz":  # /readyz's 503 is its report
                    continue
                schema = operation["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (path, status)
            if path not in ("/healthz", "/readyz", "/metrics"):
                assert "500" in statuses, f"{method} {path}"
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    chat = spec["paths"]["/v1/chat/completions"]["post"]["responses"]
    # 403: x-ouro-unrouted with a key that is not an admin's.
    assert set(chat) == {"200", "400", "401", "403", "404", "413", "429", "500", "503"}
    parameters = spec["paths"]["/v1/chat/completions"]["post"]["parameters"]
    assert {"name": "x-ouro-unrouted", "in": "header"}.items() <= parameters[0].items()
    assert chat["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionResponse"
    }


def test_the_spec_describes_logprobs_in_answers_and_in_streamed_chunks(spec: dict) -> None:
    schemas = spec["components"]["schemas"]
    for choice in ("Choice", "ChunkChoice"):
        logprobs = schemas[choice]["properties"]["logprobs"]
        assert {"$ref": "#/components/schemas/ChoiceLogprobs"} in logprobs["anyOf"], choice
    content = schemas["ChoiceLogprobs"]["properties"]["content"]["anyOf"][0]["items"]
    assert set(schemas[content["$ref"].rsplit("/", 1)[1]]["properties"]) == {
        "token",
        "logprob",
        "bytes",
        "top_logprobs",
    }
    stream = spec["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    event = stream["text/event-stream"]["schema"]["properties"]["data"]["anyOf"]
    assert {"$ref": "#/components/schemas/ChatCompletionChunk"} in event[1]["contentSchema"][
        "anyOf"
    ]


@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=[f"{m} {p}" for p, m in OPERATIONS])
def test_fuzzed_requests_get_no_server_error_and_answers_match_the_spec(
    schema, stack: ServeStack, path: str, method: str
) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,  # the same requests every run
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=schema[path][method].as_strategy())
    def fuzz(case) -> None:
        response = case.call_and_validate(
            base_url=stack.base_url,
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            checks=CHECKS,
            timeout=120,
        )
        statuses.append(response.status_code)

    statuses: list[int] = []
    fuzz()
    # The generated requests must reach the route's work, not only its refusals.
    assert {200, 201} & set(statuses), statuses
