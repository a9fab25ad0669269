"""Model names resolve against a registry snapshot and the production version served."""

from __future__ import annotations

import pytest

from ouro.names import UnknownModelError, parse_model_name
from ouro.registry import AdapterVersion, RegistrySnapshot
from serve.llm_calls import ServedModel
from serve.model_names import ModelNames

SNAPSHOT = RegistrySnapshot(
    "ouro-adapter",
    aliases={"production": 3, "candidate": 4},
    versions={n: AdapterVersion(version=n, source=f"file:///v{n}") for n in (1, 2, 3, 4)},
)


@pytest.fixture
def names() -> ModelNames:
    names = ModelNames()
    # The replica still serves 2 while it loads 3: 'ouro' follows what it serves.
    names.update(SNAPSHOT, production=2)
    return names


@pytest.mark.parametrize(
    ("name", "label", "version"),
    [
        ("ouro", "ouro@v2", 2),
        ("ouro@production", "ouro@v2", 2),
        ("ouro@candidate", "ouro@v4", 4),
        ("ouro@v1", "ouro@v1", 1),
        ("ouro@v3", "ouro@v3", 3),
        ("ouro-base", "ouro-base", None),
    ],
)
def test_names_resolve_to_the_version_that_answers(
    names: ModelNames, name: str, label: str, version: int | None
) -> None:
    assert names.resolve(name) == ServedModel(label=label, version=version)
    assert names.knows(name)


@pytest.mark.parametrize("name", ["gpt-4", "ouro@v9", "ouro@staging", "ouro@v0", "Ouro", ""])
def test_other_names_are_unknown(names: ModelNames, name: str) -> None:
    with pytest.raises(UnknownModelError):
        names.resolve(name)
    assert not names.knows(name)


def test_without_a_production_version_ouro_is_the_base_model() -> None:
    names = ModelNames()
    names.update(RegistrySnapshot("ouro-adapter"), production=None)
    assert names.resolve("ouro") == ServedModel(label="ouro-base", version=None)
    assert [card.id for card in names.listing("ouro-tiny")] == ["ouro", "ouro-base"]
    assert ModelNames.needs_production("ouro") and not ModelNames.needs_production("ouro@v1")


def test_the_listing_names_every_name_that_resolves(names: ModelNames) -> None:
    cards = {card.id: card for card in names.listing("ouro-tiny")}
    assert set(cards) == {
        "ouro",
        "ouro-base",
        "ouro@candidate",
        "ouro@production",
        "ouro@v1",
        "ouro@v2",
        "ouro@v3",
        "ouro@v4",
    }
    assert (cards["ouro"].version, cards["ouro"].root, cards["ouro"].parent) == (
        2,
        "ouro@v2",
        "ouro-base",
    )
    assert (cards["ouro-base"].root, cards["ouro-base"].parent) == ("ouro-tiny", None)
    # 'production' is where 'ouro' answers from on this replica (v3 is still loading).
    assert cards["ouro@v2"].aliases == ["production"]
    assert cards["ouro@v3"].aliases == []
    assert cards["ouro@v4"].aliases == ["candidate"]
    for name, card in cards.items():
        assert names.resolve(name).version == card.version


@pytest.mark.parametrize(
    ("name", "scope", "alias", "version"),
    [
        ("ouro@alice/v3", "alice", None, 3),
        ("ouro@alice/u-1@example.org/v12", "alice/u-1@example.org", None, 12),
        ("ouro@alice/production", "alice", "production", None),
        ("ouro@alice/u1/candidate", "alice/u1", "candidate", None),
        ("ouro-shared", None, "production", None),
    ],
)
def test_personal_and_shared_name_forms_parse(name, scope, alias, version) -> None:
    ref = parse_model_name(name)
    assert (ref.scope, ref.alias, ref.version) == (scope, alias, version)


@pytest.mark.parametrize(
    "name", ["ouro@/v1", "ouro@alice/", "ouro@al ice/v1", "ouro@a/b/c/v1", "ouro@alice/v0"]
)
def test_malformed_personal_names_are_unknown(name: str) -> None:
    with pytest.raises(UnknownModelError):
        parse_model_name(name)


def test_personal_names_need_the_callers_scope_and_shared_is_production(names) -> None:
    # Without a scope (the LLM server today, or the switch off) a personal name names nothing.
    with pytest.raises(UnknownModelError, match="does not exist"):
        names.resolve("ouro@alice/v1")
    assert names.resolve("ouro-shared") == names.resolve("ouro")
    assert "ouro-shared" not in {card.id for card in names.listing("base")}  # listed when on


def test_pinned_personal_names_resolve_in_the_one_resolver() -> None:
    names = ModelNames(personal_adapters=True)
    names.update(SNAPSHOT, production=2)
    served = names.resolve("ouro@alice/u1/v7")
    assert served == ServedModel(label="ouro@alice/u1/v7", version=7, scope="alice/u1")
    assert names.knows("ouro@alice/v1")
    # A personal alias needs the caller's scope (serve.personal_names pins it first).
    with pytest.raises(UnknownModelError, match="does not exist"):
        names.resolve("ouro@alice/production")
    # Without a snapshot too: the version is found (or missing) when it is loaded.
    assert ModelNames(personal_adapters=True).resolve("ouro@bob/v3").scope == "bob"


def test_every_version_falls_back_to_its_parent_down_to_the_base_model(names) -> None:
    base = ServedModel(label="ouro-base", version=None)
    shared = names.resolve("ouro@v1")
    assert names.parent(shared) == base
    assert names.parent(base) is None
    assert names.fallbacks(names.resolve("ouro")) == [names.resolve("ouro@v2"), base]
    assert names.fallbacks(base) == [base]
    personal = ModelNames(personal_adapters=True)
    personal.update(SNAPSHOT, production=2)
    # A personal version falls back to the shared production this replica serves.
    assert [m.label for m in personal.fallbacks(personal.resolve("ouro@alice/v4"))] == [
        "ouro@alice/v4",
        "ouro@v2",
        "ouro-base",
    ]
    personal.update(SNAPSHOT, production=None)
    assert personal.parent(personal.resolve("ouro@alice/v4")) == base
