"""The feedback logic in-process on a real ledger: a rating is durable feedback, but never a
correction pending (what ``ouro_corrections_pending`` and the training trigger read)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ouro.ledger import LedgerReader, Watermark
from ouro.settings import OuroSettings
from serve.auth import Caller
from serve.metrics import ServeMetrics
from serve.protocol import FeedbackRequest
from serve.serving_feedback import Feedback

QUESTION = [{"role": "user", "content": "Who wrote Hamlet?"}]


@pytest.fixture
def trained() -> dict[str, Watermark | None]:
    """The newest registered version's watermark, as a test moves it (None: no version)."""
    return {"watermark": None}


@pytest.fixture
def metrics() -> ServeMetrics:
    return ServeMetrics("r0")


@pytest.fixture
def feedback(
    tmp_path: Path, metrics: ServeMetrics, trained: dict[str, Watermark | None]
) -> Iterator[Feedback]:
    settings = OuroSettings(data_dir=tmp_path, allow_unauthenticated=True)
    service = Feedback(settings, "r0", metrics, lambda: trained["watermark"])
    yield service
    service.close()


def post(feedback: Feedback, **fields) -> tuple[int, dict]:
    body = FeedbackRequest.model_validate(
        {"messages": QUESTION, "completion": "Marlowe.", "model": "ouro@v1", **fields}
    )
    caller = Caller(key_hash="sha256:k", admin=False, key_name="alice")
    response = asyncio.run(feedback.create(body, caller))
    return response.status_code, json.loads(response.body)


def test_ratings_are_written_but_are_never_corrections_pending(
    feedback: Feedback, trained: dict[str, Watermark | None], tmp_path: Path
) -> None:
    assert post(feedback, correction="Shakespeare.")[0] == 201
    status, created = post(feedback, rating="down", user="u1")
    assert status == 201
    assert post(feedback, rating="up")[0] == 201

    scan = LedgerReader(tmp_path / "feedback").scan()
    rating = next(r for r in scan.records if r.id == created["id"])
    assert (rating.kind, rating.rating, rating.correction) == ("rating", "down", None)
    assert rating.scope == "alice/u1" and rating.api_key_hash == "sha256:k"
    assert asyncio.run(feedback.corrections_pending()) == 1

    trained["watermark"] = scan.watermark  # a version trained on everything so far
    assert post(feedback, rating="down")[0] == 201
    assert asyncio.run(feedback.corrections_pending()) == 0
    assert post(feedback, correction="William Shakespeare.")[0] == 201
    assert asyncio.run(feedback.corrections_pending()) == 1

    stats = json.loads(asyncio.run(feedback.stats()).body)
    assert (stats["total"], stats["by_model"], stats["since_last_training"]) == (
        2,
        {"ouro@v1": 2},
        1,
    )
    assert stats["ratings"] == {"up": 1, "down": 2}
    assert stats["ratings_by_model"] == {"ouro@v1": {"up": 1, "down": 2}}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({}, "correction"),
        ({"correction": "Shakespeare.", "rating": "up"}, "rating"),
        (
            {"rating": "up", "messages": [*QUESTION, {"role": "assistant", "content": "x"}]},
            "messages",
        ),
        ({"rating": "up", "user": "../x"}, "user"),
    ],
)
def test_bad_feedback_is_a_400_and_no_ledger_failure(
    feedback: Feedback, metrics: ServeMetrics, tmp_path: Path, fields: dict, param: str
) -> None:
    """Neither or both of correction and rating, a rating of no user turn, a bad user."""
    status, body = post(feedback, **fields)
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param
    assert LedgerReader(tmp_path / "feedback").scan().records == []
    assert 'ouro_ledger_write_failures_total{replica="r0"} 0.0' in metrics.render().decode()
