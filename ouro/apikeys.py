"""API keys are held and recorded only as hashes.

Keys are long random secrets, so a plain SHA-256 is enough to make the stored value
non-reversible (no salt needed: nothing to brute-force), and the same key always gives
the same hash, which lets the ledger tie feedback to a key without storing it.

A configured key may carry a name (``alice:sk-...``); the name is the caller's identity
for personal adapters (see ``ouro.scopes``). A key without one is named by a short hash
of itself.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from ouro.errors import OuroError

HASH_PREFIX = "sha256:"


def hash_api_key(key: str) -> str:
    """``sha256:<hex>`` of the key's UTF-8 bytes."""
    return HASH_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def is_known_api_key(key: str, key_hashes: Iterable[str]) -> bool:
    """Whether ``key`` hashes to one of ``key_hashes``, comparing in constant time.

    Every hash is compared (no early exit), so timing says nothing about which matched.
    """
    candidate = hash_api_key(key).encode("ascii")
    found = False
    for known in key_hashes:
        found |= hmac.compare_digest(candidate, known.encode("ascii"))
    return found


# -- named keys -------------------------------------------------------------------------

KEY_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""A key's name: it starts every personal scope of the key, so it stays path- and URL-safe."""
UNNAMED_KEY_PREFIX = "key-"


class InvalidApiKeyEntryError(OuroError, ValueError):
    """A configured key entry that is empty, or whose name is not allowed."""


@dataclass(frozen=True)
class NamedKey:
    """A configured key and the name its callers' personal scopes start with."""

    name: str
    key: str = field(repr=False)


def unnamed_key_name(key: str) -> str:
    """The name of a key configured without one: ``key-`` + 12 hex digits of its hash.

    Stable (the same key always gets the same name, so its scope survives restarts) and
    not reversible: the name can go in logs and registry tags.
    """
    return UNNAMED_KEY_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


def parse_key_entry(entry: str) -> NamedKey:
    """``name:key`` or a bare ``key`` (named by :func:`unnamed_key_name`).

    Only what precedes the first ``:`` can be a name, and only when it is a valid name
    (``KEY_NAME_PATTERN``) and a key follows; anything else is a bare key, so keys that
    contain ``:`` still work unnamed.
    """
    entry = entry.strip()
    if not entry:
        raise InvalidApiKeyEntryError("an API key entry is empty")
    name, sep, key = entry.partition(":")
    if sep and key.strip() and KEY_NAME_PATTERN.match(name):
        return NamedKey(name=name, key=key.strip())
    return NamedKey(name=unnamed_key_name(entry), key=entry)


def parse_key_entries(entries: Iterable[str]) -> list[NamedKey]:
    """Parse every entry; two different keys with one name are refused (scopes would merge)."""
    keys = [parse_key_entry(entry) for entry in entries]
    by_name: dict[str, str] = {}
    for named in keys:
        if by_name.setdefault(named.name, named.key) != named.key:
            raise InvalidApiKeyEntryError(f"two different API keys are both named {named.name!r}")
    return keys
