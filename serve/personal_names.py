"""Personal model names, per caller scope (only with ``OURO_PERSONAL_ADAPTERS=true``).

On the wire a personal version is ``ouro@<scope>/v<N>`` and a personal alias
``ouro@<scope>/<alias>``: version N (alias) of the registered model
``ouro.scopes.personal_model_name(<shared model>, <scope>)``. For a caller whose scope
is S:

- ``ouro``: S's personal production when there is one, else shared production;
- ``ouro-shared``: shared production, always;
- ``ouro@S/v<N>``, ``ouro@S/<alias>``: S's own versions and aliases;
- another scope's name: UnknownModelError with the very message a name that does not
  exist gets, so a 404 says nothing about other scopes;
- every other name: as without personal adapters (``serve.model_names``).

What the front hands the LLM server is a pinned name: ``ouro@S/v<N>`` when a
personal version answers, else the caller's name unchanged.

Which scopes have a production version comes from one paged registry search per poll
(``PersonalRegistries.production_by_scope``: aliases and tags of every personal model);
a scope's versions (for pinned names and ``/v1/models``) are read when asked, cached for
a poll interval.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ouro.names import (
    ALIAS_PRODUCTION,
    BASE_MODEL_NAME,
    SERVED_MODEL_NAME,
    SHARED_MODEL_NAME,
    UnknownModelError,
    parse_model_name,
    personal_alias_name,
    version_label,
)
from ouro.registry import PersonalRegistries, RegistryError, RegistrySnapshot
from serve.model_names import ModelNames, does_not_exist
from serve.protocol import ModelCard

logger = logging.getLogger(__name__)


class PersonalNames:
    """The personal side of name resolution, as this replica last read the registry."""

    def __init__(self, registries: PersonalRegistries, max_age_s: float) -> None:
        self._registries = registries
        self._max_age_s = max_age_s
        self.aliases_by_scope: dict[str, dict[str, int]] = {}
        self._snapshots: dict[str, tuple[float, RegistrySnapshot]] = {}

    async def refresh(self) -> None:
        """Re-read which scopes have which aliases; keeps the last view if the registry fails."""
        try:
            self.aliases_by_scope = await asyncio.to_thread(self._registries.production_by_scope)
        except RegistryError as exc:
            logger.warning("personal adapters: registry listing failed, keeping the last: %s", exc)
            return
        self._snapshots.clear()

    def production(self, scope: str | None) -> int | None:
        if scope is None:
            return None
        return self.aliases_by_scope.get(scope, {}).get(ALIAS_PRODUCTION)

    async def snapshot(self, scope: str) -> RegistrySnapshot:
        """The scope's versions and aliases, read at most once per poll interval."""
        cached = self._snapshots.get(scope)
        if cached is not None and time.monotonic() - cached[0] < self._max_age_s:
            return cached[1]
        registry = self._registries.for_scope(scope)
        snapshot = await asyncio.to_thread(registry.snapshot)
        self._snapshots[scope] = (time.monotonic(), snapshot)
        return snapshot

    async def forwarded_name(self, name: str, scope: str | None) -> str:
        """The name to send the LLM server for ``name`` asked by ``scope``; 404s as above.

        Names outside the personal forms are returned unchanged for ``ModelNames`` to check.
        """
        ref = parse_model_name(name)
        if ref.scope is None:
            production = self.production(scope)
            if name == SERVED_MODEL_NAME and production is not None:
                return version_label(production, scope)
            return name
        if ref.scope != scope:
            raise does_not_exist(name)
        snapshot = await self.snapshot(scope)
        try:
            version = snapshot.resolve(ref)
        except UnknownModelError:
            raise does_not_exist(name) from None
        if version is None:
            raise does_not_exist(name)
        return version_label(version, scope)

    async def listing(
        self, names: ModelNames, base_model: str, scope: str | None
    ) -> list[ModelCard]:
        """``/v1/models`` for ``scope``: the shared names, ``ouro-shared``, and its own names."""
        cards = names.listing(base_model)
        shared = cards[0]  # 'ouro' as shared production; also what 'ouro-shared' is
        cards.insert(1, shared.model_copy(update={"id": SHARED_MODEL_NAME}))
        if scope is None or scope not in self.aliases_by_scope:
            return cards
        snapshot = await self.snapshot(scope)
        production = snapshot.production
        if production is not None:
            cards[0] = ModelCard(
                id=SERVED_MODEL_NAME,
                root=version_label(production, scope),
                parent=BASE_MODEL_NAME,
                version=production,
                aliases=[ALIAS_PRODUCTION],
            )
        for alias, version in sorted(snapshot.aliases.items()):
            cards.append(
                ModelCard(
                    id=personal_alias_name(scope, alias),
                    root=version_label(version, scope),
                    parent=BASE_MODEL_NAME,
                    version=version,
                    aliases=[alias],
                )
            )
        for version in sorted(snapshot.versions):
            cards.append(
                ModelCard(
                    id=version_label(version, scope),
                    root=version_label(version, scope),
                    parent=BASE_MODEL_NAME,
                    version=version,
                    aliases=sorted(a for a, v in snapshot.aliases.items() if v == version),
                )
            )
        return cards
