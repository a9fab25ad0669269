"""Feedback: corrections and ratings written durably to the ledger, and the admin's counts.

A body carries exactly one of a correction (what the answer should have been: training
data) or a rating (thumbs up or down: a signal for rollout, never a training row). The
ledger validates what it stores (the conversation ends with the user turn that was
answered; a correction is non-empty and differs from the completion; a rating is 'up' or
'down'; sizes within the configured limits) and returns only once the record is fsync'd,
so a 201 means the record is on disk. Each record carries its author's scope (``Caller.scope``) and
whether an admin key sent it; the admin routes forget a scope and mark a correction
shared (``ouro.personal``). Writes run in a worker thread; the event loop never waits on
the disk.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Callable

from fastapi.responses import JSONResponse, Response

from ouro.ledger import FeedbackKind, FeedbackLedger, InvalidFeedbackError, Watermark
from ouro.personal import forget_scope, share_correction
from ouro.registry import PersonalRegistries
from ouro.settings import OuroSettings
from serve.auth import Caller
from serve.errors import error_response
from serve.exceptions import InvalidRequestError
from serve.metrics import ServeMetrics
from serve.protocol import FeedbackCreated, FeedbackRequest

logger = logging.getLogger(__name__)


def ledger_writer_id(replica_id: str) -> str:
    """A writer id unique per replica (the ledger names a directory after it)."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:60] or "host"
    return f"{host}-{re.sub(r'[^A-Za-z0-9._-]', '-', replica_id)}"[:128]


def feedback_kind(body: FeedbackRequest) -> FeedbackKind:
    """``correction`` or ``rating``: InvalidRequestError unless exactly one of them is given."""
    if body.correction is not None and body.rating is not None:
        raise InvalidRequestError(
            "send either a correction or a rating, not both: a rating carries no correction",
            "rating",
        )
    if body.rating is not None:
        return "rating"
    if body.correction is None:
        raise InvalidRequestError(
            "a feedback body needs a correction (what the answer should have been) "
            "or a rating ('up' or 'down')",
            "correction",
        )
    return "correction"


class Feedback:
    """The logic behind ``POST /v1/feedback`` and ``GET /v1/feedback/stats``."""

    def __init__(
        self,
        settings: OuroSettings,
        writer_id: str,
        metrics: ServeMetrics,
        last_training_watermark: Callable[[], Watermark | None],
    ) -> None:
        # Raises LedgerUnavailableError now, at start-up, for a directory it cannot write.
        self._ledger = FeedbackLedger.from_settings(settings, writer_id)
        self._metrics = metrics
        self._last_training_watermark = last_training_watermark
        logger.info("feedback ledger %s, writer %s", settings.ledger_dir, writer_id)

    async def create(self, body: FeedbackRequest, caller: Caller) -> Response:
        if body.model_extra:
            logger.info("ignoring unsupported feedback fields: %s", sorted(body.model_extra))
        try:
            kind = feedback_kind(body)
            scope = caller.scope(body.user)
        except InvalidRequestError as exc:  # bad input: not a ledger failure
            return error_response(exc)
        try:
            record = await asyncio.to_thread(
                self._ledger.append,
                messages=[
                    message.model_dump(include={"role", "content"}) for message in body.messages
                ],
                completion=body.completion,
                correction=body.correction,
                rating=body.rating,
                kind=kind,
                model=body.model,
                completion_id=body.completion_id,
                reason=body.reason,
                api_key_hash=caller.key_hash,
                scope=scope,
                admin=caller.admin and caller.key_hash is not None,
            )
        except Exception as exc:  # noqa: BLE001 - every failure becomes its envelope
            if not isinstance(exc, InvalidFeedbackError):
                self._metrics.ledger_write_failures.inc()
            return error_response(exc)
        self._metrics.count_feedback(record)
        created = FeedbackCreated(id=record.id, created_at=record.created_at.isoformat())
        return JSONResponse(created.model_dump(), status_code=201)

    async def corrections_pending(self) -> int | None:
        """Corrections (not ratings) after the newest version's watermark; None when the
        ledger cannot be read."""
        try:
            return await asyncio.to_thread(
                self._ledger.count_since, self._last_training_watermark()
            )
        except Exception as exc:  # noqa: BLE001 - a scrape goes on without the figure
            logger.warning("could not count the corrections pending: %s", exc)
            return None

    async def stats(self) -> Response:
        try:
            stats = await asyncio.to_thread(self._ledger.stats, self._last_training_watermark())
        except Exception as exc:  # noqa: BLE001 - every failure becomes its envelope
            return error_response(exc)
        return JSONResponse(
            {
                "object": "feedback.stats",
                "total": stats.total,
                "by_model": stats.by_model,
                "since_last_training": stats.since_last_training,
                "bad_lines": stats.bad_lines,
                "ratings": stats.ratings,
                "ratings_by_model": stats.ratings_by_model,
            }
        )

    async def forget(
        self, scope: str, reason: str | None, caller: Caller, registries: PersonalRegistries
    ) -> Response:
        """Tombstone ``scope`` in the ledger and delete its registered models."""
        try:
            result = await asyncio.to_thread(
                forget_scope,
                self._ledger,
                registries,
                scope,
                reason=reason,
                api_key_hash=caller.key_hash,
            )
        except Exception as exc:  # noqa: BLE001 - every failure becomes its envelope
            return error_response(exc)
        return JSONResponse(
            {
                "object": "scope.forgotten",
                "scope": scope,
                "tombstone": result.tombstone.id,
                "forgotten_records": result.forgotten_records,
                "deleted_models": list(result.deleted_models),
                "deleted_runs": result.deleted_runs,
            }
        )

    async def share(self, record_id: str, reason: str | None, caller: Caller) -> Response:
        """Mark a correction for the shared adapter."""
        try:
            mark = await asyncio.to_thread(
                share_correction,
                self._ledger,
                record_id,
                reason=reason,
                api_key_hash=caller.key_hash,
            )
        except Exception as exc:  # noqa: BLE001 - every failure becomes its envelope
            return error_response(exc)
        return JSONResponse(
            {"object": "feedback.shared", "id": record_id, "mark": mark.id}, status_code=201
        )

    def close(self) -> None:
        self._ledger.close()
