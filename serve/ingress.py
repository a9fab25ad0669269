"""The HTTP front of each LLM server replica (auth, validation, OpenAI protocol, feedback).

The LLM server deployment is the app's ingress (``serve.llm_server``): Serve's proxy hands
each HTTP request to a replica, whose ``HttpFront`` answers it with that replica's engine
in the same process, so tokens cross no Ray hop on their way out (Ray Serve LLM's direct
streaming; vLLM keeps its API server beside its engine the same way). The FastAPI app is
built per replica by ``__serve_build_asgi_app__`` (no module-level app):
``create_api(services)`` wires the middleware, the error handlers that give every failure
OpenAI's envelope (FastAPI's 422 becomes 400), the routes, and the static chat page.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from ouro.errors import OuroError
from ouro.ledger import Watermark
from ouro.registry import PersonalRegistries, TrainingCycles
from ouro.settings import OuroSettings
from serve.auth import ApiKeyAuth
from serve.errors import error_response
from serve.exceptions import (
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ServeError,
)
from serve.metrics import InstallState, ServeMetrics
from serve.middleware import BodyLimitMiddleware, RequestContextMiddleware
from serve.model_names import ModelNames
from serve.personal_names import PersonalNames
from serve.registry_watcher import RegistryWatcher
from serve.replica_report import ScrapedReports, report_max_age_s
from serve.routes import STATIC_DIR, STREAMED_MODELS, router
from serve.serving_chat import ChatCompletions
from serve.serving_feedback import Feedback, ledger_writer_id
from serve.serving_health import Health

logger = logging.getLogger(__name__)


@dataclass
class IngressServices:
    """What the routes use; one per replica (``app.state.ouro``)."""

    settings: OuroSettings
    auth: ApiKeyAuth
    names: ModelNames
    base_model_name: str
    metrics: ServeMetrics
    chat: ChatCompletions
    feedback: Feedback
    health: Health
    personal_registries: PersonalRegistries
    personal: PersonalNames | None = None
    """Personal name resolution; None unless OURO_PERSONAL_ADAPTERS is on."""


def create_api(services: IngressServices) -> FastAPI:
    """The FastAPI app around ``services``."""
    docs = services.settings.api_docs
    api = FastAPI(
        title="Ouro",
        description="OpenAI-compatible chat completions with adapters that learn from corrections.",
        # Off by default: both pages fetch their scripts from a CDN.
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
    )
    api.openapi = lambda: _openapi_without_422(api)
    api.state.ouro = services
    # The last added runs first: the request id is set before the size is checked.
    api.add_middleware(BodyLimitMiddleware, max_bytes=services.settings.max_body_bytes)
    api.add_middleware(RequestContextMiddleware, metrics=services.metrics)

    async def on_validation_error(request: Request, exc: RequestValidationError):
        return error_response(exc)

    async def on_http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 413:
            return error_response(
                PayloadTooLargeError(
                    f"the body is larger than {services.settings.max_body_bytes} bytes"
                )
            )
        if exc.status_code == 404:
            return error_response(NotFoundError(f"no route {request.url.path}"))
        error = InvalidRequestError(str(exc.detail))
        error.status = exc.status_code
        return error_response(error, headers=exc.headers)

    async def on_ouro_error(request: Request, exc: OuroError):
        return error_response(exc)

    api.add_exception_handler(RequestValidationError, on_validation_error)
    api.add_exception_handler(StarletteHTTPException, on_http_error)
    api.add_exception_handler(OuroError, on_ouro_error)
    api.add_exception_handler(ServeError, on_ouro_error)
    api.include_router(router)
    api.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    return api


def _openapi_without_422(api: FastAPI) -> dict:
    """FastAPI's spec less the 422 it documents for every route: this app answers
    validation failures with 400 and OpenAI's envelope (declared per route)."""
    if api.openapi_schema is None:
        spec = get_openapi(
            title=api.title, version=api.version, description=api.description, routes=api.routes
        )
        for path in spec["paths"].values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        schemas = spec.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        _, streamed = models_json_schema(
            [(model, "serialization") for model in STREAMED_MODELS],
            ref_template="#/components/schemas/{model}",
        )
        for name, schema in streamed.get("$defs", {}).items():
            schemas.setdefault(name, schema)
        api.openapi_schema = spec
    return api.openapi_schema


class HttpFront:
    """The HTTP side of an LLM server replica: auth, validation, the OpenAI protocol,
    feedback, health and metrics, around the replica's own LLM server (no Ray hop).

    It shares the replica's registry watcher and model names: one view of the registry
    per replica, so a name this front accepts is one its engine can serve.
    """

    def __init__(
        self,
        settings: OuroSettings,
        llm_server,
        names: ModelNames,
        watcher: RegistryWatcher,
        coordinator,
        replica_id: str,
    ) -> None:
        self.settings = settings
        self.names = names
        self.watcher = watcher
        auth = ApiKeyAuth.from_settings(settings)
        personal_registries = PersonalRegistries.from_settings(settings)
        self.personal = (
            PersonalNames(personal_registries, settings.registry_poll_interval_s)
            if settings.personal_adapters
            else None
        )
        health = Health(watcher, llm_server, coordinator, settings.registry_poll_interval_s)
        # Each scrape asks the LLM replicas for fresh reports (their last ones if they are
        # slow or the coordinator is away) and exports those.
        self._scraped = ScrapedReports(
            coordinator,
            health.update_replica_reports,
            report_max_age_s(settings.registry_poll_interval_s),
        )
        self._install = InstallState()
        self.metrics = ServeMetrics(
            replica_id,
            scrapes=lambda: self._scraped.latest,
            refresh=self._refresh_metrics,
            install_state=lambda: self._install,
        )
        self.services = IngressServices(
            settings=settings,
            auth=auth,
            names=names,
            base_model_name=settings.base_model,
            metrics=self.metrics,
            chat=ChatCompletions(settings, llm_server, self.metrics, self.personal, names),
            feedback=Feedback(
                settings, ledger_writer_id(replica_id), self.metrics, self._last_training_watermark
            ),
            health=health,
            personal_registries=personal_registries,
            personal=self.personal,
        )

    def app(self) -> FastAPI:
        return create_api(self.services)

    def close(self) -> None:
        """At the replica's shutdown: the ledger writer's open segment."""
        self.services.feedback.close()

    def on_names_changed(self) -> None:
        """After the replica updated its model names from a registry snapshot."""
        self.metrics.set_versions(self.names.versions_by_name())

    async def on_polled(self) -> None:
        """After each registry poll."""
        self.metrics.registry_up.set(1 if self.watcher.state.reachable else 0)
        if self.personal is not None and self.watcher.state.reachable:
            await self.personal.refresh()

    async def _refresh_metrics(self) -> None:
        """Before a scrape: every replica's fresh answers, and the install's state."""
        pending, _ = await asyncio.gather(
            self.services.feedback.corrections_pending(), self._scraped.refresh()
        )
        snapshot = self.watcher.state.snapshot
        latest = snapshot.latest() if snapshot is not None else None
        self._install = InstallState(
            corrections_pending=pending,
            latest_version_at=latest.created_at.timestamp()
            if latest and latest.created_at
            else None,
            cycles=snapshot.cycles if snapshot is not None else TrainingCycles(),
            canary=self.names.canary,
        )

    def _last_training_watermark(self) -> Watermark | None:
        """The ledger watermark of the newest version trained (``RegistrySnapshot.last_trained``)."""
        snapshot = self.watcher.state.snapshot
        trained = snapshot.last_trained() if snapshot is not None else None
        return trained.watermark if trained is not None else None
