"""Per-row sampling: logprobs, penalties, logit_bias and n choices, checked against direct
forwards of the model (references computed here, not by the engine's code)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from ouro.engine import (
    GenerationEngine,
    GenerationOutput,
    GenerationRequest,
    InvalidRequestError,
    SamplingParams,
    sampling,
)
from tests.ouro.test_scheduler import Driver, RecordingSink, load_engine, request


@pytest.fixture(scope="module")
def engine(tiny_random_model_dir: Path) -> GenerationEngine:
    return load_engine(tiny_random_model_dir)


def token_ids(output: GenerationOutput) -> list[int]:
    """The generated tokens, as the logprobs entries name them."""
    return [position.chosen.token_id for position in output.logprobs]


def next_logits(engine: GenerationEngine, ids: list[int]) -> torch.Tensor:
    """The model's logits for the token after ``ids``: one direct forward, no engine."""
    with torch.inference_mode():
        logits = engine.model(torch.tensor([ids])).logits[0, -1]
    return logits.float().clone()  # editable outside inference mode


def reference_greedy(
    engine: GenerationEngine, req: GenerationRequest, presence: float, frequency: float
) -> list[int]:
    """Greedy decoding with OpenAI's penalty formula applied to direct forwards."""
    prompt = engine.prompt_ids(req)
    generated: list[int] = []
    while len(generated) < req.params.max_tokens:
        logits = next_logits(engine, prompt + generated)
        for token, count in Counter(generated).items():
            logits[token] -= count * frequency + presence
        generated.append(int(logits.argmax()))
        if generated[-1] in engine.end_ids:
            break
    return generated


def test_logprobs_are_the_log_softmax_of_a_direct_forward(engine):
    req = request(1, max_tokens=12, logprobs=True, top_logprobs=5)
    (output,) = engine.generate([req])
    assert len(output.logprobs) == output.completion_tokens
    prompt = engine.prompt_ids(req)
    generated = token_ids(output)
    for step, position in enumerate(output.logprobs):
        expected = torch.log_softmax(next_logits(engine, prompt + generated[:step]), dim=-1)
        assert position.chosen.logprob == pytest.approx(
            float(expected[position.chosen.token_id]), abs=1e-4
        )
        values, ids = expected.topk(5)
        assert [entry.token_id for entry in position.top] == ids.tolist()
        assert [entry.logprob for entry in position.top] == pytest.approx(values.tolist(), abs=1e-4)


def test_top_logprobs_are_sorted_and_consistent_with_the_chosen_token(engine):
    (output,) = engine.generate([request(2, max_tokens=10, logprobs=True, top_logprobs=4)])
    for position in output.logprobs:
        logprobs = [entry.logprob for entry in position.top]
        assert len(logprobs) == 4 and logprobs == sorted(logprobs, reverse=True)
        # Greedy with nothing else: the chosen token is the most likely one.
        assert position.top[0].token_id == position.chosen.token_id
        assert position.top[0].logprob == position.chosen.logprob
        assert all(logprob <= 0 for logprob in logprobs)
    # The tokens' bytes put together are the answer's text (plus the end-of-turn token's).
    shown = [p.chosen for p in output.logprobs if p.chosen.token_id not in engine.end_ids]
    raw = b"".join(entry.token_bytes for entry in shown)
    assert raw.decode("utf-8", errors="replace") == output.text  # a random model: odd bytes
    (plain,) = engine.generate([request(2, max_tokens=10, logprobs=True)])
    assert plain.text == output.text and all(not p.top for p in plain.logprobs)


@pytest.mark.parametrize(
    ("presence", "frequency"), [(2.0, 0.0), (0.0, 1.5), (0.7, 2.0), (-2.0, -1.0)]
)
def test_penalties_change_the_next_token_as_openai_s_formula_says(engine, presence, frequency):
    req = request(
        1, max_tokens=24, logprobs=True, presence_penalty=presence, frequency_penalty=frequency
    )
    (output,) = engine.generate([req])
    assert token_ids(output) == reference_greedy(engine, req, presence, frequency)
    (unpenalised,) = engine.generate([request(1, max_tokens=24)])
    assert output.text != unpenalised.text  # the penalties did change the answer


