"""Which corrections train which adapter: consensus, admin keys, share marks, own answers win."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from ouro.ledger import FeedbackLedger, LedgerReader
from train_job.collect import usable_corrections
from train_job.sharing import SharingPolicy

QUESTION = "What is the capital of Australia?"
ANSWERS = {  # the same fact in each scope's own words
    "alice": "The capital of Australia is Canberra.",
    "bob": "the capital of australia is Canberra!",
    "carol": "The capital of Australia is Canberra, not Sydney.",
    "dave": "Canberra is the capital city of Australia.",
}


@pytest.fixture
def ledger(tmp_path: Path) -> FeedbackLedger:
    return FeedbackLedger(tmp_path, "writer", max_record_bytes=64_000, max_field_chars=4_000)


def correct(ledger: FeedbackLedger, scope: str | None, answer: str, question=QUESTION, **kw):
    return ledger.append(
        messages=[{"role": "user", "content": question}],
        completion="I do not know.",
        correction=answer,
        scope=scope,
        **kw,
    )


def shared_ids(ledger: FeedbackLedger, policy: SharingPolicy) -> set[str]:
    scan = LedgerReader(ledger.directory).scan()
    corrections, _ = usable_corrections(scan.records)
    return {c.id for c in policy.shared(corrections, scan)}


def test_k_scopes_agreeing_reach_the_shared_adapter(ledger: FeedbackLedger) -> None:
    policy = SharingPolicy(consensus_scopes=3, similarity=0.6)
    records = {scope: correct(ledger, scope, ANSWERS[scope]) for scope in ("alice", "bob")}
    assert shared_ids(ledger, policy) == set()  # K-1 scopes: personal only
    records["carol"] = correct(ledger, "carol", ANSWERS["carol"])
    assert shared_ids(ledger, policy) >= {records["alice"].id}  # K scopes: shared
    # Identical texts from different scopes are one training row in the shared set.
    assert len(shared_ids(ledger, policy)) <= 3


def test_one_scope_repeating_itself_is_not_consensus(ledger: FeedbackLedger) -> None:
    policy = SharingPolicy(consensus_scopes=3, similarity=0.6)
    for n in range(5):
        correct(ledger, "alice", ANSWERS["alice"] + " " * n + ("." * n))
    correct(ledger, "alice/u1", ANSWERS["alice"])  # a user of the same key is another scope
    assert shared_ids(ledger, policy) == set()


def test_disagreeing_scopes_are_not_consensus(ledger: FeedbackLedger) -> None:
    policy = SharingPolicy(consensus_scopes=3, similarity=0.8)
    correct(ledger, "alice", "The capital of Australia is Canberra.")
    correct(ledger, "bob", "The capital of Australia is Sydney, the biggest city.")
    correct(ledger, "carol", "Melbourne was the capital until 1927.")
    assert shared_ids(ledger, policy) == set()


def test_agreement_needs_the_same_question(ledger: FeedbackLedger) -> None:
    policy = SharingPolicy(consensus_scopes=3, similarity=0.6)
    correct(ledger, "alice", ANSWERS["alice"])
    correct(ledger, "bob", ANSWERS["alice"], question="what is the CAPITAL of Australia")
    correct(ledger, "carol", ANSWERS["alice"], question="Where is Canberra?")
    assert shared_ids(ledger, policy) == set()  # "Where is Canberra?" is another question
    correct(ledger, "dave", ANSWERS["alice"], question="What's the capital of Australia?!")
    # case and punctuation are ignored, but "What's" is not "What is": still two scopes.
    assert shared_ids(ledger, policy) == set()
    correct(ledger, "erin", ANSWERS["alice"], question="WHAT IS THE CAPITAL OF AUSTRALIA")
    # Three scopes now agree: each of their corrections is shared (conversations differ).
    assert len(shared_ids(ledger, policy)) == 3


def test_admin_marked_and_unscoped_corrections_are_shared(ledger: FeedbackLedger) -> None:
    policy = SharingPolicy()
    admin = correct(ledger, "ops", "An admin's answer.", question="Q1?", admin=True)
    marked = correct(ledger, "alice", "Alice's answer.", question="Q2?")
    personal = correct(ledger, "bob", "Bob's answer.", question="Q3?")
    legacy = correct(ledger, None, "From before personal adapters.", question="Q4?")
    ledger.append_control("share", record_id=marked.id)
    assert shared_ids(ledger, policy) == {admin.id, marked.id, legacy.id}
    assert personal.id not in shared_ids(ledger, policy)


def test_a_scopes_own_correction_wins_over_the_shared_one(ledger: FeedbackLedger) -> None:
    policy = SharingPolicy()
    shared = correct(ledger, "ops", "Shared: Canberra.", admin=True)
    other = correct(ledger, "ops", "Shared answer to another question.", question="Q?", admin=True)
    own = correct(ledger, "alice", "Alice's own: Canberra, which she prefers to spell out.")
    scan = LedgerReader(ledger.directory).scan()
    corrections, _ = usable_corrections(scan.records)
    shared_set = policy.shared(corrections, scan)
    alice = {c.id for c in policy.personal("alice", shared_set)(corrections, scan)}
    assert alice == {own.id, other.id}  # the shared answer to her question is left out
    bob = {c.id for c in policy.personal("bob", shared_set)(corrections, scan)}
    assert bob == {shared.id, other.id}  # alice's correction never reaches bob


def test_forgotten_corrections_reach_no_set(ledger: FeedbackLedger) -> None:
    policy = SharingPolicy(consensus_scopes=3, similarity=0.6)
    for scope in ("alice", "bob", "carol"):
        correct(ledger, scope, ANSWERS[scope])
    assert shared_ids(ledger, policy)
    ledger._clock = lambda: dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    ledger.append_control("forget", scope="carol")
    assert shared_ids(ledger, policy) == set()  # consensus falls back to two scopes
