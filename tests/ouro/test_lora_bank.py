"""The LoRA bank against PEFT's own mixed-adapter forward, row by row.

One PEFT model on the tiny random Llama holds adapters that differ in rank, scaling,
layers and modules; the bank's routed forward must give every row the logits PEFT gives
it with ``adapter_names``, and gather only the adapters the batch uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForCausalLM

from ouro.engine.lora_bank import BASE_ADAPTER, LoraBank
from tests.fixtures.models import LORA_TARGETS

ADAPTERS = {
    "r4": LoraConfig(r=4, lora_alpha=16, target_modules=LORA_TARGETS, init_lora_weights=False),
    "r16": LoraConfig(r=16, lora_alpha=8, target_modules=LORA_TARGETS, init_lora_weights=False),
    # The top layer only, attention only (a recipe's lora_layers, a narrower target list).
    "top_qv": LoraConfig(
        r=8,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
        layers_to_transform=[1],
        init_lora_weights=False,
    ),
    # MLP only, every layer.
    "mlp": LoraConfig(
        r=2,
        lora_alpha=4,
        target_modules=["gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,
    ),
}
SPARE = 10
"""Extra rank-8 adapters, resident but unused by the batches below."""


@pytest.fixture(scope="module")
def peft_model(tiny_random_model_dir: Path):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_random_model_dir)
    configs = dict(ADAPTERS)
    for index in range(SPARE):
        configs[f"spare{index}"] = LoraConfig(
            r=8, lora_alpha=16, target_modules=LORA_TARGETS, init_lora_weights=False
        )
    names = list(configs)
    model = get_peft_model(base, configs[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, configs[name])
    return model.eval()


@contextmanager
def attached_bank(peft_model, **thresholds) -> Iterator[LoraBank]:
    """A bank of every adapter of ``peft_model``, attached while the block runs."""
    layers = [module for module in peft_model.modules() if isinstance(module, LoraLayer)]
    with torch.inference_mode():
        bank = LoraBank(layers, list(peft_model.peft_config), **thresholds)
    bank.attach()
    try:
        yield bank
    finally:
        bank.detach()


@pytest.fixture
def bank(peft_model):
    """A bank with the engine's thresholds."""
    with attached_bank(peft_model) as bank:
        yield bank


def inputs(rows: int, length: int = 7) -> torch.Tensor:
    generator = torch.Generator().manual_seed(rows)
    return torch.randint(3, 500, (rows, length), generator=generator)


def peft_logits(model, input_ids, adapters: list[str | None]) -> torch.Tensor:
    names = [name or BASE_ADAPTER for name in adapters]
    with torch.inference_mode():
        return model(input_ids=input_ids, adapter_names=names).logits


def bank_logits(model, bank: LoraBank, input_ids, adapters: list[str | None]) -> torch.Tensor:
    with torch.inference_mode(), bank.routed(adapters):
        return model(input_ids=input_ids).logits


def test_rows_with_adapters_of_mixed_ranks_layers_and_modules_equal_peft(peft_model, bank):
    adapters = [None, "r4", "r16", "top_qv", "mlp", "r16", "r4", None, "top_qv"]
    input_ids = inputs(len(adapters))

    banked = bank_logits(peft_model, bank, input_ids, adapters)
    expected = peft_logits(peft_model, input_ids, adapters)

    for row in range(len(adapters)):
        torch.testing.assert_close(banked[row], expected[row], rtol=1e-4, atol=1e-5)
    # Each adapter changes its rows, so the comparison means something.
    base = peft_logits(peft_model, input_ids, [None] * len(adapters))
    for row, name in enumerate(adapters):
        assert torch.equal(banked[row], base[row]) == (name is None)


def test_many_resident_few_used_gathers_only_the_used_adapters(peft_model, bank):
    assert len(bank.index) == len(ADAPTERS) + SPARE
    adapters = ["spare3", None, "r4", "spare3", "r4", "spare3"]
    input_ids = inputs(len(adapters))

    banked = bank_logits(peft_model, bank, input_ids, adapters)

    torch.testing.assert_close(
        banked, peft_logits(peft_model, input_ids, adapters), rtol=1e-4, atol=1e-5
    )
    used = {bank.index["spare3"], bank.index["r4"]}
    assert set(bank.used) == used
    ranks = {bank.index["spare3"]: 8, bank.index["r4"]: 4}
    for layer, (a, b, layout) in bank.selected.items():
        assert {adapter for adapter, _ in layout} <= used
        assert a.shape[0] == b.shape[1] == sum(ranks[adapter] for adapter, _ in layout)
        assert a.shape[0] < bank.weights[layer][0].shape[0]  # less than all resident


def test_layers_none_of_the_batch_adapters_is_in_are_skipped(peft_model, bank):
    adapters = ["top_qv", None, "top_qv"]
    input_ids = inputs(len(adapters))

    banked = bank_logits(peft_model, bank, input_ids, adapters)

    torch.testing.assert_close(
        banked, peft_logits(peft_model, input_ids, adapters), rtol=1e-4, atol=1e-5
    )
    assert len(bank.selected) == 2  # q_proj and v_proj of the top layer
    assert all(layout == ((bank.index["top_qv"], 8),) for _, _, layout in bank.selected.values())


def test_a_base_only_batch_equals_the_base_model_and_keeps_the_selection(peft_model, bank):
    bank.route(["r4", "r16"])
    selected = bank.selected
    input_ids = inputs(3)
    banked = bank_logits(peft_model, bank, input_ids, [None, None, None])
    assert bank.selected is selected
    with torch.inference_mode(), peft_model.disable_adapter():
        expected = peft_model(input_ids=input_ids).logits
    torch.testing.assert_close(banked, expected)