def test_logit_bias_plus_100_forces_a_token_and_minus_100_bans_it(engine):
    forced = engine.tokenizer.encode("hello", add_special_tokens=False)[0]
    for temperature in (0.0, 1.0):
        (output,) = engine.generate(
            [
                request(
                    0,
                    max_tokens=6,
                    temperature=temperature,
                    seed=1,
                    logprobs=True,
                    logit_bias={forced: 100},
                )
            ]
        )
        assert token_ids(output) == [forced] * 6
    (free,) = engine.generate([request(0, max_tokens=10, logprobs=True)])
    banned = set(token_ids(free))
    (output,) = engine.generate(
        [request(0, max_tokens=10, logprobs=True, logit_bias=dict.fromkeys(banned, -100))]
    )
    assert not banned & set(token_ids(output))
    assert len(output.logprobs) == 10


def test_a_logit_bias_outside_the_vocabulary_is_refused_before_any_work(engine):
    for token in (engine.vocab_size, -1):
        with pytest.raises(InvalidRequestError) as error:
            engine.add_request(request(0, logit_bias={token: 1.0}), RecordingSink())
        assert error.value.param == "logit_bias"
    assert engine.stats().waiting_requests == 0


def test_n_greedy_choices_are_equal(engine):
    outputs = engine.generate([request(3, max_tokens=12, n=3)])
    assert [output.index for output in outputs] == [0, 1, 2]
    assert len({output.text for output in outputs}) == 1
    assert outputs[0].text == engine.generate([request(3, max_tokens=12)])[0].text


def test_n_seeded_choices_are_reproducible_different_and_seeded_seed_plus_i(engine):
    sampled = {"max_tokens": 16, "temperature": 1.0, "seed": 5}
    first = [output.text for output in engine.generate([request(3, n=3, **sampled)])]
    again = [output.text for output in engine.generate([request(3, n=3, **sampled)])]
    assert first == again
    assert len(set(first)) == 3
    one_by_one = [
        engine.generate([request(3, **{**sampled, "seed": 5 + index})])[0].text
        for index in range(3)
    ]
    assert first == one_by_one


def test_the_seed_of_choice_i_wraps_into_the_seed_range():
    params = SamplingParams(temperature=1.0, seed=2**64 - 1, n=2)
    assert params.choice(1).seed == -(2**63)
    torch.Generator().manual_seed(params.choice(1).seed)


def test_a_batch_mixing_every_setting_leaves_the_plain_rows_unchanged(engine):
    plain = [request(index, max_tokens=14) for index in range(3)]
    expected = [engine.generate([req])[0].text for req in plain]
    special = [
        request(3, max_tokens=14, logprobs=True, top_logprobs=3),
        request(4, max_tokens=14, presence_penalty=1.0, frequency_penalty=1.0),
        request(1, max_tokens=14, logit_bias={5: 50.0, 6: -100.0}),
        request(2, max_tokens=14, n=2, temperature=1.0, seed=9),
    ]
    alone = [output.text for output in engine.generate(special)]
    outputs = engine.generate(
        [plain[0], special[0], plain[1], special[1], special[2], special[3], plain[2]]
    )
    texts = [output.text for output in outputs]  # one per choice: special[3] gives two
    assert [texts[0], texts[2], texts[7]] == expected
    assert [texts[1], texts[3], texts[4], texts[5], texts[6]] == alone


class BreaksAtItsThirdToken:
    """A structured-output constraint that allows everything, until its third token."""

    finished = False

    def __init__(self) -> None:
        self.accepted = 0

    def mask_logits(self, logits) -> None:
        if self.accepted == 2:
            raise RuntimeError("a broken logits processor")

    def accept(self, token: int) -> None:
        self.accepted += 1


