"""The HTTP routes: thin, they authenticate, parse and hand over to the serving classes.

Everything a route needs lives on ``request.app.state.ouro`` (an ``IngressServices``),
built once per replica.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from serve.auth import Caller
from serve.errors import error_response
from serve.exceptions import NotFoundError
from serve.metrics import CONTENT_TYPE
from serve.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ErrorResponse,
    FeedbackCreated,
    FeedbackRequest,
    FeedbackStats,
    Liveness,
    ModelCard,
    ModelList,
    Readiness,
    RegistryRefresh,
)

STATIC_DIR = Path(__file__).resolve().parent / "static"

router = APIRouter()


def _errors(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI ``responses`` for the error statuses a route sends, all in the envelope."""
    return {
        status: {"model": ErrorResponse, "description": ERROR_STATUSES[status]}
        for status in (*statuses, 500)
    }


ERROR_STATUSES = {
    400: "The request is invalid (the message and param say what to fix).",
    401: "No API key, or an unknown one.",
    403: "The key is not an admin key.",
    404: "No such model.",
    413: "The body is over the size limit.",
    429: "The server is busy; retry shortly.",
    503: "The model, the registry or the feedback store is not ready.",
    500: "An unexpected failure (details only in the server's log).",
}


def services(request: Request):
    return request.app.state.ouro


AuthorizationHeader = Annotated[str | None, Header()]


# The key checks are coroutines: FastAPI runs a plain ``def`` dependency in a worker thread,
# a hop per request for a check that takes microseconds.
async def client(request: Request, authorization: AuthorizationHeader = None) -> Caller:
    return services(request).auth.authenticate(authorization)


async def admin(request: Request, authorization: AuthorizationHeader = None) -> Caller:
    return services(request).auth.authenticate(authorization, admin=True)


async def scraper(request: Request, authorization: AuthorizationHeader = None) -> None:
    services(request).auth.authorize_metrics(authorization)


STREAMED_MODELS = (ChatCompletionChunk,)
"""Models sent only inside server-sent events: the spec's components carry them too."""

CHAT_STREAM_EVENT = {
    "type": "object",
    "required": ["data"],
    "description": "One server-sent event: a chat.completion.chunk, an error once the "
    "stream has started, or `[DONE]`.",
    "properties": {
        "data": {
            "anyOf": [
                {"const": "[DONE]"},
                {
                    "contentMediaType": "application/json",
                    "contentSchema": {
                        "anyOf": [
                            {"$ref": "#/components/schemas/ChatCompletionChunk"},
                            {"$ref": "#/components/schemas/ErrorResponse"},
                        ]
                    },
                },
            ]
        }
    },
}

CHAT_RESPONSES: dict[int | str, dict] = {
    200: {
        "model": ChatCompletionResponse,
        "description": "The answer; with stream=true, server-sent events each carrying a "
        "chat.completion.chunk, then `data: [DONE]`.",
        "content": {"text/event-stream": {"schema": CHAT_STREAM_EVENT}},
    },
    **_errors(400, 401, 403, 404, 413, 429, 503),
}

CHAT_DESCRIPTION = """OpenAI chat completions, streamed (`stream: true`, server-sent events) or not.

**Routed corrections.** A version's adapter answers only the requests its corrections are
about: the last user turn (with the answer it follows) is compared with the corrections
the version learned, and a request near none of them is answered by the version's parent
instead: a personal version's is shared production (routed the same way), a shared
version's is the base model. `ouro-base` is never routed. The answer says who answered
and why, in the body and in headers sent before the first byte (streamed answers too):

- `model` and `x-ouro-model-version`: the version that answered (`ouro@v7`,
  `ouro@alice/v2`, `ouro-base`);
- `x-ouro-route`: `match` (a correction's adapter answered), `no_match` (passed on to the
  parent), `no_index` (an adapter trained without a correction index: it answers
  everything it is asked), `forced` (see below), or `base` (the base model was
  asked for);
- `x-ouro-route-similarity`: the cosine between the request and the nearest correction of
  the version that decided, 4 decimals; absent when no correction was compared.

**`x-ouro-unrouted: true`** (admin keys only; 403 `permission_error` with any other key):
the version asked for answers whatever its router says, and `x-ouro-route` is `forced`.
For debugging an adapter on prompts its corrections are not about.

**Canary rollout.** While a canary version runs, a sticky share of the conversations
asking for `ouro` is answered by it (docs: canary rollout). The completion `id` names the
side a conversation was assigned to; send it back on the conversation's next turns in
**`x-ouro-conversation`** and the conversation stays with that side even when the canary's
share steps up (400 `invalid_request_error` when the header is not a completion id).
"""


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses=CHAT_RESPONSES,
    description=CHAT_DESCRIPTION,
)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    caller: Annotated[Caller, Depends(client)],
    x_ouro_unrouted: Annotated[
        bool,
        Header(
            description="Admin keys only: answer with the version asked for, unrouted "
            "(`x-ouro-route: forced`)."
        ),
    ] = False,
    x_ouro_conversation: Annotated[
        str | None,
        Header(
            description="The completion id of an earlier answer in this conversation: "
            "the conversation stays with the side of a canary rollout that answered it."
        ),
    ] = None,
) -> Response:
    return await services(request).chat.create(
        body, caller, unrouted=x_ouro_unrouted, conversation=x_ouro_conversation
    )