def test_inside_routed_the_bank_runs_the_layers_in_peft_s_place(peft_model, monkeypatch):
    """PEFT's LoRA forward only adds Python around the base layer there (every row is
    ``__base__`` to it); outside ``routed``, and once detached, PEFT runs as it would."""
    layer_class = type(next(m for m in peft_model.modules() if isinstance(m, LoraLayer)))
    peft_forward = layer_class.forward
    calls = []

    def counted(self, *args, **kwargs):
        calls.append(self)
        return peft_forward(self, *args, **kwargs)

    monkeypatch.setattr(layer_class, "forward", counted)
    input_ids = inputs(2)
    with attached_bank(peft_model) as bank:
        for adapters in ([None, None], ["r4", None]):
            bank_logits(peft_model, bank, input_ids, adapters)
            assert calls == []
        with torch.inference_mode():
            peft_model(input_ids=input_ids)
        assert len(calls) == len(bank.weights)
    calls.clear()
    with torch.inference_mode():
        peft_model(input_ids=input_ids)
    assert len(calls) == len(bank.weights)


def test_the_used_set_is_gathered_again_only_when_it_changes(peft_model, bank):
    bank.route(["r4", "r16"])
    selected = bank.selected
    bank.route(["r16", None, "r4"])  # same set, other rows: the gathered weights stay
    assert bank.selected is selected
    bank.route(["r16", "mlp"])
    assert bank.selected is not selected
    input_ids = inputs(2)
    torch.testing.assert_close(
        bank_logits(peft_model, bank, input_ids, ["r16", "mlp"]),
        peft_logits(peft_model, input_ids, ["r16", "mlp"]),
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.fixture
def per_row_bank(peft_model):
    """A bank that gathers per row for any batch with an adapter (BGMV)."""
    with attached_bank(peft_model, per_row_min_adapters=1) as bank:
        yield bank


def test_per_row_gathering_equals_peft_for_mixed_ranks_layers_and_modules(peft_model, per_row_bank):
    adapters = [None, "r4", "r16", "top_qv", "mlp", "spare1", "r4", None, "spare7"]
    input_ids = inputs(len(adapters))

    banked = bank_logits(peft_model, per_row_bank, input_ids, adapters)

    assert per_row_bank.per_row
    torch.testing.assert_close(
        banked, peft_logits(peft_model, input_ids, adapters), rtol=1e-4, atol=1e-5
    )
    # A decode step (one token per row) against the same rows' prefill, each row its own.
    step = inputs(len(adapters), length=1)
    torch.testing.assert_close(
        bank_logits(peft_model, per_row_bank, step, adapters),
        peft_logits(peft_model, step, adapters),
        rtol=1e-4,
        atol=1e-5,
    )


def test_small_per_row_products_run_on_the_calling_thread_alone(
    peft_model, per_row_bank, monkeypatch
):
    """Waking torch's intra-op pool costs more than a rank-sized bmm; the thread count
    comes back after each product, whatever the forward does."""
    threads_seen = []
    bmm = torch.bmm

    def recording_bmm(*args):
        threads_seen.append(torch.get_num_threads())
        return bmm(*args)

    monkeypatch.setattr(torch, "bmm", recording_bmm)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        bank_logits(peft_model, per_row_bank, inputs(3), ["r4", "mlp", None])
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert threads_seen and set(threads_seen) == {1}
    assert after == 2


def test_a_prefill_chunk_keeps_its_own_selection_beside_the_running_batchs(peft_model):
    with attached_bank(peft_model) as bank:  # the engine's thresholds
        running = ["r4", "r16", "r4", "r16", None, "r4", "r16", "r4"]  # a decode batch
        chunk = ["mlp", "top_qv"]  # the newly admitted requests' prefill chunk
        selections = {}
        for adapters in (running, chunk, running, chunk, running):
            input_ids = inputs(len(adapters))
            banked = bank_logits(peft_model, bank, input_ids, adapters)
            assert not bank.per_row
            # Each set is gathered once; going back to it regathers nothing.
            assert selections.setdefault(id(adapters), bank.selected) is bank.selected
            torch.testing.assert_close(
                banked, peft_logits(peft_model, input_ids, adapters), rtol=1e-4, atol=1e-5
            )


def test_masks_are_rebuilt_only_when_the_rows_change(peft_model, bank):
    bank.route(["r4", "r16", None])
    masks = bank.masks
    bank.route(["r4", "r16", None])  # the next decoding step of the same batch
    assert bank.masks is masks
    bank.route(["r16", "r4", None])  # same set, rows in another order
    assert bank.masks is not masks
    input_ids = inputs(3)
    torch.testing.assert_close(
        bank_logits(peft_model, bank, input_ids, ["r16", "r4", None]),
        peft_logits(peft_model, input_ids, ["r16", "r4", None]),
        rtol=1e-4,
        atol=1e-5,
    )


def test_a_batch_over_many_adapters_switches_to_per_row_and_back(peft_model, bank):
    many = ["spare0", "spare1", "spare2", "spare3", "spare4", "r4"]
    few = ["r4", "r16", None]
    assert len(set(many)) >= bank.per_row_min_adapters > len(set(few) - {None})
    for adapters in (many, few, many):
        input_ids = inputs(len(adapters))
        banked = bank_logits(peft_model, bank, input_ids, adapters)
        assert bank.per_row == (adapters is many)
        torch.testing.assert_close(
            banked, peft_logits(peft_model, input_ids, adapters), rtol=1e-4, atol=1e-5
        )
