"""ModelNames: what each model name means now, from a registry snapshot (the names'
grammar is ``ouro.names``).

- ``ouro`` (and ``ouro@production``): the production version this replica serves (the
  LLM server switches it only once the new version is loaded), or the base model while
  the registry has no production version;
- ``ouro@<alias>``: the version the alias points at in the snapshot;
- ``ouro@v<N>``: version N, if the registry has it (pinned: it keeps answering while
  ``ouro`` moves);
- ``ouro-base``: the base model with no adapter;
- ``ouro-shared``: the same as ``ouro`` here (shared production); with personal adapters
  on, ``ouro`` may mean the caller's own adapter instead (``serve.personal_names``);
- ``ouro@<scope>/v<N>`` (with personal adapters on): version N of the scope's own
  registered model. ``serve.personal_names`` turns a caller's ``ouro`` and personal
  aliases into this pinned form, for the caller's own scope only; whether the version
  exists is found when it is loaded.

Anything else, a personal alias (it needs the caller's scope), or an alias or version
the registry does not have: UnknownModelError (404).

Each served version also has a fallback parent (``ModelNames.parent``): the version that
answers a request its router does not send to it. A personal version falls back to shared
production, a shared version to the base model; the base model has none.
"""

from __future__ import annotations

from ouro.names import (
    ALIAS_PRODUCTION,
    BASE_MODEL_NAME,
    SERVED_MODEL_NAME,
    UnknownModelError,
    parse_model_name,
    version_label,
)
from ouro.registry import RegistrySnapshot
from ouro.rollout import CanaryState, canary_state
from serve.llm_calls import ServedModel
from serve.protocol import ModelCard

BASE_MODEL = ServedModel(label=BASE_MODEL_NAME, version=None)


def served_model(version: int | None, scope: str | None = None) -> ServedModel:
    """The label a response carries for a version (None: the base model); ``scope`` names
    a personal version."""
    if version is None:
        return BASE_MODEL
    return ServedModel(label=version_label(version, scope), version=version, scope=scope)


def does_not_exist(name: str) -> UnknownModelError:
    """The one 404 for a name the caller may not use, whether or not it exists."""
    return UnknownModelError(f"the model {name!r} does not exist")


class ModelNames:
    """Resolves names against the latest snapshot and the production version served."""

    def __init__(self, personal_adapters: bool = False) -> None:
        self.snapshot: RegistrySnapshot | None = None
        self.production: int | None = None
        self.personal_adapters = personal_adapters
        """Whether pinned personal names (``ouro@<scope>/v<N>``) resolve."""
        self.canary: CanaryState | None = None
        """The running canary in the snapshot (read once per snapshot, not per request)."""

    def update(self, snapshot: RegistrySnapshot, production: int | None) -> None:
        self.snapshot = snapshot
        self.production = production
        self.canary = canary_state(snapshot)

    @staticmethod
    def needs_production(name: str) -> bool:
        """Whether answering ``name`` needs to know the production version."""
        return parse_model_name(name).alias == ALIAS_PRODUCTION

    def knows(self, name: str) -> bool:
        """Whether ``name`` resolves without re-reading the registry."""
        try:
            self.resolve(name)
        except UnknownModelError:
            return False
        return True

    def resolve(self, name: str) -> ServedModel:
        """The version that answers ``name`` now; UnknownModelError if there is none."""
        ref = parse_model_name(name)
        if ref.scope is not None:
            if not self.personal_adapters or ref.version is None:
                raise does_not_exist(name)
            return served_model(ref.version, ref.scope)
        if ref.is_base:
            return BASE_MODEL
        if ref.alias == ALIAS_PRODUCTION:
            # The production version this replica serves, which may lag the registry
            # while a new one is loading.
            return served_model(self.production)
        if self.snapshot is None:
            raise UnknownModelError(f"the model {name!r} does not exist")
        return served_model(self.snapshot.resolve(ref))

    def parent(self, served: ServedModel) -> ServedModel | None:
        """What answers in ``served``'s place when its router passes a request on: shared
        production (as served here) for a personal version, the base model for a shared
        one; None for the base model."""
        if served.version is None:
            return None
        if served.scope is not None:
            return served_model(self.production)
        return BASE_MODEL

    def fallbacks(self, served: ServedModel) -> list[ServedModel]:
        """``served`` and its parents in order, ending with the base model."""
        chain = [served]
        while (parent := self.parent(chain[-1])) is not None:
            chain.append(parent)
        return chain

    def listing(self, base_model: str) -> list[ModelCard]:
        """``GET /v1/models``: every name that resolves now."""
        snapshot = self.snapshot
        production = self.production
        # 'production' means what 'ouro' answers with here, like resolve() says.
        aliases = dict(snapshot.aliases) if snapshot is not None else {}
        aliases.pop(ALIAS_PRODUCTION, None)
        if production is not None:
            aliases[ALIAS_PRODUCTION] = production
        versions = sorted(snapshot.versions) if snapshot is not None else []
        cards = [
            ModelCard(
                id=SERVED_MODEL_NAME,
                root=served_model(production).label if production else base_model,
                parent=BASE_MODEL_NAME if production else None,
                version=production,
                aliases=[ALIAS_PRODUCTION] if production else [],
            ),
            ModelCard(id=BASE_MODEL_NAME, root=base_model, parent=None, version=None, aliases=[]),
        ]
        for alias, version in sorted(aliases.items()):
            cards.append(
                ModelCard(
                    id=f"{SERVED_MODEL_NAME}@{alias}",
                    root=version_label(version),
                    parent=BASE_MODEL_NAME,
                    version=version,
                    aliases=[alias],
                )
            )
        for version in versions:
            cards.append(
                ModelCard(
                    id=version_label(version),
                    root=version_label(version),
                    parent=BASE_MODEL_NAME,
                    version=version,
                    aliases=sorted(a for a, v in aliases.items() if v == version),
                )
            )
        return cards

    def versions_by_name(self) -> dict[str, int | None]:
        """Each resolvable name and its version (for the version-served metric)."""
        return {card.id: card.version for card in self.listing(BASE_MODEL_NAME)}
