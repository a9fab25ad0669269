"""OuroIngress: the app's one FastAPI ingress (auth, validation, OpenAI protocol, feedback).

The FastAPI app is built per replica by ``__serve_build_asgi_app__`` (no module-level
app): ``create_api(services)`` wires the middleware, the error handlers that give every
failure OpenAI's envelope (FastAPI's 422 becomes 400), the routes, and the static chat
page.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from pydantic.json_schema import models_json_schema
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from ouro.errors import OuroError
from ouro.ledger import Watermark
from ouro.registry import ALIAS_PRODUCTION, PersonalRegistries, RegistrySnapshot
from ouro.settings import OuroSettings
from serve.auth import ApiKeyAuth
from serve.errors import error_response
from serve.exceptions import (
    InvalidRequestError,
    NotFoundError,
    NotReadyError,
    PayloadTooLargeError,
    ServeError,
)
from serve.logs import configure_logging
from serve.metrics import ServeMetrics
from serve.middleware import BodyLimitMiddleware, RequestContextMiddleware
from serve.model_names import ModelNames
from serve.personal_names import PersonalNames
from serve.registry_watcher import RegistryFactory, RegistryWatcher, build_registry
from serve.replica_report import ScrapedReports, report_max_age_s
from serve.routes import STATIC_DIR, STREAMED_MODELS, router
from serve.serving_chat import ChatCompletions
from serve.serving_feedback import Feedback, ledger_writer_id
from serve.serving_health import Health

logger = logging.getLogger(__name__)

INGRESS_NAME = "OuroIngress"


@dataclass
class IngressServices:
    """What the routes use; one per ingress replica (``app.state.ouro``)."""

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


# No CPU reserved: the ingress waits on I/O; the CPUs go to the LLM server replicas.
@serve.deployment(name=INGRESS_NAME, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class OuroIngress:
    """Front door: resolves names for 404s and /v1/models, forwards generation to LLMServer."""

    async def __init__(
        self,
        settings_overrides: dict,
        llm_server,
        coordinator,
        registry_factory: RegistryFactory = build_registry,
    ) -> None:
        self.settings = OuroSettings(**settings_overrides)
        configure_logging(self.settings.log_level)
        auth = ApiKeyAuth.from_settings(self.settings)
        replica_id = serve.get_replica_context().replica_id.unique_id
        self.names = ModelNames(personal_adapters=self.settings.personal_adapters)
        personal_registries = PersonalRegistries.from_settings(self.settings)
        self.personal = (
            PersonalNames(personal_registries, self.settings.registry_poll_interval_s)
            if self.settings.personal_adapters
            else None
        )
        self.watcher = RegistryWatcher(
            registry_factory(self.settings),
            self.settings.registry_poll_interval_s,
            on_snapshot=self._on_snapshot,
            on_polled=self._on_polled,
            coordinator=coordinator,
        )
        health = Health(
            self.watcher, llm_server, coordinator, self.settings.registry_poll_interval_s
        )
        # Each scrape asks the LLM replicas for fresh reports (their last ones if they are
        # slow or the coordinator is away) and exports those.
        scraped = ScrapedReports(
            coordinator,
            health.update_replica_reports,
            report_max_age_s(self.settings.registry_poll_interval_s),
        )
        self.metrics = ServeMetrics(
            replica_reports=lambda: scraped.latest, refresh_replica_reports=scraped.refresh
        )
        self.services = IngressServices(
            settings=self.settings,
            auth=auth,
            names=self.names,
            base_model_name=self.settings.base_model,
            metrics=self.metrics,
            chat=ChatCompletions(
                self.settings,
                llm_server,
                self.names,
                self.watcher.refresh,
                self.metrics,
                self.personal,
            ),
            feedback=Feedback(
                self.settings,
                ledger_writer_id(replica_id),
                self.metrics,
                self._last_training_watermark,
            ),
            health=health,
            personal_registries=personal_registries,
            personal=self.personal,
        )
        await self.watcher.start()
        logger.info("ingress replica %s ready", replica_id)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self.services)

    async def check_health(self) -> None:
        """Serve's health check: a replica that stopped following the registry is replaced."""
        if not self.watcher.running:
            raise NotReadyError("the registry watcher has stopped")

    async def _on_snapshot(self, snapshot: RegistrySnapshot) -> None:
        self.names.update(snapshot, snapshot.aliases.get(ALIAS_PRODUCTION))
        self.metrics.set_versions(self.names.versions_by_name())

    async def _on_polled(self) -> None:
        self.metrics.registry_up.set(1 if self.watcher.state.reachable else 0)
        if self.personal is not None and self.watcher.state.reachable:
            await self.personal.refresh()

    def _last_training_watermark(self) -> Watermark | None:
        """The ledger watermark of the newest registered version, if it recorded one."""
        snapshot = self.watcher.state.snapshot
        latest = snapshot.latest() if snapshot is not None else None
        return latest.watermark if latest is not None else None
