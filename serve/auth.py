"""Bearer API keys: client keys (chat, models, feedback) and admin keys (stats, refresh).

Keys are held only as hashes (``ouro.apikeys``) and compared in constant time. With no
key configured at all the server is open, which ``OuroSettings.allow_unauthenticated``
must allow explicitly; ``python -m serve`` allows it only on a loopback address (or when
told ``--allow-unauthenticated``). Once any key is configured every API route needs one;
an admin key also works where a client key does.

Each key has a name (``alice:sk-...``; a bare key is named by a short hash of itself):
the caller's identity. ``Caller.scope(user)`` is the personal scope of a request: the
key's name, narrowed by the OpenAI ``user`` field. It comes from the key table, so no
request body can name another key's scope.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from ouro.apikeys import hash_api_key, is_known_api_key
from ouro.errors import OuroError
from ouro.scopes import InvalidScopeError, scope_of
from ouro.settings import OuroSettings
from serve.exceptions import AuthenticationError, InvalidRequestError, PermissionDeniedError

logger = logging.getLogger(__name__)

BEARER_PREFIX = "bearer "


class UnauthenticatedStartupError(OuroError):
    """No API key is configured and running open was not allowed."""


@dataclass(frozen=True)
class Caller:
    """Who sent a request."""

    key_hash: str | None
    """Hash of the key used (None when the server is open)."""
    admin: bool
    """Whether the key is an admin key."""
    key_name: str | None = None
    """The key's configured name (None when the server is open: no identity)."""

    def scope(self, user: str | None = None) -> str | None:
        """The personal scope: the key's name, or ``<name>/<user>``; None with no identity.

        A ``user`` that is not a valid scope part is a 400 (InvalidRequestError).
        """
        if self.key_name is None:
            return None
        try:
            return scope_of(self.key_name, user)
        except InvalidScopeError as exc:
            raise InvalidRequestError(str(exc), exc.param) from exc


def is_loopback_host(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ApiKeyAuth:
    """Checks ``Authorization: Bearer <key>`` against the configured key hashes."""

    def __init__(
        self,
        client_key_hashes: list[str],
        admin_key_hashes: list[str],
        key_names: Mapping[str, str] | None = None,
        metrics_key_hashes: list[str] | None = None,
    ) -> None:
        self._client = list(client_key_hashes)
        self._admin = list(admin_key_hashes)
        self._metrics = list(metrics_key_hashes or [])
        self._names = dict(key_names or {})  # key hash -> key name

    @classmethod
    def from_settings(cls, settings: OuroSettings) -> ApiKeyAuth:
        """Hash the configured keys; refuse to run open unless the settings allow it."""
        client_keys, admin_keys = settings.client_keys(), settings.admin_keys()
        names = {hash_api_key(named.key): named.name for named in [*client_keys, *admin_keys]}
        client = [hash_api_key(named.key) for named in client_keys]
        admin = [hash_api_key(named.key) for named in admin_keys]
        metrics = [hash_api_key(key) for key in settings.metrics_api_keys]
        auth = cls(client, admin, names, metrics)
        if auth.open:
            if not settings.allow_unauthenticated:
                raise UnauthenticatedStartupError(
                    "no API key is configured (OURO_API_KEYS, OURO_API_KEYS_FILE, "
                    "OURO_ADMIN_API_KEYS); configure keys, or allow an open server with "
                    "OURO_ALLOW_UNAUTHENTICATED=true (python -m serve: --allow-unauthenticated)"
                )
            logger.warning("no API keys configured: every route is open to anyone who can connect")
        return auth

    @property
    def open(self) -> bool:
        """True when no key is configured: every request is allowed."""
        return not self._client and not self._admin

    def authorize_metrics(self, authorization: str | None) -> None:
        """A scrape of ``/metrics``: a metrics key or an admin key (open when no client or
        admin key is configured, as every route is)."""
        if self.open:
            return
        key = _bearer_key(authorization)
        if is_known_api_key(key, self._metrics) or is_known_api_key(key, self._admin):
            return
        if is_known_api_key(key, self._client):
            raise PermissionDeniedError("/metrics needs a metrics or an admin API key")
        raise AuthenticationError("invalid API key")

    def authenticate(self, authorization: str | None, *, admin: bool = False) -> Caller:
        """The caller behind an Authorization header; raises 401/403-mapped errors."""
        if self.open:
            return Caller(key_hash=None, admin=True)
        key = _bearer_key(authorization)
        is_admin = is_known_api_key(key, self._admin)
        is_client = is_known_api_key(key, self._client)
        if not (is_admin or is_client):
            raise AuthenticationError("invalid API key")
        if admin and not is_admin:
            raise PermissionDeniedError("this route needs an admin API key")
        key_hash = hash_api_key(key)
        return Caller(key_hash=key_hash, admin=is_admin, key_name=self._names.get(key_hash))


def _bearer_key(authorization: str | None) -> str:
    """The key of an ``Authorization: Bearer <key>`` header; AuthenticationError without one."""
    if not authorization or not authorization.lower().startswith(BEARER_PREFIX):
        raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
    key = authorization[len(BEARER_PREFIX) :].strip()
    if not key:
        raise AuthenticationError("invalid API key")
    return key
