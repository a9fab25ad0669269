"""A picture of the Ouro dashboard's panels, drawn from Prometheus with matplotlib.

Grafana cannot run where the docs are built, so this runs every panel's queries (the
dashboard's own PromQL, with Grafana's variables replaced by ``concrete_query``) against a
real Prometheus and draws one small chart per panel. It is a stand-in for a screenshot, not
Grafana's rendering: the figure's title says so, and a panel without data says "no data".

    python -m tools.dashboard_snapshot --prometheus http://localhost:9090 --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from matplotlib import dates as mdates
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from tools.dashboard import DASHBOARD_FILE, concrete_query, walk_panels

logger = logging.getLogger(__name__)

FIGURE_TITLE = "Ouro dashboard panels, drawn from Prometheus with matplotlib (not Grafana)"
COLUMNS = 4
FIGURE_WIDTH_IN = 16.0
PANEL_HEIGHT_IN = 2.6
HEADER_IN = 0.9  # the figure's title and the line under it
DPI = 90
MAX_LEGEND_ENTRIES = 6  # a heatmap's buckets would otherwise bury the chart

# Grafana unit -> y-axis label; "percentunit" gets a percent formatter instead.
_UNIT_LABELS = {"s": "seconds", "reqps": "req/s"}
_LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class PrometheusQueryError(RuntimeError):
    """Prometheus refused a query (bad PromQL, or an answer that is not a matrix)."""


@dataclass(frozen=True)
class PanelTarget:
    expr: str
    legend_format: str


@dataclass(frozen=True)
class PanelSpec:
    """What is drawn of one dashboard panel: its kind, unit and queries."""

    title: str
    kind: str
    unit: str
    targets: tuple[PanelTarget, ...]


@dataclass(frozen=True)
class Series:
    legend: str
    times: tuple[float, ...]
    values: tuple[float, ...]

    @property
    def has_data(self) -> bool:
        return any(math.isfinite(value) for value in self.values)

    @property
    def latest(self) -> float:
        finite = [value for value in self.values if math.isfinite(value)]
        return finite[-1] if finite else math.nan


@dataclass(frozen=True)
class SnapshotResult:
    path: Path
    panels: tuple[str, ...]
    empty_panels: tuple[str, ...] = field(default=())
    """Titles of the panels drawn as "no data", in dashboard order."""


def dashboard_panels(dashboard: dict[str, Any]) -> list[PanelSpec]:
    """The panels with queries, grouped by title in dashboard order; rows left out."""
    grouped: dict[str, PanelSpec] = {}
    for panel in walk_panels(dashboard.get("panels", [])):
        if panel.get("type") == "row":
            continue
        targets = tuple(
            PanelTarget(target["expr"], target.get("legendFormat") or "")
            for target in panel.get("targets", [])
            if target.get("expr")
        )
        if not targets:
            continue
        title = panel["title"]
        if title in grouped:  # two panels of one title: one chart with all their queries
            previous = grouped[title]
            grouped[title] = PanelSpec(
                title, previous.kind, previous.unit, previous.targets + targets
            )
            continue
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit") or ""
        grouped[title] = PanelSpec(title, panel.get("type", "timeseries"), unit, targets)
    return list(grouped.values())


def series_legend(legend_format: str, labels: dict[str, str]) -> str:
    """Grafana's legend: ``{{label}}`` from the series' labels, else the labels themselves."""
    if legend_format and legend_format != "__auto":
        # Grafana leaves a label the series lacks empty.
        return _LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), legend_format).strip()
    name = labels.get("__name__", "")
    rest = ", ".join(
        f'{key}="{value}"' for key, value in sorted(labels.items()) if key != "__name__"
    )
    return f"{name}{{{rest}}}" if rest or not name else name


def format_value(value: float, unit: str) -> str:
    """A stat's number with its unit, roughly as Grafana writes it."""
    if not math.isfinite(value):
        return "no data" if math.isnan(value) else str(value)
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    if unit == "reqps":
        return f"{value:.3g} req/s"
    if unit == "s":
        for size, name in ((86400, "d"), (3600, "h"), (60, "min")):
            if abs(value) >= size:
                return f"{value / size:.3g} {name}"
        return f"{value:.3g} s"
    return f"{value:.4g}"


def query_range(
    client: httpx.Client, expr: str, start: float, end: float, step_s: float
) -> list[dict[str, Any]]:
    """The matrix Prometheus's ``/api/v1/query_range`` returns for ``expr``."""
    response = client.get(
        "/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": step_s},
    )
    try:
        body = response.json()
    except json.JSONDecodeError as error:
        raise PrometheusQueryError(f"{response.status_code} not JSON for {expr!r}") from error
    if body.get("status") != "success":
        raise PrometheusQueryError(f"{body.get('error', response.status_code)} for {expr!r}")
    data = body.get("data", {})
    if data.get("resultType") != "matrix":
        raise PrometheusQueryError(f"{data.get('resultType')!r}, not a matrix, for {expr!r}")
    return data.get("result", [])


