"""The worker's process tuning: one OpenBLAS thread, malloc that keeps batch memory."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import os, sys
os.environ.pop("OPENBLAS_NUM_THREADS", None)
from streams.tuning import tune_process
applied = tune_process()
import numpy
print(applied["openblas_threads"], applied["malloc"], os.environ["OPENBLAS_NUM_THREADS"])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tuning is Linux-only")
def test_a_fresh_worker_process_gets_one_blas_thread_and_tuned_malloc():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert out == ["True", "True", "1"]


def test_an_explicit_thread_count_is_kept(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    from streams.tuning import tune_process

    tune_process()
    import os

    assert os.environ["OPENBLAS_NUM_THREADS"] == "4"
