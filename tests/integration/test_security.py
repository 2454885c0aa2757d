"""Secrets stay secret (logs, metrics, error messages) and /metrics binds where it is told.

A private redis-server that requires a password stands in for a secured Redis; the
embedded broker does not speak SASL, so the Kafka password is set (passed to every
client) but only checked for never being shown.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator

import orjson
import pytest
from confluent_kafka import Producer

from streamrec.redis_conn import redis_server_binary
from streamrec.runtime import child_environment
from streamrec.settings import Secret

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REDIS_SECRET = f"redis-pw-{uuid.uuid4().hex}"
KAFKA_SECRET = f"kafka-pw-{uuid.uuid4().hex}"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def secured_redis(tmp_path_factory) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--requirepass", REDIS_SECRET, "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port
    process.terminate()
    process.wait(10)


def run_cli(args: list[str], env: dict[str, str], timeout_s: float = 60
            ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamrec.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout_s)


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REDIS_", "KAFKA_", "STREAMREC_"))}
    env.update(extra)
    return env


@pytest.mark.parametrize("how", ["url", "url-query", "variable"])
def test_a_wrong_redis_password_is_one_line_without_the_secret(secured_redis, how):
    wrong = f"wrong-{uuid.uuid4().hex}"
    url = f"redis://127.0.0.1:{secured_redis}/0"
    env = {"url": base_env(REDIS_URL=f"redis://:{wrong}@127.0.0.1:{secured_redis}/0"),
           "url-query": base_env(REDIS_URL=f"{url}?password={wrong}"),
           "variable": base_env(REDIS_URL=url, REDIS_PASSWORD=wrong)}[how]
    result = run_cli(["features", "someone", "--json"], env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "password" in lines[0].lower()  # says what is wrong ...
    assert wrong not in result.stderr + result.stdout  # ... without showing it


def test_a_worker_with_a_wrong_password_stops_with_one_line(secured_redis, make_settings):
    # Its topics exist on the broker (make_settings creates them), so what stops it is
    # the password: with the default app id's topics missing, this test passed on the
    # broker's refusal to create them instead.
    wrong = f"wrong-{uuid.uuid4().hex}"
    settings = make_settings(
        redis_url=Secret(f"redis://:{wrong}@127.0.0.1:{secured_redis}/0"),
        kafka_sasl_password=Secret(KAFKA_SECRET), metrics_port=0)
    result = run_cli(["worker"], child_environment(settings, base_env()))
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "password" in result.stderr.lower()
    assert wrong not in output and KAFKA_SECRET not in output


def test_a_running_worker_never_shows_its_secrets_and_binds_metrics_where_told(
        secured_redis, make_settings, tmp_path):
    settings = make_settings(
        redis_url=Secret(f"redis://:{REDIS_SECRET}@127.0.0.1:{secured_redis}/0"),
        kafka_sasl_password=Secret(KAFKA_SECRET), metrics_host="127.0.0.2",
        metrics_port=free_port("127.0.0.2"), log_level="DEBUG")
    env = child_environment(settings, base_env())
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "streamrec.cli", "worker"], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        chosen = f"http://127.0.0.2:{settings.metrics_port}/metrics"
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline and "streamrec_pipeline_up 1.0" not in text:
            try:
                text = urllib.request.urlopen(chosen, timeout=2).read().decode()
            except OSError:
                time.sleep(0.3)
        assert "streamrec_pipeline_up 1.0" in text, log_path.read_text()[-2000:]
        with pytest.raises(OSError):  # not on the other loopback address
            urllib.request.urlopen(f"http://127.0.0.1:{settings.metrics_port}/metrics",
                                   timeout=2)
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
        for i in range(50):
            event = {"event_id": f"sec-{i}", "type": "play", "user_id": f"sec-u{i % 5}",
                     "ts": time.time(), "title_id": f"t{i % 7}", "position_s": 0.0}
            producer.produce(settings.topics.events, orjson.dumps(event), b"k")
        producer.produce(settings.topics.events, b"{broken", b"k")
        producer.flush()
        while time.monotonic() < deadline and "streamrec_events_consumed_total" not in text:
            time.sleep(0.3)
        time.sleep(2)
        text = urllib.request.urlopen(chosen, timeout=2).read().decode()
        worker.send_signal(__import__("signal").SIGTERM)
        assert worker.wait(60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    output = log_path.read_text(errors="replace")
    assert "streams.pipeline" in output  # the log is the worker's, at DEBUG
    for secret in (REDIS_SECRET, KAFKA_SECRET):
        assert secret not in output
        assert secret not in text