def _panel_series(
    client: httpx.Client, spec: PanelSpec, start: float, end: float, step_s: float, window: str
) -> list[Series]:
    drawn: list[Series] = []
    for target in spec.targets:
        expr = concrete_query(target.expr, window)
        found = [
            Series(
                series_legend(target.legend_format, item.get("metric", {})),
                tuple(float(stamp) for stamp, _ in item.get("values", [])),
                # float() reads Prometheus's "NaN", "+Inf" and "-Inf" too.
                tuple(float(value) for _, value in item.get("values", [])),
            )
            for item in query_range(client, expr, start, end, step_s)
        ]
        logger.debug("%s: %d series for %s", spec.title, len(found), expr)
        # Sorted per query (queries keep their order): the same data, the same picture.
        drawn.extend(sorted(found, key=lambda series: (series.legend, series.times)))
    return [series for series in drawn if series.has_data]


def _draw_no_data(axes: Axes) -> None:
    axes.set_axis_off()
    axes.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=14, color="grey")


def _draw_stat(axes: Axes, spec: PanelSpec, series: list[Series]) -> None:
    # The newest point of the range stands in for the panel's instant query at "now".
    axes.set_axis_off()
    if len(series) == 1:
        text, size = format_value(series[0].latest, spec.unit), 26
    else:  # one number per series, named, like the panel's value-and-name mode
        text = "\n".join(f"{s.legend}: {format_value(s.latest, spec.unit)}" for s in series)
        size = max(9, 20 - 3 * len(series))
    axes.text(0.5, 0.45, text, ha="center", va="center", fontsize=size, fontweight="bold")


def _draw_lines(axes: Axes, spec: PanelSpec, series: list[Series]) -> None:
    for line in series:
        stamps = [datetime.fromtimestamp(stamp, tz=UTC) for stamp in line.times]
        axes.plot(stamps, line.values, linewidth=1.2, label=line.legend)
    axes.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=3, maxticks=5))
    axes.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=UTC))
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)
    if spec.unit == "percentunit":
        axes.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    elif spec.unit in _UNIT_LABELS:
        axes.set_ylabel(_UNIT_LABELS[spec.unit], fontsize=7)
    handles, labels = axes.get_legend_handles_labels()
    title = None
    if len(handles) > MAX_LEGEND_ENTRIES:
        title = f"{MAX_LEGEND_ENTRIES} of {len(handles)} series named"
        handles, labels = handles[:MAX_LEGEND_ENTRIES], labels[:MAX_LEGEND_ENTRIES]
    axes.legend(handles, labels, fontsize=6, title=title, title_fontsize=6, loc="upper left")


def render_snapshot(
    prometheus_url: str,
    dashboard: dict[str, Any],
    out: Path,
    *,
    minutes: float = 15,
    step_s: float = 5,
    window: str = "1m",
) -> SnapshotResult:
    """Draw every panel of ``dashboard`` from the last ``minutes`` of Prometheus's data."""
    specs = dashboard_panels(dashboard)
    end = time.time()
    start = end - minutes * 60
    rows = max(1, math.ceil(len(specs) / COLUMNS))
    height = HEADER_IN + rows * PANEL_HEIGHT_IN
    figure = Figure(figsize=(FIGURE_WIDTH_IN, height), dpi=DPI)
    FigureCanvasAgg(figure)
    # Placed in inches from the top, so the header keeps its size however many rows follow.
    figure.suptitle(FIGURE_TITLE, y=1 - 0.15 / height, va="top", fontsize=14, fontweight="bold")
    stamp = datetime.fromtimestamp(end, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    figure.text(
        0.5,
        1 - 0.5 / height,
        f"last {minutes:g} min to {stamp}, step {step_s:g}s, rate window {window}",
        ha="center",
        va="top",
        fontsize=9,
        color="dimgrey",
    )
    grid = figure.subplots(rows, COLUMNS, squeeze=False).flatten()
    empty: list[str] = []
    with httpx.Client(base_url=prometheus_url.rstrip("/"), timeout=30.0) as client:
        for axes, spec in zip(grid, specs, strict=False):
            series = _panel_series(client, spec, start, end, step_s, window)
            axes.set_title(spec.title, fontsize=9)
            if not series:
                empty.append(spec.title)
                _draw_no_data(axes)
            elif spec.kind == "stat":
                _draw_stat(axes, spec, series)
            else:
                _draw_lines(axes, spec, series)
    for axes in grid[len(specs) :]:
        axes.set_visible(False)
    figure.tight_layout(rect=(0, 0, 1, 1 - HEADER_IN / height))
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png", dpi=DPI)
    logger.info("Drew %d panels (%d without data) to %s", len(specs), len(empty), out)
    return SnapshotResult(out, tuple(spec.title for spec in specs), tuple(empty))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prometheus", required=True, help="Prometheus's base URL")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--minutes", type=float, default=15, help="time range, ending now")
    parser.add_argument("--step", type=float, default=5, help="seconds between points")
    parser.add_argument("--window", default="1m", help="what $__rate_interval becomes")
    parser.add_argument(
        "--dashboard", type=Path, default=DASHBOARD_FILE, help="the dashboard's JSON"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dashboard = json.loads(args.dashboard.read_text(encoding="utf-8"))
    try:
        result = render_snapshot(
            args.prometheus,
            dashboard,
            args.out,
            minutes=args.minutes,
            step_s=args.step,
            window=args.window,
        )
    except (httpx.HTTPError, PrometheusQueryError) as error:
        print(f"Could not draw the dashboard: {error}", file=sys.stderr)
        return 1
    print(f"Wrote {result.path} ({len(result.panels)} panels)")
    if result.empty_panels:
        print("No data: " + ", ".join(result.empty_panels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
