"""Personal scopes: whose corrections a personal adapter learns from, and who it answers.

A scope is ``<key name>`` or ``<key name>/<user>``: the name of the API key the request
came with (``ouro.apikeys``), narrowed by the OpenAI ``user`` field for apps that hold one
key for many end users. The key part comes from the server's key table, never from the
request body, so a ``user`` value can only narrow the caller's own key, never reach
another key's scope.

Scopes are checked (``validate_scope``) wherever they enter: the ``user`` field of a
request, a ledger record, an operator's command. Both parts keep to letters, digits and
``. _ - + @``, start with a letter or digit, and are at most 64 characters, so a scope
is safe in a log line, a registry tag and a model name.

In the registry each scope has its own registered model, named from a hash of the scope
(``personal_model_name``), with the scope itself in a tag: see ``ouro.registry``.
"""

from __future__ import annotations

import hashlib
import re

from ouro.apikeys import KEY_NAME_PATTERN
from ouro.errors import OuroError

USER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
SCOPE_SEPARATOR = "/"
MAX_SCOPE_CHARS = 129
PERSONAL_MODEL_INFIX = ".p."
"""Personal registered models are ``<shared registered model>.p.<16 hex digits>``."""
SCOPE_HASH_CHARS = 16


class InvalidScopeError(OuroError, ValueError):
    """A scope or ``user`` value outside the allowed form; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def validate_user(user: str) -> str:
    """The OpenAI ``user`` field as a scope part; InvalidScopeError when not allowed."""
    if not USER_PATTERN.match(user):
        raise InvalidScopeError(
            "user must be 1-64 letters, digits or '._@+-', starting with a letter or digit",
            "user",
        )
    return user


def scope_of(key_name: str, user: str | None = None) -> str:
    """The personal scope of a caller: ``key_name``, or ``key_name/user``."""
    if not KEY_NAME_PATTERN.match(key_name):
        raise InvalidScopeError(f"{key_name!r} is not a valid API key name")
    if user is None or user == "":
        return key_name
    return f"{key_name}{SCOPE_SEPARATOR}{validate_user(user)}"


def validate_scope(scope: str) -> str:
    """``scope`` when it is ``<key name>`` or ``<key name>/<user>``; else InvalidScopeError."""
    key_name, sep, user = scope.partition(SCOPE_SEPARATOR)
    if len(scope) > MAX_SCOPE_CHARS or not KEY_NAME_PATTERN.match(key_name):
        raise InvalidScopeError(f"{scope[:80]!r} is not a valid scope", "scope")
    if sep and not USER_PATTERN.match(user):
        raise InvalidScopeError(f"{scope[:80]!r} is not a valid scope", "scope")
    return scope


def is_valid_scope(scope: str) -> bool:
    try:
        validate_scope(scope)
    except InvalidScopeError:
        return False
    return True


def covers(scope: str, other: str | None) -> bool:
    """Whether ``scope`` includes ``other``: itself, and every user scope under a key name.

    Forgetting ``alice`` forgets ``alice/u1`` too (the key's holder asked for its data to
    go); forgetting ``alice/u1`` leaves ``alice`` and ``alice/u2`` alone.
    """
    if other is None:
        return False
    return other == scope or other.startswith(scope + SCOPE_SEPARATOR)


def scope_hash(scope: str) -> str:
    """16 hex digits of the scope's SHA-256: 64 bits, no collision in practice at 10^4 scopes."""
    return hashlib.sha256(scope.encode("utf-8")).hexdigest()[:SCOPE_HASH_CHARS]


def personal_model_name(shared_model_name: str, scope: str) -> str:
    """The registered model holding ``scope``'s personal adapter versions."""
    return f"{shared_model_name}{PERSONAL_MODEL_INFIX}{scope_hash(validate_scope(scope))}"
