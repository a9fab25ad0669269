"""API key hashing (stable, non-reversible, matched in constant time) and key names."""

from __future__ import annotations

import hashlib

import pytest

from ouro.apikeys import (
    InvalidApiKeyEntryError,
    hash_api_key,
    is_known_api_key,
    parse_key_entries,
    parse_key_entry,
    unnamed_key_name,
)


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


def test_named_keys_and_bare_keys_named_by_their_hash() -> None:
    alice, bare, colon = parse_key_entries(["alice:sk-a-123", "sk-bare-456", "sk:with:colons"])
    assert (alice.name, alice.key) == ("alice", "sk-a-123")
    assert bare.key == "sk-bare-456"
    assert bare.name == unnamed_key_name("sk-bare-456")
    assert bare.name.startswith("key-") and len(bare.name) == 16
    assert "sk-bare" not in bare.name and "sk-a-123" not in repr(alice)
    # "sk" is a valid name, so this is a key named sk; a name that is not valid stays a key.
    assert (colon.name, colon.key) == ("sk", "with:colons")
    odd = parse_key_entry("bad name:sk-x")
    assert odd.key == "bad name:sk-x" and odd.name == unnamed_key_name("bad name:sk-x")


def test_one_name_for_two_keys_is_refused() -> None:
    with pytest.raises(InvalidApiKeyEntryError):
        parse_key_entries(["alice:sk-1", "alice:sk-2"])
    assert len(parse_key_entries(["alice:sk-1", "alice:sk-1"])) == 2  # same key twice is fine
