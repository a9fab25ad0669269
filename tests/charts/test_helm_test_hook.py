"""The `helm test` hook's script, run with /bin/sh and curl against a local stand-in API."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tools.manifests import find

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
]


class _ModelsHandler(BaseHTTPRequestHandler):
    """Answers GET /v1/models like Ouro: 200 with the right key, 401 otherwise."""

    expected_key: str | None = None
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.seen.append({"path": self.path, **dict(self.headers.items())})
        authorized = self.expected_key is None or (
            self.headers.get("Authorization") == f"Bearer {self.expected_key}"
        )
        status = 200 if self.path == "/v1/models" and authorized else 401
        body = b'{"object": "list", "data": [{"id": "ouro", "object": "model"}]}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Quiet: pytest shows failures."""


@pytest.fixture
def models_api() -> Iterator[tuple[str, type[_ModelsHandler]]]:
    handler = type("Handler", (_ModelsHandler,), {"seen": [], "expected_key": None})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def hook_script(rendered, base_url: str, *, retries: bool = True) -> str:
    script = find(rendered["default"], "Pod")["spec"]["containers"][0]["args"][0]
    assert "http://ouro-serve-svc:8000" in script
    script = script.replace("http://ouro-serve-svc:8000", base_url)
    return script if retries else script.replace("--retry 5", "--retry 0")


def run_hook(script: str, api_keys: str | None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"]}
    if api_keys is not None:
        env["OURO_API_KEYS"] = api_keys
    return subprocess.run(
        ["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_hook_sends_the_first_client_key_and_passes(rendered, models_api):
    base_url, handler = models_api
    handler.expected_key = "first-key"
    result = run_hook(hook_script(rendered, base_url), "first-key,second-key")
    assert result.returncode == 0, result.stderr
    assert '"id": "ouro"' in result.stdout
    assert handler.seen[-1]["Authorization"] == "Bearer first-key"


def test_hook_sends_no_header_when_no_keys_are_configured(rendered, models_api):
    base_url, handler = models_api
    result = run_hook(hook_script(rendered, base_url), None)
    assert result.returncode == 0, result.stderr
    assert "Authorization" not in handler.seen[-1]


def test_hook_fails_when_the_api_refuses(rendered, models_api):
    base_url, handler = models_api
    handler.expected_key = "the-real-key"
    result = run_hook(hook_script(rendered, base_url, retries=False), "a-wrong-key")
    assert result.returncode != 0
    assert "401" in result.stderr


@pytest.mark.parametrize(
    ("entries", "sent"),
    [
        ("alice:sk-alice-1,bob:sk-bob-2", "sk-alice-1"),  # a named key: only the key part
        ("sk-bare-key", "sk-bare-key"),
        ("-odd:key", "-odd:key"),  # not a valid name before the colon: a bare key, as Ouro reads it
    ],
)
def test_hook_sends_the_key_part_of_a_named_entry(rendered, models_api, entries, sent):
    from ouro.apikeys import parse_key_entry

    assert parse_key_entry(entries.split(",")[0]).key == sent  # what Ouro itself accepts
    base_url, handler = models_api
    handler.expected_key = sent
    result = run_hook(hook_script(rendered, base_url, retries=False), entries)
    assert result.returncode == 0, result.stderr
    assert handler.seen[-1]["Authorization"] == f"Bearer {sent}"
