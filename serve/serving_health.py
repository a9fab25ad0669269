"""Readiness and the admin registry refresh, from one replica's HTTP front.

Readiness needs an LLM server replica that has its model loaded and knows which
version ``ouro`` is (every replica's reports reach the coordinator; without the
coordinator the replica that was asked reports itself). An unreachable registry does not
make the app unready:
serving goes on with the last known mapping, and ``/readyz`` says how stale it is.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi.responses import JSONResponse, Response
from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException

from ouro.names import ALIAS_PRODUCTION
from serve.errors import error_response
from serve.llm_calls import LLMBackend
from serve.model_names import served_model
from serve.protocol import Readiness, RegistryRefresh, RegistryState, ReplicaStatus
from serve.registry_watcher import RegistryWatcher
from serve.replica_report import ReplicaReport

logger = logging.getLogger(__name__)

_CALL_TIMEOUT_S = 5.0
_WAIT_POLL_S = 0.2


class Health:
    """The logic behind ``/readyz`` and ``POST /admin/registry/refresh``."""

    def __init__(
        self, watcher: RegistryWatcher, llm_server: LLMBackend, coordinator, poll_interval_s: float
    ):
        self._watcher = watcher
        self._llm = llm_server
        self._coordinator = coordinator
        # A replica reports at least once per poll: three missed polls and it is gone.
        self._max_report_age_s = 3 * poll_interval_s + 10.0
        self.replica_reports: list[ReplicaReport] = []

    async def update_replica_reports(self) -> list[ReplicaReport]:
        """The LLM replicas' latest reports (also kept for the metrics)."""
        reports: list[ReplicaReport] = []
        try:
            reports = await asyncio.wait_for(
                self._coordinator.reports.remote(self._max_report_age_s), _CALL_TIMEOUT_S
            )
        except (RayError, RayServeException, TimeoutError) as exc:
            logger.warning("coordinator unavailable (%s); reporting this replica only", exc)
        if not reports:
            reports = [await self._llm.report()]
        self.replica_reports = reports
        return reports

    async def readiness(self) -> Response:
        reports = await self.update_replica_reports()
        state = self._watcher.state
        snapshot = state.snapshot
        ready_replicas = [r for r in reports if r.production_known]
        reason = None
        if not reports:
            reason = "the model is still loading"
        elif not ready_replicas:
            reason = "the production version is not known or not loaded yet"
        body = Readiness(
            status="ready" if ready_replicas else "not_ready",
            model_loaded=bool(reports),
            registry=RegistryState(
                reachable=state.reachable,
                stale=not state.reachable,
                last_success_age_s=state.age_s(),
                error=state.last_error,
                production_version=snapshot.aliases.get(ALIAS_PRODUCTION) if snapshot else None,
            ),
            serving={
                "ouro": sorted({served_model(r.production_version).label for r in ready_replicas}),
            },
            replicas=[ReplicaStatus.of(report) for report in reports],
            reason=reason,
        )
        return JSONResponse(
            body.model_dump(mode="json"), status_code=200 if ready_replicas else 503
        )

    async def refresh(self, wait_s: float) -> Response:
        """Make every watcher re-read the registry now; optionally wait for the LLM replicas."""
        try:
            generation = await asyncio.wait_for(
                self._coordinator.request_refresh.remote(), _CALL_TIMEOUT_S
            )
        except (RayError, RayServeException, TimeoutError) as exc:
            return error_response(exc)
        state = await self._watcher.refresh()
        reports = await self.update_replica_reports()
        deadline = time.monotonic() + wait_s
        while not _all_acted(reports, generation) and time.monotonic() < deadline:
            await asyncio.sleep(_WAIT_POLL_S)
            reports = await self.update_replica_reports()
        snapshot = state.snapshot
        body = RegistryRefresh(
            generation=generation,
            registry_reachable=state.reachable,
            error=state.last_error,
            aliases=dict(snapshot.aliases) if snapshot else {},
            versions=sorted(snapshot.versions) if snapshot else [],
            replicas_synced=_all_acted(reports, generation),
            replicas=[ReplicaStatus.of(report) for report in reports],
        )
        return JSONResponse(body.model_dump(mode="json"))


def _all_acted(reports: list[ReplicaReport], generation: int) -> bool:
    return bool(reports) and all(r.refresh_generation >= generation for r in reports)
