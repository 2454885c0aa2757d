"""PNG charts of a run's key series, for people who are not running Prometheus.

``streamrec demo --report r.json`` writes ``r.png`` beside it: throughput, event-to-
recommendation latency percentiles and online recall@k per model over the run. Any
command can do the same: sample a :class:`RunTimeline` about once a second and call
:meth:`RunTimeline.write_png`, or draw arbitrary panels with :func:`plot_panels`.

matplotlib runs headless (the Agg canvas, no pyplot, no display, no global state), so
this works on servers and in CI.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# A series is a list of (x, y) points: seconds since the run started, and a value.
Series = Sequence[tuple[float, float]]

# Figure geometry: 10 inches wide, 3 per panel, at 100 dpi (a 1000-pixel-wide PNG).
_WIDTH_IN = 10.0
_PANEL_HEIGHT_IN = 3.0
_DPI = 100
# Latency percentiles drawn per interval, as (label, percentile).
LATENCY_PERCENTILES = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0))


@dataclass(frozen=True)
class Panel:
    """One chart: a title, the y axis label, and named series of (x, y) points."""

    title: str
    ylabel: str
    series: Mapping[str, Series]


def png_path_for(report_path: str | Path) -> Path:
    """``r.json`` -> ``r.png``: where a report's chart goes."""
    return Path(report_path).with_suffix(".png")


def plot_series(path: str | Path, title: str, series: Mapping[str, Series],
                ylabel: str = "", xlabel: str = "seconds since start") -> Path:
    """Write a one-panel PNG of ``series`` (name -> [(x, y), ...]) to ``path``."""
    return plot_panels(path, title, [Panel(title="", ylabel=ylabel, series=series)], xlabel)


def plot_panels(path: str | Path, title: str, panels: Sequence[Panel],
                xlabel: str = "seconds since start") -> Path:
    """Write ``panels`` stacked vertically, sharing the x axis, as a PNG at ``path``.

    A panel without points says so in its middle rather than drawing empty axes, so a
    run too short to sample still gives a readable picture. Non-finite values are left
    out (a percentile of no samples is NaN).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "x.png"
    >>> panel = Panel("Throughput", "events/s", {"produced": [(0, 1), (1, 3)]})
    >>> plot_panels(out, "demo", [panel]).name
    'x.png'
    >>> out.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
    if not panels:
        raise ValueError("plot_panels needs at least one panel")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(_WIDTH_IN, _PANEL_HEIGHT_IN * len(panels) + 0.6), dpi=_DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels, strict=True):
        drawn = 0
        for name, points in panel.series.items():
            finite = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
            if not finite:
                continue
            xs, ys = zip(*finite, strict=True)
            ax.plot(xs, ys, label=name, marker="." if len(finite) < 30 else None,
                    linewidth=1.5)
            drawn += 1
        if drawn:
            ax.legend(loc="best", fontsize="small")
        else:
            ax.text(0.5, 0.5, "no samples", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
        ax.set_title(panel.title, fontsize="medium", loc="left")
        ax.set_ylabel(panel.ylabel)
        # Every series here is a rate, a latency or a share: from zero, so gaps between
        # lines are not exaggerated.
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel(xlabel)
    figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, format="png")
    return path


@dataclass
class RunTimeline:
    """A run's key series, sampled about once a second.

    Each :meth:`sample` gives cumulative counters (turned into per-second rates), the
    latencies observed since the previous sample (turned into percentiles), and the
    current online recall@k per model.
    """

    counters: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    latency_ms: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    recall: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def sample(self, t: float, counts: Mapping[str, float], latencies_s: Sequence[float],
               recall: Mapping[str, float]) -> None:
        """Record one sample at ``t`` seconds since the run started."""
        for name, total in counts.items():
            self.counters.setdefault(name, []).append((t, float(total)))
        if latencies_s:
            import numpy as np

            values = np.percentile(np.asarray(latencies_s, dtype=float) * 1000.0,
                                   [p for _, p in LATENCY_PERCENTILES])
            for (label, _), value in zip(LATENCY_PERCENTILES, values, strict=True):
                self.latency_ms.setdefault(label, []).append((t, float(value)))
        for model, value in recall.items():
            self.recall.setdefault(model, []).append((t, float(value)))

    def rates(self) -> dict[str, list[tuple[float, float]]]:
        """Per-second rate of each counter between consecutive samples."""
        out: dict[str, list[tuple[float, float]]] = {}
        for name, points in self.counters.items():
            out[name] = [(t1, (v1 - v0) / (t1 - t0))
                         for (t0, v0), (t1, v1) in zip(points, points[1:], strict=False)
                         if t1 > t0]
        return out

    def panels(self, recall_k: int = 10) -> list[Panel]:
        return [
            Panel("Throughput", "records/s", self.rates()),
            Panel("Event to recommendation latency (per interval)", "ms", self.latency_ms),
            Panel(f"Online recall@{recall_k} per model", f"recall@{recall_k}", self.recall),
        ]

    def write_png(self, path: str | Path, title: str, recall_k: int = 10) -> Path:
        return plot_panels(path, title, self.panels(recall_k))
