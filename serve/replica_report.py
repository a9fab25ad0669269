"""What an LLM server replica tells the coordinator about itself (for /readyz and /metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ouro.engine import EngineStats


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
