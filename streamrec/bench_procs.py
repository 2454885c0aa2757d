"""The worker processes ``streamrec bench`` starts and watches (Linux ``/proc``)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

from streamrec.bench_report import metric_sum, parse_metrics
from streamrec.exceptions import StreamrecError

# How long workers may take to start, load the catalogue and join the group, seconds.
WORKER_START_TIMEOUT_S = 90.0
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


class Worker:
    """One ``streamrec worker`` child process with its own /metrics port."""

    def __init__(self, env: dict[str, str], log_path: str) -> None:
        self.port = free_port()
        env = {**env, "STREAMREC_METRICS_PORT": str(self.port)}
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streamrec.cli", "worker"], env=env,
                stdout=log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.process.pid

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            return parse_metrics(response.read().decode())

    def handled(self, metrics: dict[str, list[tuple[dict[str, str], float]]]) -> float:
        return (metric_sum(metrics, "streamrec_events_consumed_total")
                + metric_sum(metrics, "streamrec_events_dead_lettered_total")
                + metric_sum(metrics, "streamrec_events_duplicate_total"))

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StreamrecError(f"a worker exited during start-up; see {self.log_path}")
            with contextlib.suppress(OSError):
                if metric_sum(self.metrics(), "streamrec_pipeline_up") >= 1:
                    return
            time.sleep(0.1)
        raise StreamrecError(f"a worker did not start within {WORKER_START_TIMEOUT_S:.0f}s; "
                             f"see {self.log_path}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def running_workers(env: dict[str, str], count: int, logs: str, name: str
                    ) -> Iterator[list[Worker]]:
    """Start ``count`` workers, wait until each consumes, stop them all on exit."""
    started = [Worker(env, f"{logs}/{name}-{i}.log") for i in range(count)]
    try:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        for worker in started:
            worker.wait_ready(deadline)
        yield started
    finally:
        for worker in started:
            worker.stop()
