"""Operator commands: status, promote, rollback, and telling Serve to look now.

All of them are plain MLflow registry operations (aliases and version tags), so the same
can be done in the MLflow UI; Serve picks the change up on its next poll, or at once when
told (``ouro.notify.notify_serve``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ouro.errors import OuroError
from ouro.ledger import LedgerReader
from ouro.names import ALIAS_PRODUCTION, version_label
from ouro.registry import AdapterRegistry, AdapterVersion, RegistrySnapshot
from ouro.settings import OuroSettings
from train_job.collect import usable_corrections

logger = logging.getLogger(__name__)


class PromotionRefusedError(OuroError):
    """The version failed its gates (or has none recorded); --force overrides."""


@dataclass
class PendingCorrections:
    total: int
    """Usable corrections in the ledger."""
    pending: int
    """Corrections after the newest trained version's watermark."""
    since_version: int | None


def pending_corrections(
    settings: OuroSettings, snapshot: RegistrySnapshot, scope: str | None = None
) -> PendingCorrections:
    """Usable corrections, and those after the newest trained version (``scope``: its own)."""
    reader = LedgerReader(settings.ledger_dir)

    def usable(records) -> list:
        corrections, _ = usable_corrections(records)
        return [c for c in corrections if scope is None or c.scope == scope]

    corrections = usable(reader.scan().corrections)
    previous = snapshot.last_trained()
    if previous is None or previous.watermark is None:
        return PendingCorrections(len(corrections), len(corrections), None)
    after = usable(reader.scan(after=previous.watermark).corrections)
    return PendingCorrections(len(corrections), len(after), previous.version)


def status(registry: AdapterRegistry, settings: OuroSettings) -> dict:
    """Versions, aliases, gate results and pending corrections, as a JSON-ready dict."""
    snapshot = registry.snapshot()
    pending = pending_corrections(settings, snapshot, registry.scope)
    return {
        "registered_model": registry.model_name,
        "scope": registry.scope,
        "tracking_uri": registry.tracking_uri,
        "aliases": {alias: version for alias, version in sorted(snapshot.aliases.items())},
        "versions": [
            _version_dict(snapshot.versions[n]) for n in sorted(snapshot.versions, reverse=True)
        ],
        "corrections": {
            "in_ledger": pending.total,
            "pending": pending.pending,
            "since_version": pending.since_version,
        },
    }


def _version_dict(version: AdapterVersion) -> dict:
    return {
        "version": version.version,
        "label": version.label,
        "aliases": list(version.aliases),
        "created_at": version.created_at.isoformat() if version.created_at else None,
        "run_id": version.run_id,
        "base_model": version.base_model,
        "corrections": version.corrections,
        "dataset_hash": version.dataset_hash,
        "gates_passed": version.gates_passed,
        "gate_results": version.gate_results,
        "watermark": version.tags.get("ledger_watermark"),
    }


def format_status(info: dict) -> str:
    """The status as a table for people."""
    lines = [f"registered model {info['registered_model']} at {info['tracking_uri']}"]
    if info.get("scope"):
        lines[0] += f" (scope {info['scope']})"
    aliases = ", ".join(f"{a} -> v{v}" for a, v in info["aliases"].items()) or "none"
    lines.append(f"aliases: {aliases}")
    if info["versions"]:
        lines.append(
            f"{'version':<8} {'created (UTC)':<20} {'aliases':<22} {'gates':<7} "
            f"{'fix_rate':>8} {'corrections':>11}  dataset"
        )
        for v in info["versions"]:
            gates = {True: "passed", False: "FAILED", None: "-"}[v["gates_passed"]]
            created = (v["created_at"] or "-")[:19].replace("T", " ")
            lines.append(
                f"{'v' + str(v['version']):<8} {created:<20} {','.join(v['aliases']) or '-':<22} "
                f"{gates:<7} {_fix_rate(v):>8} {str(v['corrections'] or '-'):>11}  "
                f"{(v['dataset_hash'] or '-')[:12]}"
            )
    else:
        lines.append("no versions registered yet")
    for v in info["versions"][:1]:  # the newest: what its users taught the router
        learned = [_check(v, f"router_learned_false_{kind}") for kind in ("accepts", "rejects")]
        applied = _check(v, "router_lessons_applied")
        if None not in learned and applied is not None:
            accepts, rejects = (int(check["value"]) for check in learned)
            share = "-" if applied["value"] is None else f"{applied['value']:.0%}"
            lines.append(
                f"router lessons of v{v['version']}: {accepts} false accepts and {rejects} "
                f"false rejects learned from corrections, {share} applied"
            )
    corrections = info["corrections"]
    since = f"v{corrections['since_version']}" if corrections["since_version"] else "the start"
    lines.append(
        f"corrections: {corrections['pending']} pending since {since} "
        f"({corrections['in_ledger']} in the ledger)"
    )
    return "\n".join(lines)


def _fix_rate(version: dict) -> str:
    check = _check(version, "fix_rate")
    return "-" if check is None or check.get("value") is None else f"{check['value']:.3f}"


def _check(version: dict, name: str) -> dict | None:
    """A version's gate check by name (None: not measured)."""
    for check in version["gate_results"] or []:
        if isinstance(check, dict) and check.get("name") == name:
            return check
    return None


def promote(
    registry: AdapterRegistry, version: int, alias: str = ALIAS_PRODUCTION, *, force: bool = False
) -> None:
    """Point ``alias`` at ``version``; refuses a version whose gates did not pass unless forced."""
    target = registry.get_version(version)  # UnknownModelError when it does not exist
    if target.gates_passed is not True and not force:
        why = "failed its gates" if target.gates_passed is False else "has no gate results"
        raise PromotionRefusedError(
            f"{version_label(version)} {why}; use --force to promote it anyway"
        )
    if target.gates_passed is not True:
        logger.warning("promoting %s despite its gates (--force)", version_label(version))
    registry.set_alias(alias, version)


def rollback(registry: AdapterRegistry, alias: str = ALIAS_PRODUCTION) -> int | None:
    """Move ``alias`` back to its previous version (None: it is now unset, base model served)."""
    return registry.rollback(alias)
