"""``build_app``: the Serve application, as a Serve config file or KubeRay's serveConfigV2 names it.

    applications:
      - name: ouro
        route_prefix: /
        import_path: serve.app:build_app
        args: {registry_poll_interval_s: 10}     # OuroSettings overrides

Deployments: ``LLMServer`` (the ingress: the HTTP front and the engine in one replica;
replicas, CPUs and GPUs set in the config's ``deployments:`` section or by
``llm_num_cpus``) and ``RegistryCoordinator`` (one replica, no CPU: carries admin
refreshes and scrapes to every replica). Every replica builds its ``OuroSettings`` from
its own environment plus ``args``, so API keys stay in the environment (a Kubernetes
Secret) and out of the deployment's arguments.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from ouro.registry import sqlite_path
from ouro.settings import OuroSettings
from serve.auth import ApiKeyAuth
from serve.coordinator import RegistryCoordinator
from serve.llm_server import EngineFactory, LLMServer, build_engine
from serve.registry_watcher import RegistryFactory, build_registry

NON_ENGINE_REQUESTS = 256
"""Requests a replica takes besides the engine's running and queued ones."""


class UnknownSettingError(ValueError):
    """``args`` names something OuroSettings does not have."""


def settings_from_args(args: dict[str, Any]) -> OuroSettings:
    """Validate ``args`` as OuroSettings overrides (unknown names are an error, not ignored)."""
    unknown = sorted(set(args) - set(OuroSettings.model_fields))
    if unknown:
        raise UnknownSettingError(f"unknown settings in the app's args: {', '.join(unknown)}")
    return OuroSettings(**args)


def build_app(args: dict[str, Any]) -> serve.Application:
    """The Ouro application; ``args`` are OuroSettings overrides (Serve's builder: one arg)."""
    return create_app(args)


def create_app(
    args: dict[str, Any],
    *,
    engine_factory: EngineFactory = build_engine,
    registry_factory: RegistryFactory = build_registry,
    num_replicas: int | None = None,
) -> serve.Application:
    """``build_app`` with the engine and registry factories injectable (Ray Serve LLM style),
    and the LLM server's replica count (else the config's ``deployments:`` section's, or 1).

    Checked here, where the app is deployed, so a bad config fails the deployment with a
    clear message: unknown settings, and an open server that was not allowed.
    """
    args = dict(args or {})
    settings = settings_from_args(args)
    ApiKeyAuth.from_settings(settings)
    if sqlite_path(settings.tracking_uri) is not None:
        # A local store: create its tables once, here, before the replicas race to.
        registry_factory(settings).snapshot()
    # The engine bounds its own queue and answers past it with 429 in OpenAI's envelope;
    # Serve's own bound (a bare 503 from the proxy) is set above it, with room for the
    # routes that never reach the engine (health, metrics, feedback).
    replicas = {} if num_replicas is None else {"num_replicas": num_replicas}
    llm = LLMServer.options(
        **replicas,
        ray_actor_options={"num_cpus": settings.llm_num_cpus},
        max_ongoing_requests=settings.max_running_requests
        + settings.max_queued_requests
        + NON_ENGINE_REQUESTS,
    )
    coordinator = RegistryCoordinator.bind(settings, registry_factory)
    return llm.bind(args, engine_factory, registry_factory, coordinator)
