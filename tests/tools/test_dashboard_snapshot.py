"""The dashboard's picture drawn from Prometheus (tools/dashboard_snapshot.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from PIL import Image

from tools.dashboard import DASHBOARD_FILE, panel_queries
from tools.dashboard_snapshot import (
    PrometheusQueryError,
    dashboard_panels,
    format_value,
    main,
    render_snapshot,
    series_legend,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NO_DATA_MARKER = "ouro_absent_metric"
BAD_QUERY_MARKER = "ouro_bad_query"
T0 = 1_700_000_000.0

# Two series of ten points each, the same for any query.
MATRIX = [
    {
        "metric": {"route": route, "replica": "r0"},
        "values": [[T0 + 5 * i, str(scale * (i + 1))] for i in range(10)],
    }
    for route, scale in (("chat", 1.0), ("models", 0.5))
]

DASHBOARD = {
    "panels": [
        {"type": "row", "title": "Overview", "panels": []},
        {
            "type": "timeseries",
            "title": "Requests/s by route",
            "fieldConfig": {"defaults": {"unit": "reqps"}},
            "targets": [
                {
                    "expr": 'sum by (route) (rate(ouro_requests_total{replica=~"$replica"}'
                    "[$__rate_interval]))",
                    "legendFormat": "{{route}} on {{replica}}",
                    "refId": "A",
                }
            ],
        },
        {
            "type": "stat",
            "title": "Pending",
            "fieldConfig": {"defaults": {"unit": "short"}},
            "targets": [{"expr": f"max({NO_DATA_MARKER})", "legendFormat": "pending"}],
        },
    ]
}


class _FakePrometheus(BaseHTTPRequestHandler):
    queries: list[str] = []

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = parse_qs(url.query).get("query", [""])[0]
        type(self).queries.append(query)
        if url.path != "/api/v1/query_range":
            self._answer(404, {"status": "error", "error": "not found"})
        elif BAD_QUERY_MARKER in query:
            self._answer(400, {"status": "error", "errorType": "bad_data", "error": "parse"})
        else:
            result = [] if NO_DATA_MARKER in query else MATRIX
            self._answer(
                200, {"status": "success", "data": {"resultType": "matrix", "result": result}}
            )

    def _answer(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the test output quiet


@pytest.fixture
def prometheus() -> Iterator[str]:
    _FakePrometheus.queries = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakePrometheus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_render_snapshot_draws_a_png_and_names_the_empty_panels(
    prometheus: str, tmp_path: Path
) -> None:
    out = tmp_path / "docs" / "dashboard.png"

    result = render_snapshot(prometheus, DASHBOARD, out, minutes=5, step_s=5)

    assert result.path == out
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(out) as image:
        width, height = image.size
    assert width == 16 * 90 and height > 100
    assert result.panels == ("Requests/s by route", "Pending")
    assert result.empty_panels == ("Pending",)
    # Grafana's variables were replaced before Prometheus saw the queries.
    assert _FakePrometheus.queries[0] == (
        'sum by (route) (rate(ouro_requests_total{replica=~".*"}[1m]))'
    )
    assert all("$" not in query for query in _FakePrometheus.queries)


def test_a_refused_query_fails_the_picture(prometheus: str, tmp_path: Path) -> None:
    dashboard = {
        "panels": [{"type": "timeseries", "title": "Bad", "targets": [{"expr": BAD_QUERY_MARKER}]}]
    }

    with pytest.raises(PrometheusQueryError, match="parse"):
        render_snapshot(prometheus, dashboard, tmp_path / "bad.png")

    assert not (tmp_path / "bad.png").exists()


def test_cli_writes_the_png(prometheus: str, tmp_path: Path) -> None:
    dashboard_file = tmp_path / "dashboard.json"
    dashboard_file.write_text(json.dumps(DASHBOARD), encoding="utf-8")
    out = tmp_path / "out.png"

    code = main(
        ["--prometheus", prometheus, "--out", str(out), "--minutes", "2"]
        + ["--dashboard", str(dashboard_file)]
    )

    assert code == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE)


def test_panels_are_those_panel_queries_walks() -> None:
    dashboard = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))

    specs = dashboard_panels(dashboard)

    queried = list(dict.fromkeys(title for title, _ in panel_queries(dashboard)))
    assert [spec.title for spec in specs] == queried
    assert [(spec.title, t.expr) for spec in specs for t in spec.targets] == panel_queries(
        dashboard
    )
    assert all(spec.kind != "row" for spec in specs)


@pytest.mark.parametrize(
    ("legend_format", "labels", "expected"),
    [
        ("{{route}} {{status}}", {"route": "chat", "status": "200"}, "chat 200"),
        ("p99 {{ model }}", {"model": "ouro@v2"}, "p99 ouro@v2"),
        ("{{missing}} x", {}, "x"),
        ("", {"__name__": "up", "job": "ouro"}, 'up{job="ouro"}'),
        ("__auto", {"b": "2", "a": "1"}, '{a="1", b="2"}'),
        ("", {}, "{}"),
    ],
)
def test_series_legend(legend_format: str, labels: dict[str, str], expected: str) -> None:
    assert series_legend(legend_format, labels) == expected


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (0.0123, "percentunit", "1.23%"),
        (2.5, "reqps", "2.5 req/s"),
        (42.0, "s", "42 s"),
        (5400.0, "s", "1.5 h"),
        (3.0, "short", "3"),
        (float("nan"), "short", "no data"),
    ],
)
def test_format_value(value: float, unit: str, expected: str) -> None:
    assert format_value(value, unit) == expected