def test_a_choice_that_fails_fails_its_request_alone(engine):
    neighbours = [
        request(0, max_tokens=14),
        request(1, max_tokens=14, n=2, temperature=1.0, seed=1),
    ]
    expected = [output.text for output in engine.generate(neighbours)]
    made = []

    def one_choice_breaks():  # the request's second choice gets the broken processor
        made.append(BreaksAtItsThirdToken() if len(made) == 1 else None)
        return made[-1]

    before = engine.stats()
    driver = Driver(engine)
    sinks = [driver.submit(req) for req in neighbours]
    failing_request = request(
        2, max_tokens=14, n=3, temperature=1.0, seed=100, frequency_penalty=0.5
    )
    failing_request.constraint = one_choice_breaks
    failing = driver.submit(failing_request)
    driver.finish()
    driver.step()  # the failed request's other choices leave
    assert isinstance(failing.error, RuntimeError)
    assert not failing.deltas or failing.deltas[-1].finish_reason is None
    texts = [sinks[0].text] + [
        "".join(delta.text for delta in sinks[1].deltas if delta.index == index) for index in (0, 1)
    ]
    assert texts == expected
    stats = engine.stats()
    assert stats.failed_requests == before.failed_requests + 1
    assert stats.running_requests == 0 and stats.kv_cache_usage == 0


# -- drawing all sampled rows at once (sampling.sample_rows) -------------------------------


def draw(logits: torch.Tensor, params: SamplingParams, seeds: range) -> list[int]:
    """One token per seed, each row the same logits with its own generator."""
    rows = logits.expand(len(seeds), -1).clone()
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    return sampling.sample_rows(rows, [params] * len(seeds), generators)


def test_draws_follow_the_tempered_distribution() -> None:
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -30.0])
    params = SamplingParams(temperature=0.7)
    counts = Counter(draw(logits, params, range(20_000)))
    expected = torch.softmax(logits / 0.7, dim=-1)
    for token in range(5):
        assert abs(counts[token] / 20_000 - float(expected[token])) < 0.015


@pytest.mark.parametrize("spread", ["peaked", "flat"])
def test_top_p_draws_only_from_the_nucleus(spread: str) -> None:
    # Peaked: the nucleus is among the first candidates; flat: wider than
    # NUCLEUS_CANDIDATES, so the whole vocabulary is sorted.
    generator = torch.Generator().manual_seed(0)
    vocabulary = 1_000
    scale = 8.0 if spread == "peaked" else 0.01
    logits = torch.randn(vocabulary, generator=generator) * scale
    probs = torch.softmax(logits.double(), dim=-1)
    ordered, order = probs.sort(descending=True)
    nucleus = set(order[(ordered.cumsum(-1) - ordered) < 0.9].tolist())
    assert (len(nucleus) > sampling.NUCLEUS_CANDIDATES) == (spread == "flat")
    drawn = draw(logits, SamplingParams(temperature=1.0, top_p=0.9), range(3_000))
    assert set(drawn) <= nucleus
    assert len(set(drawn)) > min(len(nucleus), 50) // 2  # more than the top token


def test_a_rows_token_does_not_depend_on_the_other_rows() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 500, generator=generator) * 3
    params = [
        SamplingParams(temperature=t, top_p=p, seed=i)
        for i, (t, p) in enumerate(
            [(1.0, 1.0), (0.5, 0.9), (1.5, 0.3), (0.01, 1.0), (1, 0.99), (2, 1)]
        )
    ]

    def generators(rows):
        return [torch.Generator().manual_seed(params[row].seed) for row in rows]

    together = sampling.sample_rows(logits, params, generators(range(6)))
    alone = [sampling.sample_rows(logits[[r]], [params[r]], generators([r]))[0] for r in range(6)]
    assert together == alone


def test_a_row_with_nothing_to_draw_from_is_reported_in_its_place() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [float("-inf")] * 3, [3.0, 2.0, 1.0]])
    params = [SamplingParams(temperature=1.0, top_p=0.5)] * 3
    tokens = sampling.sample_rows(logits, params, [torch.Generator() for _ in range(3)])
    assert tokens[0] == 2 and tokens[2] == 0
    assert isinstance(tokens[1], sampling.UndrawableRowError)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rows_on_the_gpu_draw_what_the_same_rows_draw_on_the_cpu() -> None:
    logits = torch.randn(4, 1_000, generator=torch.Generator().manual_seed(2)) * 4
    params = [
        SamplingParams(temperature=0.8, top_p=p, seed=i) for i, p in enumerate((1, 0.9, 0.5, 1))
    ]

    def draw_on(device: str) -> list:
        generators = [torch.Generator().manual_seed(p.seed) for p in params]
        return sampling.sample_rows(logits.to(device), params, generators)

    assert draw_on("cuda") == draw_on("cpu")
