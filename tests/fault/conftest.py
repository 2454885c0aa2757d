"""Fault-injection fixtures: a broker and a persistent Redis that each test controls.

The session ``broker`` and ``redis_url`` fixtures are shared by every test, so a test
that takes them down would break the others. Fault tests get their own: an
:class:`~streamrec.broker.EmbeddedBroker` (whose broker-down API they may call) and a
private ``redis-server`` with an append-only file (``redis.kill()`` then
``restart_redis()`` keeps every acknowledged write), both on 127.0.0.1. The helpers the
tests share are in ``faultkit.py`` beside this file.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from faultkit import FaultCluster  # noqa: E402 - needs the path above


@pytest.fixture
def fault_cluster(tmp_path) -> Iterator[FaultCluster]:
    data_dir = tmp_path / "redis-data"
    data_dir.mkdir()
    cluster = FaultCluster(str(data_dir))
    yield cluster
    cluster.close()
