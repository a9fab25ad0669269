"""Model names: what clients put in a request's ``model`` field, and what each asks for.

- ``ouro``: whatever the ``production`` alias points at; the base model while none is set;
- ``ouro@<alias>`` (``ouro@production``, ``ouro@candidate``, ``ouro@canary``, ...): that alias;
- ``ouro@v<N>``: version N, pinned;
- ``ouro-base``: the base model with no adapter;
- ``ouro-shared``: shared production, whoever asks (with personal adapters on, ``ouro``
  may answer with the caller's own adapter instead);
- ``ouro@<scope>/v<N>``, ``ouro@<scope>/<alias>``: a personal version or alias of
  ``scope`` (``alice``, ``alice/u1``), see ``ouro.scopes``. Only the scope's own callers
  may use them; the serving side decides that.

The grammar only: which version a name resolves to is the registry's
(``ouro.registry``) and the replica's view of it (``serve.model_names``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ouro.errors import OuroError
from ouro.scopes import SCOPE_SEPARATOR, InvalidScopeError, validate_scope

SERVED_MODEL_NAME = "ouro"
BASE_MODEL_NAME = "ouro-base"
SHARED_MODEL_NAME = "ouro-shared"
ALIAS_PRODUCTION = "production"
ALIAS_CANDIDATE = "candidate"
ALIAS_CANARY = "canary"

_ALIAS_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_VERSION_ALIAS_PATTERN = re.compile(r"^[vV]\d+$")  # reserved by MLflow for versions
_PINNED_PATTERN = re.compile(r"^v([1-9][0-9]*)$")


class UnknownModelError(OuroError):
    """A model name that is not one of the served forms, or names nothing that exists."""


VALID_NAME_FORMS = (
    f"'{SERVED_MODEL_NAME}', '{SERVED_MODEL_NAME}@<alias>' (e.g. "
    f"'{SERVED_MODEL_NAME}@{ALIAS_PRODUCTION}', '{SERVED_MODEL_NAME}@{ALIAS_CANDIDATE}'), "
    f"'{SERVED_MODEL_NAME}@v<N>' (a pinned version, e.g. '{SERVED_MODEL_NAME}@v7') "
    f", '{SHARED_MODEL_NAME}' or '{BASE_MODEL_NAME}'"
)


@dataclass(frozen=True)
class ModelRef:
    """What a model name asks for: an alias, a pinned version, or the base model."""

    name: str = field(metadata={"help": "The name as requested."})
    alias: str | None = field(default=None, metadata={"help": "Registry alias to follow."})
    version: int | None = field(default=None, metadata={"help": "Pinned version number."})
    scope: str | None = field(
        default=None, metadata={"help": "Personal scope whose registered model is meant."}
    )

    @property
    def is_base(self) -> bool:
        return self.alias is None and self.version is None


def parse_model_name(name: str) -> ModelRef:
    """Parse a client's model name; UnknownModelError for anything but the served forms."""
    if name == BASE_MODEL_NAME:
        return ModelRef(name)
    if name in (SERVED_MODEL_NAME, SHARED_MODEL_NAME):
        return ModelRef(name, alias=ALIAS_PRODUCTION)
    prefix, at, suffix = name.partition("@")
    if prefix == SERVED_MODEL_NAME and at and SCOPE_SEPARATOR in suffix:
        scope, _, target = suffix.rpartition(SCOPE_SEPARATOR)
        try:
            validate_scope(scope)
        except InvalidScopeError:
            raise UnknownModelError(f"unknown model {name!r}: use {VALID_NAME_FORMS}") from None
        pinned = _PINNED_PATTERN.match(target)
        if pinned:
            return ModelRef(name, version=int(pinned.group(1)), scope=scope)
        if is_valid_alias(target):
            return ModelRef(name, alias=target, scope=scope)
    elif prefix == SERVED_MODEL_NAME and at:
        pinned = _PINNED_PATTERN.match(suffix)
        if pinned:
            return ModelRef(name, version=int(pinned.group(1)))
        if is_valid_alias(suffix):
            return ModelRef(name, alias=suffix)
    raise UnknownModelError(f"unknown model {name!r}: use {VALID_NAME_FORMS}")


def is_valid_alias(alias: str) -> bool:
    """An alias MLflow accepts: letters, digits, '_' and '-', not 'latest' nor 'v<N>'."""
    return (
        bool(_ALIAS_PATTERN.match(alias))
        and not _VERSION_ALIAS_PATTERN.match(alias)
        and alias.lower() != "latest"
    )


def version_label(n: int, scope: str | None = None) -> str:
    """The name of a pinned version: ``ouro@v<n>``, or ``ouro@<scope>/v<n>`` for a personal one."""
    if scope is not None:
        return f"{SERVED_MODEL_NAME}@{scope}{SCOPE_SEPARATOR}v{n}"
    return f"{SERVED_MODEL_NAME}@v{n}"


def personal_alias_name(scope: str, alias: str) -> str:
    """The name of a personal alias: ``ouro@<scope>/<alias>``."""
    return f"{SERVED_MODEL_NAME}@{scope}{SCOPE_SEPARATOR}{alias}"
