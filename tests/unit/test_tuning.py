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


FREEZE_SCRIPT = """
import gc
from streams.tuning import freeze_startup_heap
startup = [[i] for i in range(300_000)]  # what a started worker holds: models, catalogue
frozen = freeze_startup_heap()
later = []
later.append(later)  # a reference cycle made after start-up
del later
print(frozen >= 300_000, 300_000 > len(gc.get_objects()), gc.collect() >= 1)
collections = gc.get_stats()[0]["collections"]
batch = [{"user": i} for i in range(5_000)]  # a batch's dicts: no young collection
print(gc.get_stats()[0]["collections"] == collections)
"""


def test_start_up_objects_leave_full_collections_and_later_garbage_is_still_collected():
    # A full collection walked every start-up object: ~60 ms stalls in a paced worker;
    # young collections every 700 new containers cost ~3.5 us/event.
    out = subprocess.run([sys.executable, "-c", FREEZE_SCRIPT], capture_output=True,
                         text=True, check=True, timeout=60).stdout.split()
    assert out == ["True", "True", "True", "True"]
