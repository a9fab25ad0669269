"""Telling a running Serve app to re-read the registry now (best effort).

Serve polls the registry on its own (``registry_poll_interval_s``); the training job, the
operator commands and ``python -m serve``'s training loop call this after moving an alias
so the change is served within seconds instead.
"""

from __future__ import annotations

import logging

import httpx

logger = logging.getLogger(__name__)

REFRESH_PATH = "/admin/registry/refresh"
NOTIFY_WAIT_S = 60.0
"""How long Serve may take to load the new version on every replica before answering."""


def notify_serve(url: str, admin_key: str | None, wait_s: float = NOTIFY_WAIT_S) -> bool:
    """Ask Serve to re-read the registry now; best effort (Serve polls on its own anyway)."""
    endpoint = url.rstrip("/")
    if not endpoint.endswith(REFRESH_PATH):
        endpoint += REFRESH_PATH
    headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
    try:
        response = httpx.post(
            endpoint, params={"wait_s": wait_s}, headers=headers, timeout=wait_s + 30
        )
    except httpx.HTTPError as exc:
        logger.warning("could not notify Serve at %s (it will poll on its own): %s", endpoint, exc)
        return False
    if response.status_code != 200:
        logger.warning(
            "Serve answered %s to %s (it will poll on its own): %s",
            response.status_code,
            endpoint,
            response.text[:300],
        )
        return False
    logger.info("Serve re-read the registry: %s", response.text[:300])
    return True
