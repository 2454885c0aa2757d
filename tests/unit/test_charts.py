"""The PNG charts a demo or benchmark writes beside its JSON report."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from streamrec.charts import Panel, RunTimeline, plot_panels, plot_series, png_path_for

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG, from its IHDR chunk; fails on anything that is not one."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def synthetic_timeline(seconds: int = 30) -> RunTimeline:
    timeline = RunTimeline()
    for t in range(seconds + 1):
        latencies = [0.005 + 0.001 * i for i in range(100)]  # 5..104 ms
        timeline.sample(float(t), {"events produced": 1000 * t, "recommendations": 400 * t},
                        latencies if t else [], {"streamrec": 0.2 + t / 100,
                                                 "popularity": 0.15})
    return timeline


def test_run_timeline_png_is_a_real_picture(tmp_path: Path) -> None:
    path = synthetic_timeline().write_png(tmp_path / "run.png", "synthetic run")
    width, height = png_size(path)
    assert width >= 800 and height >= 600
    # Three panels of lines, legends and labels: far more than an empty canvas.
    assert path.stat().st_size > 20_000


def test_rates_and_latency_percentiles() -> None:
    timeline = synthetic_timeline(3)
    assert timeline.rates()["events produced"] == [(1.0, 1000.0), (2.0, 1000.0),
                                                  (3.0, 1000.0)]
    # No latencies at t=0: no point; then p50 < p95 < p99 within the 5..104 ms samples.
    p50, p95, p99 = (timeline.latency_ms[p] for p in ("p50", "p95", "p99"))
    assert [t for t, _ in p50] == [1.0, 2.0, 3.0]
    assert all(5 <= a < b < c <= 104 for (_, a), (_, b), (_, c) in zip(p50, p95, p99,
                                                                       strict=True))
    assert timeline.recall["popularity"][-1] == (3.0, 0.15)


def test_a_run_too_short_to_sample_still_gives_a_picture(tmp_path: Path) -> None:
    timeline = RunTimeline()
    timeline.sample(0.0, {"events produced": 0}, [], {})
    path = timeline.write_png(tmp_path / "short.png", "short run")
    assert png_size(path)[0] > 0


def test_plot_series_and_non_finite_points(tmp_path: Path) -> None:
    path = plot_series(tmp_path / "one.png", "latency",
                       {"p99": [(0.0, 1.0), (1.0, float("nan")), (2.0, 3.0)]}, ylabel="ms")
    assert png_size(path)[0] > 0


def test_plot_panels_needs_a_panel(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one panel"):
        plot_panels(tmp_path / "none.png", "empty", [])
    assert not (tmp_path / "none.png").exists()
    assert isinstance(Panel("t", "y", {}), Panel)


def test_chart_goes_beside_the_report() -> None:
    assert png_path_for("out/r.json") == Path("out/r.png")
    assert png_path_for("report") == Path("report.png")
