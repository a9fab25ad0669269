"""Personal scopes: the forms allowed, what a forget covers, and registry naming."""

from __future__ import annotations

import pytest

from ouro.scopes import (
    InvalidScopeError,
    covers,
    personal_model_name,
    scope_of,
    validate_scope,
)


def test_scope_is_the_key_name_narrowed_by_user() -> None:
    assert scope_of("alice") == "alice"
    assert scope_of("alice", "") == "alice"
    assert scope_of("alice", "u-42@example.org") == "alice/u-42@example.org"


@pytest.mark.parametrize(
    "user", ["../bob", "bob/x", "", " x", "x" * 65, "ünï", "a b", "a\nb", "-lead"]
)
def test_user_values_that_could_escape_or_confuse_a_scope_are_refused(user: str) -> None:
    if user == "":
        return  # empty means no user: the key's own scope
    with pytest.raises(InvalidScopeError) as raised:
        scope_of("alice", user)
    assert raised.value.param == "user"


@pytest.mark.parametrize("scope", ["alice", "key-0123456789ab", "alice/u1", "a.b_c-d/x+y@z"])
def test_valid_scopes(scope: str) -> None:
    assert validate_scope(scope) == scope


@pytest.mark.parametrize("scope", ["", "/u1", "alice/", "alice/u1/u2", "al ice", "a" * 65, ".x"])
def test_invalid_scopes(scope: str) -> None:
    with pytest.raises(InvalidScopeError):
        validate_scope(scope)


def test_forgetting_a_key_covers_its_users_but_not_other_keys() -> None:
    assert covers("alice", "alice") and covers("alice", "alice/u1")
    assert not covers("alice", "alice2") and not covers("alice", "bob/alice")
    assert covers("alice/u1", "alice/u1") and not covers("alice/u1", "alice")
    assert not covers("alice", None)


def test_personal_model_names_are_fixed_length_and_distinct() -> None:
    names = {personal_model_name("ouro-adapter", f"key{i}/user{i}") for i in range(1000)}
    assert len(names) == 1000
    name = personal_model_name("ouro-adapter", "alice/u1")
    assert name.startswith("ouro-adapter.p.") and len(name) == len("ouro-adapter.p.") + 16
    assert "alice" not in name  # scopes may hold e-mail addresses: only the tag names them
    with pytest.raises(InvalidScopeError):
        personal_model_name("ouro-adapter", "alice/../bob")
