"""Operator actions on personal data, shared by ``python -m train_job`` and Serve's admin API.

- ``forget_scope``: a tombstone in the ledger (every reader leaves the scope's records
  out from then on; no line is rewritten), then the deletion of the scope's registered
  models (and those of its user scopes), their versions and their runs' artifacts.
  Serving drops a deleted adapter at its next registry read.
- ``share_correction``: a share mark in the ledger, so the next cycle trains the shared
  adapter on that correction.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import dataclass

from ouro.errors import OuroError
from ouro.ledger import ControlRecord, FeedbackLedger, LedgerReader
from ouro.registry import PersonalRegistries
from ouro.scopes import covers, validate_scope

logger = logging.getLogger(__name__)


class UnknownCorrectionError(OuroError, LookupError):
    """No correction with that id is in the ledger (or it was forgotten)."""


@dataclass(frozen=True)
class ForgetResult:
    """What ``forget_scope`` did."""

    tombstone: ControlRecord
    forgotten_records: int
    """Ledger records the tombstone now hides."""
    deleted_models: tuple[str, ...]
    """Registered models deleted (the scope's, and its user scopes')."""
    deleted_runs: int


def command_writer_id(prefix: str = "cli") -> str:
    """A ledger writer id for a one-off command: unique per host and process."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:60] or "host"
    return f"{prefix}-{host}-{os.getpid()}"[:128]


def forget_scope(
    ledger: FeedbackLedger,
    registries: PersonalRegistries,
    scope: str,
    *,
    reason: str | None = None,
    api_key_hash: str | None = None,
) -> ForgetResult:
    """Forget ``scope`` and its user scopes: tombstone first, then the registry.

    The tombstone goes first so that, should the registry be down, the scope's
    corrections are already out of every training set; running it again finishes the
    deletion (both steps are idempotent).
    """
    validate_scope(scope)
    before = LedgerReader(ledger.directory).scan().forgotten
    tombstone = ledger.append_control(
        "forget", scope=scope, reason=reason, api_key_hash=api_key_hash
    )
    hidden = LedgerReader(ledger.directory).scan().forgotten - before
    deleted_models: list[str] = []
    deleted_runs = 0
    for other in sorted(registries.production_by_scope()):
        if covers(scope, other):
            registry = registries.for_scope(other)
            deleted_runs += len(registry.delete())
            deleted_models.append(registry.model_name)
    logger.info(
        "forgot scope %s: %d ledger record(s) hidden, %d registered model(s) deleted",
        scope,
        hidden,
        len(deleted_models),
    )
    return ForgetResult(tombstone, hidden, tuple(deleted_models), deleted_runs)


def share_correction(
    ledger: FeedbackLedger,
    record_id: str,
    *,
    reason: str | None = None,
    api_key_hash: str | None = None,
) -> ControlRecord:
    """Mark a correction for the shared adapter; UnknownCorrectionError if it is not there
    (a rating is no correction: it never trains)."""
    corrections = LedgerReader(ledger.directory).scan().corrections
    if not any(record.id == record_id for record in corrections):
        raise UnknownCorrectionError(f"no correction {record_id!r} in the ledger")
    return ledger.append_control(
        "share", record_id=record_id, reason=reason, api_key_hash=api_key_hash
    )
