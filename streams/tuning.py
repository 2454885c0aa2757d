"""Process-level settings the hot path needs, applied when ``streamrec worker`` starts.

Two measured problems, both outside Python:

* **OpenBLAS threads.** numpy's OpenBLAS starts one thread per core, and they spin while
  waiting for work; on the hot path's small matrix products that doubled CPU per event.
  One thread is right for a worker (scale out with processes, one per core).
* **glibc's malloc returning memory after every batch.** Each batch allocates a few dense
  arrays of 1-10 MB (users x candidates). glibc serves such sizes with ``mmap`` and gives
  them back on ``free``, so every batch paid page faults to map the same memory again:
  an ``(u @ x.T + b).astype(float64)`` over 288 users x 1,000 titles took 2.4 ms instead
  of 0.28 ms. Raising the mmap and trim thresholds keeps that memory in the heap for the
  next batch; the cost is that the worker's RSS stays at its high-water mark (tens of MB,
  bounded by the batch size, not by the number of users).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import sys

logger = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): 32 MiB, above a
# 1,000-user batch's largest array (4 x 1,000 x 1,000 float64 is 32 MB).
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
# Keep up to this much free memory at the top of the heap rather than returning it.
TRIM_THRESHOLD_BYTES = 128 * 1024 * 1024


def tune_process() -> dict[str, bool]:
    """Apply both settings if possible; returns which were applied (for logging/tests).

    ``OPENBLAS_NUM_THREADS`` only takes effect before numpy is imported, so this must run
    first thing in the worker; an explicit value in the environment is left alone.
    """
    applied = {"openblas_threads": False, "malloc": False}
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        applied["openblas_threads"] = True
    elif os.environ.get("OPENBLAS_NUM_THREADS") is None:
        logger.warning("numpy was imported before OPENBLAS_NUM_THREADS could be set; "
                       "set OPENBLAS_NUM_THREADS=1 for the worker")
    if sys.platform.startswith("linux"):
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
            return applied
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
        ok = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok
        applied["malloc"] = ok
    return applied


# The young generation's collection threshold (net new container objects: dicts, lists,
# tuples). CPython's default, 700, ran a collection every few hundred events' worth of the
# batch's dicts and lists, nearly all of them freed by reference counting anyway: in-process,
# 10,000 simulated events in 1,000-event batches (learn_and_rank with the product layer,
# start-up heap frozen) spent 3.5 us/event in 170 collections; at 20,000, none. Cyclic
# garbage still gets collected, just after more allocations.
GC_YOUNG_THRESHOLD = 20_000


def freeze_startup_heap() -> int:
    """Move every object alive now out of the cyclic garbage collector's sight, and
    collect the young generation less often (``GC_YOUNG_THRESHOLD``).

    Called once the worker has started (modules, faust, the catalogue and the restored
    models are loaded): those objects live as long as the process, yet every full
    (generation 2) collection walked them all again; measured in a paced worker, 4-5 such
    collections in 30 s took ~60 ms of CPU each (26-64 ms), every one a stall the lists
    of that moment waited for (3-4 ms each once frozen). Objects made later are still
    collected as before. Returns how many objects were frozen.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
    return gc.get_freeze_count()
