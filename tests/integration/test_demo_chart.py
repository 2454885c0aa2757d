"""``streamrec demo --report r.json`` also draws ``r.png``: a picture without Grafana."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.integration


def test_demo_writes_a_chart_beside_its_report(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    result = subprocess.run(
        [sys.executable, "-m", "streamrec.cli", "demo", "--users", "40", "--titles", "60",
         "--events", "3000", "--rate", "1500", "--report", str(report)],
        cwd=tmp_path, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = orjson.loads(report.read_bytes())
    assert summary["events_produced"] == 3000
    # Online recall over the whole run, from the worker's counters, for both lists.
    run = summary["online_recall_over_run"]
    assert set(run) == {"streamrec", "popularity"}
    for row in run.values():
        assert row["tests"] > 0 and 0 <= row["hits"] <= row["tests"]
        assert row["recall"] == round(row["hits"] / row["tests"], 4)
    assert "over the whole run (95% interval): " in result.stdout
    chart = tmp_path / "r.png"
    assert f"chart written to {chart}" in result.stdout
    data = chart.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 800 and height >= 600
    assert len(data) > 20_000, "a chart of three panels with lines, not an empty canvas"
