"""API key hashing: stable, non-reversible, and matched in constant time."""

from __future__ import annotations

import hashlib

from ouro.apikeys import hash_api_key, is_known_api_key


def test_hash_is_stable_sha256_and_never_contains_the_key() -> None:
    key = "sk-ouro-7f3a9c1e5b2d4a6f8e0c"
    hashed = hash_api_key(key)
    assert hashed == hash_api_key(key)
    assert hashed == "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    assert key not in hashed
    assert hash_api_key(key + "x") != hashed


def test_known_keys_match_only_by_exact_key() -> None:
    hashes = [hash_api_key("client-one"), hash_api_key("client-two")]
    assert is_known_api_key("client-two", hashes)
    assert not is_known_api_key("client-three", hashes)
    assert not is_known_api_key("client-one ", hashes)
    assert not is_known_api_key(hashes[0], hashes)  # a leaked hash is not a key
    assert not is_known_api_key("client-one", [])


def test_unicode_keys_hash_as_utf8() -> None:
    assert is_known_api_key("clé-ünïcode", [hash_api_key("clé-ünïcode")])
