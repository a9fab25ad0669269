"""API keys: held as hashes, compared for client and admin rights, open only when allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from ouro.apikeys import unnamed_key_name
from ouro.settings import OuroSettings
from serve.auth import ApiKeyAuth, UnauthenticatedStartupError, is_loopback_host
from serve.exceptions import AuthenticationError, InvalidRequestError, PermissionDeniedError

CLIENT = "sk-client-0123456789abcdef"
ADMIN = "sk-admin-0123456789abcdef"


@pytest.fixture
def auth(tmp_path: Path) -> ApiKeyAuth:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# mounted from a Secret\n\nsk-from-file-0001\n", encoding="utf-8")
    settings = OuroSettings(
        data_dir=tmp_path, api_keys=[CLIENT], api_keys_file=keys_file, admin_api_keys=[ADMIN]
    )
    return ApiKeyAuth.from_settings(settings)


def test_keys_are_held_only_as_hashes(auth: ApiKeyAuth) -> None:
    held = repr(vars(auth))
    assert CLIENT not in held and ADMIN not in held and "sk-from-file" not in held


@pytest.mark.parametrize(
    ("header", "admin_route", "outcome"),
    [
        (f"Bearer {CLIENT}", False, "client"),
        (f"bearer {CLIENT}", False, "client"),
        ("Bearer sk-from-file-0001", False, "client"),
        (f"Bearer {ADMIN}", False, "admin"),
        (f"Bearer {ADMIN}", True, "admin"),
        (f"Bearer {CLIENT}", True, PermissionDeniedError),
        (None, False, AuthenticationError),
        ("", False, AuthenticationError),
        ("Bearer ", False, AuthenticationError),
        (CLIENT, False, AuthenticationError),  # no scheme
        (f"Basic {CLIENT}", False, AuthenticationError),
        (f"Bearer {CLIENT}x", False, AuthenticationError),
        ("Bearer # mounted from a Secret", False, AuthenticationError),
    ],
)
def test_bearer_keys_decide_who_may_call(
    auth: ApiKeyAuth, header: str | None, admin_route: bool, outcome
) -> None:
    if isinstance(outcome, type):
        with pytest.raises(outcome):
            auth.authenticate(header, admin=admin_route)
        return
    caller = auth.authenticate(header, admin=admin_route)
    assert caller.admin is (outcome == "admin")
    assert caller.key_hash is not None and caller.key_hash.startswith("sha256:")


def test_with_no_key_the_server_is_open_only_when_allowed(tmp_path: Path) -> None:
    with pytest.raises(UnauthenticatedStartupError, match="allow"):
        ApiKeyAuth.from_settings(OuroSettings(data_dir=tmp_path))
    open_auth = ApiKeyAuth.from_settings(
        OuroSettings(data_dir=tmp_path, allow_unauthenticated=True)
    )
    assert open_auth.open
    caller = open_auth.authenticate(None, admin=True)
    assert caller.key_hash is None and caller.admin


def test_an_admin_key_alone_closes_the_client_routes(tmp_path: Path) -> None:
    auth = ApiKeyAuth.from_settings(OuroSettings(data_dir=tmp_path, admin_api_keys=[ADMIN]))
    with pytest.raises(AuthenticationError):
        auth.authenticate(None)
    assert auth.authenticate(f"Bearer {ADMIN}").admin


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.com", False),
    ],
)
def test_loopback_addresses_are_recognised(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_named_keys_give_the_caller_its_scope(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("carol:sk-carol-0001\nsk-bare-0002\n", encoding="utf-8")
    settings = OuroSettings(
        data_dir=tmp_path,
        api_keys=["alice:sk-alice-0001", "bob:sk-bob-0001"],
        api_keys_file=keys_file,
        admin_api_keys=["ops:sk-ops-0001"],
    )
    auth = ApiKeyAuth.from_settings(settings)
    assert "sk-alice" not in repr(vars(auth))

    def caller(key: str):
        return auth.authenticate(f"Bearer {key}")

    assert caller("sk-alice-0001").scope() == "alice"
    assert caller("sk-alice-0001").scope("u1") == "alice/u1"
    assert caller("sk-carol-0001").scope() == "carol"
    assert caller("sk-bare-0002").scope() == unnamed_key_name("sk-bare-0002")
    ops = caller("sk-ops-0001")
    assert ops.admin and ops.scope() == "ops"
    # The name is never accepted as a key, and 'user' cannot climb into another key.
    with pytest.raises(AuthenticationError):
        caller("alice:sk-alice-0001")
    for user in ("../bob", "bob/x", "x" * 65):
        with pytest.raises(InvalidRequestError) as raised:
            caller("sk-alice-0001").scope(user)
        assert raised.value.param == "user"


def test_an_open_server_has_no_identity(tmp_path: Path) -> None:
    auth = ApiKeyAuth.from_settings(OuroSettings(data_dir=tmp_path, allow_unauthenticated=True))
    assert auth.authenticate(None).scope("u1") is None