@router.get("/v1/models", responses=_errors(400, 401))
async def list_models(
    request: Request,
    caller: Annotated[Caller, Depends(client)],
    user: Annotated[str | None, Query(description="Narrows the key's personal scope.")] = None,
) -> ModelList:
    ouro = services(request)
    if ouro.personal is None:
        return ModelList(data=ouro.names.listing(ouro.base_model_name))
    cards = await ouro.personal.listing(ouro.names, ouro.base_model_name, caller.scope(user))
    return ModelList(data=cards)


@router.get(
    "/v1/models/{model_id}",
    dependencies=[Depends(client)],
    response_model=ModelCard,
    responses=_errors(401, 404),
)
async def retrieve_model(model_id: str, request: Request) -> Response:
    ouro = services(request)
    card = ModelList(data=ouro.names.listing(ouro.base_model_name)).get(model_id)
    if card is None:
        return error_response(
            NotFoundError(f"no model named {model_id!r}", "model", code="model_not_found")
        )
    return JSONResponse(card.model_dump(mode="json"))


@router.post(
    "/v1/feedback",
    status_code=201,
    response_model=None,
    responses={201: {"model": FeedbackCreated}, **_errors(400, 401, 413, 503)},
)
async def create_feedback(
    body: FeedbackRequest, request: Request, caller: Annotated[Caller, Depends(client)]
) -> Response:
    """Correct an answer (``correction``) or rate it (``rating``: 'up' or 'down'); exactly
    one of the two. Answers 201 with the record's id once it is durable on disk.
    Corrections train the next version; ratings are signals for rollout, never training rows.
    """
    return await services(request).feedback.create(body, caller)


@router.get(
    "/v1/feedback/stats",
    dependencies=[Depends(admin)],
    response_model=None,
    responses={200: {"model": FeedbackStats}, **_errors(401, 403, 503)},
)
async def feedback_stats(request: Request) -> Response:
    """Counts of the ledger (admin key): corrections in total, per version and since the
    last training; ratings by verdict, and per version."""
    return await services(request).feedback.stats()


@router.post(
    "/admin/scopes/{scope:path}/forget",
    response_model=None,
    responses={200: {"description": "The scope is forgotten."}, **_errors(400, 401, 403, 503)},
)
async def forget_scope(
    scope: str,
    request: Request,
    caller: Annotated[Caller, Depends(admin)],
    reason: Annotated[str | None, Query(max_length=1000)] = None,
) -> Response:
    ouro = services(request)
    response = await ouro.feedback.forget(scope, reason, caller, ouro.personal_registries)
    await ouro.health.refresh(0.0)  # drop the scope's names now, not at the next poll
    return response


@router.post(
    "/admin/feedback/{record_id}/share",
    status_code=201,
    response_model=None,
    responses={
        201: {"description": "The correction is marked shared."},
        **_errors(400, 401, 403, 404, 503),
    },
)
async def share_feedback(
    record_id: str,
    request: Request,
    caller: Annotated[Caller, Depends(admin)],
    reason: Annotated[str | None, Query(max_length=1000)] = None,
) -> Response:
    return await services(request).feedback.share(record_id, reason, caller)


@router.post(
    "/admin/registry/refresh",
    dependencies=[Depends(admin)],
    response_model=None,
    responses={200: {"model": RegistryRefresh}, **_errors(400, 401, 403, 503)},
)
async def refresh_registry(
    request: Request,
    wait_s: Annotated[
        float, Query(ge=0.0, le=600.0, description="Wait up to this long for every LLM replica.")
    ] = 0.0,
) -> Response:
    return await services(request).health.refresh(wait_s)


@router.get("/healthz")
async def healthz() -> Liveness:
    return Liveness()


@router.get(
    "/readyz",
    response_model=None,
    responses={
        200: {"model": Readiness, "description": "Ready: 'ouro' can answer."},
        503: {"model": Readiness, "description": "Not ready; `reason` says why."},
    },
)
async def readyz(request: Request) -> Response:
    return await services(request).health.readiness()


@router.get(
    "/metrics",
    dependencies=[Depends(scraper)],
    response_model=None,
    responses={
        200: {
            "description": "Prometheus metrics in the text exposition format, every "
            "replica's series labelled `replica`. Needs a metrics or an admin API key.",
            "content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
        },
        **_errors(401, 403),
    },
)
async def metrics(request: Request) -> Response:
    ouro = services(request)
    await ouro.metrics.refresh()  # the LLM replicas' state now, not at their last poll
    return Response(ouro.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/", include_in_schema=False)
async def chat_page() -> Response:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        return error_response(NotFoundError("the chat page is not installed"))
    return FileResponse(page, media_type="text/html")
