"""API keys are held and recorded only as hashes.

Keys are long random secrets, so a plain SHA-256 is enough to make the stored value
non-reversible (no salt needed: nothing to brute-force), and the same key always gives
the same hash, which lets the ledger tie feedback to a key without storing it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

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
