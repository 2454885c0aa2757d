"""What ``streamrec evaluate`` writes: report.json, report.png, a table, a progress bar."""

from __future__ import annotations

import contextlib
import errno
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from streamrec.evaluation.compare import comparisons, strongest_rival
from streamrec.evaluation.metrics import rolling_mean
from streamrec.evaluation.protocol import Outcome

METRIC_ORDER = ("recall@{k}", "ndcg@{k}", "mrr", "coverage", "novelty")
# The model the table's closing line compares with its strongest rival.
PRODUCT = "streamrec"


def build(outcome: Outcome, protocol: dict[str, Any]) -> dict[str, Any]:
    """The ``report.json`` document."""
    return {
        "protocol": protocol,
        "events": outcome.events,
        "positives": outcome.positives,
        "tested": outcome.tested,
        # Tested events whose title had never appeared before: a miss for every model.
        "unreachable": outcome.unreachable,
        "titles_seen": outcome.titles_seen,
        "seconds": round(outcome.seconds, 3),
        "models": {c.name: c.board.summary(outcome.titles_seen) for c in outcome.contenders},
        # Mean wall time per call, microseconds, measured during this run.
        "cost_us": {
            c.name: {
                "learn_one": round(1e6 * c.learn_seconds / max(c.learned, 1), 1),
                "rank": round(1e6 * c.score_seconds / max(c.scored, 1), 1),
            }
            for c in outcome.contenders
        },
        # Recall of every model against popularity's, and of the product against every
        # other model, test by test: the ratio and difference with 95% intervals from a
        # bootstrap over users (streamrec.evaluation.compare).
        "comparisons": comparisons({c.name: c.board.hits for c in outcome.contenders},
                                   outcome.tested_users, subject=PRODUCT,
                                   baseline="popularity", seed=protocol.get("seed", 0)),
    }


def table(report: dict[str, Any], k: int) -> str:
    """The readable stdout table: one row per model, best recall first."""
    keys = [m.format(k=k) for m in METRIC_ORDER]
    models = sorted(report["models"].items(), key=lambda kv: -kv[1][keys[0]])
    width = max(len("model"), *(len(name) for name in report["models"]))
    base = report["models"].get("popularity", {}).get(keys[0])
    lines = [
        f"{report['tested']} of {report['positives']} positive events tested "
        f"({report['unreachable']} of them a title's first appearance, a miss for every "
        f"model; {report['events']} events, {report['titles_seen']} titles) "
        f"in {report['seconds']:.1f}s",
        "  ".join([f"{'model':<{width}}", *(f"{key:>10}" for key in keys), f"{'vs pop':>7}",
                   f"{'95% interval':>12}"]),
    ]
    compared = report.get("comparisons", {})
    for name, metrics in models:
        ratio = (f"{metrics[keys[0]] / base:6.2f}x" if base else f"{'-':>7}")
        interval = (compared.get(f"{name} vs popularity") or {}).get("ratio_ci95")
        cells = [f"{metrics[key]:>10.4f}" for key in keys]
        lines.append("  ".join([f"{name:<{width}}", *cells, ratio,
                                f"{_span(interval):>12}"]).rstrip())
    rival = strongest_rival({name: m[keys[0]] for name, m in report["models"].items()},
                            PRODUCT)
    versus = compared.get(f"{PRODUCT} vs {rival}")
    if versus and versus["ratio"] is not None:
        lines.append(
            f"{PRODUCT} against the strongest other model, {rival}: {versus['ratio']:.2f}x "
            f"its {keys[0]} (95% interval {_span(versus['ratio_ci95'])}, resampling "
            f"{versus['users']} users); {versus['only_model']} tests only {PRODUCT} hit, "
            f"{versus['only_baseline']} only {rival}")
    return "\n".join(lines)


def _span(interval: list[float] | None) -> str:
    """``[low, high]`` as ``low-high`` (ratios, two decimals), ``-`` when there is none."""
    return f"{interval[0]:.2f}-{interval[1]:.2f}" if interval else "-"


def report_paths(folder: str) -> list[Path]:
    """The files :func:`write` writes into ``folder``."""
    return [Path(folder) / "report.json", Path(folder) / "report.png"]


def check_writable(path: Path) -> None:
    """Raise ``OSError`` unless a file can be written at ``path``, before any work is done.

    Missing parent directories are created, as :func:`write` and :func:`plot` create
    them, to prove they can be, then removed again with the file written to prove it:
    a run refused later (a bad input file) leaves nothing behind. An existing file is
    opened for appending and left unchanged.
    """
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "a directory is there", str(path))
    if path.exists():
        if path.is_file():
            with open(path, "ab"):
                pass
        return
    missing = []
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    try:
        for created in reversed(missing):
            created.mkdir()
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".streamrec-probe-"):
            pass
    finally:
        for created in missing:  # deepest first
            with contextlib.suppress(OSError):
                created.rmdir()


def write(report: dict[str, Any], outcome: Outcome, folder: str, k: int) -> list[str]:
    """Write ``report.json`` and ``report.png`` into ``folder``; the paths written."""
    json_path, png_path = report_paths(folder)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    plot(outcome, k, str(png_path), title=report["protocol"].get("file", ""))
    return [str(json_path), str(png_path)]


def plot(outcome: Outcome, k: int, path: str, title: str = "") -> None:
    """Rolling recall@k over the tested stream, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = max(50, outcome.tested // 40)
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    contenders = sorted(outcome.contenders, key=lambda c: -sum(c.board.hits))
    # Only full windows: the first few events alone would swing between 0 and 1.
    start = min(window, max(outcome.tested, 1)) - 1
    for c in contenders:
        width = 2.4 if c.name == "streamrec" else 1.2
        style = "--" if c.name in ("popularity", "random") else "-"
        rolling = rolling_mean(c.board.hits, window)[start:]
        ax.plot(np.arange(start, start + len(rolling)), rolling, label=c.name,
                linewidth=width, linestyle=style)
    ax.set_xlabel("tested positive event")
    ax.set_ylabel(f"recall@{k}, rolling mean over {window} events")
    ax.set_title(f"Prequential recall@{k}" + (f": {Path(title).name}" if title else ""))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8, ncol=2)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


class Progress:
    """A progress bar on a terminal; a plain line every 10% otherwise (logs, CI)."""

    def __init__(self, stream: TextIO | None = None, label: str = "evaluating") -> None:
        self.stream = stream or sys.stderr
        self.label = label
        self.tty = self.stream.isatty()
        self._started = time.perf_counter()
        self._last_decile = -1

    def __call__(self, done: int, total: int) -> None:
        share = done / total if total else 1.0
        elapsed = time.perf_counter() - self._started
        if self.tty:
            bar = "#" * int(30 * share)
            self.stream.write(f"\r{self.label} [{bar:<30}] {share:4.0%} {done}/{total} "
                              f"events {elapsed:5.1f}s")
            if done >= total:
                self.stream.write("\n")
            self.stream.flush()
            return
        decile = int(10 * share)
        if decile > self._last_decile:
            self._last_decile = decile
            self.stream.write(f"{self.label}: {share:.0%} ({done}/{total} events, "
                              f"{elapsed:.1f}s)\n")
            self.stream.flush()
