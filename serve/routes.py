"""The HTTP routes: thin, they authenticate, parse and hand over to the serving classes.

Everything a route needs lives on ``request.app.state.ouro`` (an ``IngressServices``),
built once per ingress replica.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import FileResponse, Response

from serve.auth import Caller
from serve.errors import error_response
from serve.exceptions import NotFoundError
from serve.metrics import CONTENT_TYPE
from serve.protocol import ChatCompletionRequest, FeedbackRequest, ModelList

STATIC_DIR = Path(__file__).resolve().parent / "static"

router = APIRouter()


def services(request: Request):
    return request.app.state.ouro


AuthorizationHeader = Annotated[str | None, Header()]


def client(request: Request, authorization: AuthorizationHeader = None) -> Caller:
    return services(request).auth.authenticate(authorization)


def admin(request: Request, authorization: AuthorizationHeader = None) -> Caller:
    return services(request).auth.authenticate(authorization, admin=True)


@router.post("/v1/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, caller: Annotated[Caller, Depends(client)]
) -> Response:
    return await services(request).chat.create(body, caller)


@router.get("/v1/models")
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


@router.post("/v1/feedback", status_code=201)
async def create_feedback(
    body: FeedbackRequest, request: Request, caller: Annotated[Caller, Depends(client)]
) -> Response:
    return await services(request).feedback.create(body, caller)


@router.get("/v1/feedback/stats", dependencies=[Depends(admin)])
async def feedback_stats(request: Request) -> Response:
    return await services(request).feedback.stats()


@router.post("/admin/scopes/{scope:path}/forget")
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


@router.post("/admin/feedback/{record_id}/share", status_code=201)
async def share_feedback(
    record_id: str,
    request: Request,
    caller: Annotated[Caller, Depends(admin)],
    reason: Annotated[str | None, Query(max_length=1000)] = None,
) -> Response:
    return await services(request).feedback.share(record_id, reason, caller)


@router.post("/admin/registry/refresh", dependencies=[Depends(admin)])
async def refresh_registry(
    request: Request,
    wait_s: Annotated[
        float, Query(ge=0.0, le=600.0, description="Wait up to this long for every LLM replica.")
    ] = 0.0,
) -> Response:
    return await services(request).health.refresh(wait_s)


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    return await services(request).health.readiness()


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    ouro = services(request)
    await ouro.health.update_replica_reports()
    return Response(ouro.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/", include_in_schema=False)
async def chat_page() -> Response:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        return error_response(NotFoundError("the chat page is not installed"))
    return FileResponse(page, media_type="text/html")
