"""What an LLM server replica tells the coordinator about itself (for /readyz and /metrics).

Replicas post a report after every registry poll and adapter change. A Prometheus scrape
cannot wait for the next of those (a poll may be minutes away), so it asks for fresh ones:
the front's ``ScrapedReports.refresh`` calls the coordinator's ``fresh_scrapes``, which
wakes every LLM replica's ``ScrapeAnswerer`` (each long-polls ``wait_for_scrape``) and
waits up to ``SCRAPE_WAIT_S`` for their answers. Each answer is a ``ReplicaScrape``: the
report and the replica's own metric samples (its HTTP front's counters), so whichever
replica a scrape reaches exports every replica's series. A replica that does not answer
in time is exported with its last report and samples, marked ``stale``; without the
coordinator, the scrape falls back to whatever reports it can get, marked stale when
older than the scrape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from prometheus_client.metrics_core import Metric
from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException

from ouro.engine import EngineStats

logger = logging.getLogger(__name__)

SCRAPE_WAIT_S = 1.0
"""How long a scrape waits for the LLM replicas' fresh reports before using the last ones."""
SCRAPE_LONG_POLL_S = 30.0
"""How long one of a replica's waits for the next scrape lasts (it then waits again)."""
_RETRY_S = 1.0


def report_max_age_s(poll_interval_s: float) -> float:
    """Age after which a replica's report counts as a dead replica's: a replica reports at
    least once per registry poll, so three missed polls (as ``/readyz`` counts them)."""
    return 3 * poll_interval_s + 10.0


@dataclass(frozen=True)
class ReplicaReport:
    """One LLM server replica's state, as of ``reported_at``."""

    replica_id: str = field(metadata={"help": "Serve's replica id."})
    reported_at: float = field(metadata={"help": "time.time() when the report was made."})
    production_version: int | None = field(
        metadata={"help": "Version 'ouro' answers with on this replica; None: the base model."}
    )
    production_known: bool = field(
        metadata={"help": "Whether the replica has read the registry and loaded production."}
    )
    refresh_generation: int = field(
        metadata={"help": "Newest admin refresh request this replica has acted on."}
    )
    adapters_loaded: tuple[str, ...] = field(metadata={"help": "Adapters in the engine."})
    adapter_loads: int = field(metadata={"help": "Adapter loads since start."})
    adapter_evictions: int = field(metadata={"help": "Adapter removals since start."})
    adapter_load_failures: int = field(metadata={"help": "Failed adapter loads since start."})
    registry_reachable: bool = field(metadata={"help": "Whether the last registry poll worked."})
    registry_error: str | None = field(metadata={"help": "The last poll's error, if it failed."})
    warm_error: str | None = field(
        default=None,
        metadata={"help": "Why the newest production version could not be loaded, if so."},
    )
    engine: EngineStats | None = field(
        default=None, metadata={"help": "The engine's scheduler state and counters."}
    )
    stale: bool = field(
        default=False,
        metadata={
            "help": "True when the replica did not answer the scrape in time: its last report."
        },
    )


@dataclass(frozen=True)
class ReplicaScrape:
    """One replica's answer to a scrape: its report and its own metric samples."""

    report: ReplicaReport
    metrics: tuple[Metric, ...] = ()
    """The replica's own metric families (``ServeMetrics.own_families``); empty when
    only its report is known (a periodic report, read without the coordinator's scrape)."""


class ScrapeAnswerer:
    """LLM replica side: answers every scrape with a fresh report, in the background."""

    def __init__(self, coordinator, make_scrape: Callable[[], ReplicaScrape]) -> None:
        self._coordinator = coordinator
        self._make_scrape = make_scrape
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scrape-answerer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        seen = -1  # answer the first wait at once: the coordinator may have restarted
        while True:
            try:
                generation = await self._coordinator.wait_for_scrape.remote(
                    seen, SCRAPE_LONG_POLL_S
                )
                if generation != seen:
                    await self._coordinator.answer_scrape.remote(self._make_scrape(), generation)
                    seen = generation
            except (RayError, RayServeException) as exc:
                logger.debug("coordinator unavailable for scrapes (%s); retrying", exc)
                await asyncio.sleep(_RETRY_S)


class ScrapedReports:
    """Ingress side: the LLM replicas' reports and samples as fresh as a scrape can have them."""

    def __init__(
        self,
        coordinator,
        fallback: Callable[[], Awaitable[list[ReplicaReport]]],
        max_age_s: float,
        wait_s: float = SCRAPE_WAIT_S,
    ) -> None:
        """``fallback`` gives the latest reports some other way (the coordinator's stored
        ones, or one replica asked directly) when the coordinator cannot answer."""
        self._coordinator = coordinator
        self._fallback = fallback
        self._max_age_s = max_age_s
        self._wait_s = wait_s
        self.latest: list[ReplicaScrape] = []
        """The answers of the last ``refresh``, which the metrics export."""

    async def refresh(self) -> list[ReplicaScrape]:
        started = time.time()
        try:
            scrapes = await asyncio.wait_for(
                self._coordinator.fresh_scrapes.remote(self._max_age_s, self._wait_s),
                self._wait_s + 1.0,
            )
        except (RayError, RayServeException, TimeoutError) as exc:
            logger.warning("no fresh replica reports for this scrape (%s); using the last", exc)
            scrapes = [
                ReplicaScrape(replace(report, stale=report.stale or report.reported_at < started))
                for report in await self._fallback()
            ]
        self.latest = scrapes
        return scrapes
