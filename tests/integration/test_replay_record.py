"""simulate, replay and record against the Kafka-protocol broker over TCP: round trips
that reproduce every record, catalogue keys, paced gaps, a broker that goes away
mid-replay or mid-recording, records the broker dropped before ``record`` could read
them, and ``record``'s usage mistakes and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from producers.simulator import generate_events, generate_world
from streamrec.broker import EmbeddedBroker
from streamrec.cli import main
from streamrec.runtime import child_environment
from streamrec.schema import decode_event

pytestmark = pytest.mark.integration


def run_cli(argv, capsys, monkeypatch, settings=None):
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    if settings is not None:
        for name, value in child_environment(settings, {}).items():
            monkeypatch.setenv(name, value)
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def consume_all(bootstrap, topic, expected, partitions, guard_s=20.0):
    """Every record of ``topic`` from the beginning, waiting (at most ``guard_s``, a
    hang guard, not a figure under test) for ``expected`` of them."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    records = []
    deadline = time.monotonic() + guard_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.2):
                if msg.error() is None:
                    records.append(msg)
    finally:
        consumer.close()
    return records


def simulated_file(path, n_events, invalid_fraction=0.0, seed=1):
    world = generate_world(40, 60, seed=seed)
    invalid = 0
    with open(path, "wb") as handle:
        for record in generate_events(world, n_events, seed=seed,
                                      invalid_fraction=invalid_fraction):
            if isinstance(record, bytes):
                invalid += 1
                handle.write(record + b"\n")
            else:
                handle.write(orjson.dumps(record) + b"\n")
    return str(path), world, invalid


def test_replay_then_record_reproduces_the_same_records(make_settings, tmp_path, capsys,
                                                        monkeypatch):
    settings = make_settings()
    source, _, invalid = simulated_file(tmp_path / "sim.jsonl", 3000, invalid_fraction=0.02)
    report = tmp_path / "report.json"
    code, out, err = run_cli(["replay", source, "--report", str(report)], capsys, monkeypatch,
                             settings)
    assert code == 0, err
    summary = json.loads(report.read_text())
    assert summary["read"] == 3000 and summary["invalid"] == invalid > 0
    assert summary["produced"] == 3000 - invalid and summary["failed"] == 0
    assert err.count("invalid record") == invalid

    recording = tmp_path / "recorded.jsonl"
    code, out, err = run_cli(["record", "--out", str(recording), "--from-beginning",
                              "--until-idle", "1", "--expect", source], capsys, monkeypatch,
                             settings)
    assert code == 0, err
    assert f"identical to {source}: {3000 - invalid:,} records" in out
    # The recording is itself a replayable events file: the very same lines, by key.
    original = [line for line in open(source, "rb").read().splitlines()
                if _valid(line)]
    assert sorted(recording.read_bytes().splitlines()) == sorted(original)


def _valid(line):
    try:
        decode_event(line)
    except ValueError:
        return False
    return True


def test_foreign_keys_and_odd_values_survive_record_then_replay(make_settings, tmp_path,
                                                               capsys, monkeypatch):
    first, second = make_settings(), make_settings()
    producer = Producer({"bootstrap.servers": first.kafka_bootstrap_servers})
    values = [orjson.dumps({"event_id": f"e{i}", "type": "click", "user_id": "u1",
                            "ts": 1.7e9 + i, "title_id": "t1"}) for i in range(6)]
    for i, value in enumerate(values):
        producer.produce(first.topics.events, value, "session-7" if i % 2 else "u1")
    producer.produce(first.topics.events, b"not json at all", b"\xff\xfe")
    producer.flush(10)

    recording = tmp_path / "first.jsonl"
    code, out, _ = run_cli(["record", "--out", str(recording), "--from-beginning",
                            "--until-idle", "1"], capsys, monkeypatch, first)
    assert code == 0 and "7 records" in out and "4 as wrapper lines" in out

    code, _, err = run_cli(["replay", str(recording)], capsys, monkeypatch, second)
    assert code == 0  # the non-JSON record is reported invalid, not sent
    assert "invalid record (invalid_json)" in err
    records = consume_all(second.kafka_bootstrap_servers, second.topics.events, 6, 4)
    by_key = {}
    for msg in sorted(records, key=lambda m: (m.partition(), m.offset())):
        by_key.setdefault(msg.key(), []).append(msg.value())
    assert by_key == {b"u1": values[0::2], b"session-7": values[1::2]}


def test_record_keeps_a_tombstone_as_a_wrapper_line(make_settings, tmp_path, capsys,
                                                    monkeypatch):
    settings = make_settings()
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    event = orjson.dumps({"event_id": "e1", "type": "click", "user_id": "u1",
                          "ts": 1.7e9, "title_id": "t1"})
    producer.produce(settings.topics.events, event, b"u1", partition=0)
    producer.produce(settings.topics.events, None, b"u1", partition=0)  # a tombstone
    producer.flush(10)

    recording = tmp_path / "tombstone.jsonl"
    code, out, _ = run_cli(["record", "--out", str(recording), "--from-beginning",
                            "--until-idle", "1"], capsys, monkeypatch, settings)
    assert code == 0 and "2 records" in out and "1 as wrapper lines" in out
    bare, wrapper = recording.read_bytes().splitlines()
    assert bare == event
    assert orjson.loads(wrapper) | {"timestamp_ms": None} == {
        "__record__": 1, "topic": settings.topics.events, "partition": 0, "offset": 1,
        "timestamp_ms": None, "key": "u1", "value": None}


def test_catalogue_replay_is_validated_and_keyed_by_title(make_settings, tmp_path, capsys,
                                                        monkeypatch):
    settings = make_settings()
    out = tmp_path / "sim.jsonl"
    code, _, _ = run_cli(["simulate", "--users", "5", "--titles", "25", "--events", "10",
                          "--out", str(out)], capsys, monkeypatch)
    assert code == 0
    catalogue = tmp_path / "sim.catalog.jsonl"
    code, _, err = run_cli(["replay", str(catalogue), "--topic", settings.topics.catalog],
                           capsys, monkeypatch, settings)
    assert code == 0, err
    records = consume_all(settings.kafka_bootstrap_servers, settings.topics.catalog, 25, 4)
    assert len(records) == 25
    assert all(orjson.loads(m.value())["title_id"] == m.key().decode() for m in records)
    # Viewer events are not catalogue events: sent to the catalogue topic, all invalid.
    code, out, err = run_cli(["replay", str(out), "--topic", settings.topics.catalog],
                             capsys, monkeypatch, settings)
    assert code == 0 and "produced 0" in out and err.count("(unknown_type)") == 10


def test_paced_replay_keeps_order_and_the_gaps_between_bursts(make_settings, tmp_path,
                                                            capsys, monkeypatch):
    settings = make_settings()
    # Three bursts of 20 events, 10 s of event time apart; at speed 20 that is 0.5 s.
    lines = [{"event_id": f"p{b}-{i}", "type": "click", "user_id": f"u{i % 3}",
              "ts": 1.7e9 + 10 * b + i * 0.001, "title_id": "t1"}
             for b in range(3) for i in range(20)]
    path = tmp_path / "paced.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    report = tmp_path / "r.json"
    code, out, err = run_cli(["replay", str(path), "--speed", "20", "--report", str(report)],
                             capsys, monkeypatch, settings)
    assert code == 0, err
    summary = json.loads(report.read_text())
    assert summary["produced"] == 60 and set(summary["lateness_ms"]) >= {"p50", "p99", "max"}
    assert "lateness against the schedule" in out
    records = consume_all(settings.kafka_bootstrap_servers, settings.topics.events, 60, 4)
    sent_at = {orjson.loads(m.value())["event_id"]: m.timestamp()[1] / 1000 for m in records}
    # Per-key order is the file's order.
    for user in ("u0", "u1", "u2"):
        keyed = sorted((m for m in records if m.key() == user.encode()),
                       key=lambda m: (m.partition(), m.offset()))
        ids = [orjson.loads(m.value())["event_id"] for m in keyed]
        assert ids == [line["event_id"] for line in lines if line["user_id"] == user]
    # The gap between bursts is kept, loosely: a slow machine can only make it longer.
    for burst in (1, 2):
        gap = sent_at[f"p{burst}-0"] - sent_at[f"p{burst - 1}-19"]
        assert gap >= 0.25, gap


@pytest.fixture
def own_broker():
    """A broker this test may take down without disturbing the others."""
    broker = EmbeddedBroker(partitions=2).start()
    yield broker
    broker.set_up()
    broker.stop()


def _settings_on(broker, make_settings_like):
    from streamrec.settings import Settings, Topics

    topics = Topics(events=f"events-{uuid.uuid4().hex[:6]}")
    broker.create_topics(topics.all())
    return Settings(kafka_bootstrap_servers=broker.bootstrap_servers, topics=topics,
                    partitions=broker.partitions, metrics_port=0)


@pytest.mark.timeout(60)
def test_broker_gone_mid_replay_fails_clearly_with_the_delivered_count(own_broker, tmp_path,
                                                                      capsys, monkeypatch):
    settings = _settings_on(own_broker, None)
    source, _, _ = simulated_file(tmp_path / "sim.jsonl", 20_000)

    def take_down_once_records_arrive():
        probe = Consumer({"bootstrap.servers": own_broker.bootstrap_servers,
                          "group.id": uuid.uuid4().hex})
        try:
            for _ in range(200):
                stored = sum(probe.get_watermark_offsets(
                    TopicPartition(settings.topics.events, p), timeout=2)[1] for p in (0, 1))
                if stored >= 500:
                    break
                time.sleep(0.02)
        finally:
            probe.close()
        own_broker.set_down()

    saboteur = threading.Thread(target=take_down_once_records_arrive, daemon=True)
    saboteur.start()
    report = tmp_path / "r.json"
    code, _, err = run_cli(["replay", source, "--rate", "4000", "--delivery-timeout", "1",
                            "--report", str(report)], capsys, monkeypatch, settings)
    saboteur.join(timeout=30)
    assert code == 1, err
    assert report.exists(), err
    summary = json.loads(report.read_text())
    assert summary["failed"] > 0 and summary["produced"] > 0
    assert summary["read"] == summary["produced"] + summary["failed"] + summary["invalid"] \
        + summary["skipped"]
    assert summary["read"] < 20_000  # it stopped reading instead of queueing everything
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err
    assert f"{summary['produced']:,} of {summary['produced'] + summary['failed']:,} sent " \
           "were delivered" in errors[0]


@pytest.mark.timeout(60)
def test_unreachable_broker_is_one_line(tmp_path, capsys, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "e.jsonl"
    path.write_bytes(orjson.dumps({"event_id": "e", "type": "click", "user_id": "u",
                                   "ts": 1.7e9, "title_id": "t"}) + b"\n")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")
    try:
        code = main(["replay", str(path), "--delivery-timeout", "1"])
    except SystemExit as exc:
        code = exc.code
    _, err = capsys.readouterr()
    assert code == 1
    assert "did not answer" in err and len(err.strip().splitlines()) == 1


@pytest.mark.timeout(60)
def test_record_reports_records_the_broker_dropped(tmp_path, capsys, monkeypatch):
    # One partition, 8 MiB of incompressible records: the mock keeps only about 5 MiB.
    with EmbeddedBroker(partitions=1) as broker:
        settings = _settings_on(broker, None)
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers,
                             "compression.type": "none"})
        count = 128
        for i in range(count):
            producer.produce(settings.topics.events, os.urandom(64 * 1024), f"k{i}")
        assert producer.flush(30) == 0
        recording = tmp_path / "rec.jsonl"
        code, out, err = run_cli(["record", "--out", str(recording), "--from-beginning",
                                  "--until-idle", "0.5"], capsys, monkeypatch, settings)
    assert code == 1
    assert "were gone before they could be read" in err and "incomplete" in err
    lost = int(err.split("error: ")[1].split(" records")[0].replace(",", ""))
    recorded = len(recording.read_bytes().splitlines())
    assert lost > 0 and recorded + lost == count
    assert f"(partition 0: {lost:,})" in err  # readable, not a Python dict


@pytest.mark.timeout(60)
def test_broker_gone_mid_recording_fails_and_says_the_file_is_incomplete(
        own_broker, tmp_path, capsys, monkeypatch):
    settings = _settings_on(own_broker, None)
    # log_level 0: this producer's reconnect failures after the outage are not news.
    producer = Producer({"bootstrap.servers": own_broker.bootstrap_servers, "log_level": 0})
    for i in range(200):
        producer.produce(settings.topics.events, orjson.dumps({"n": i}), f"k{i}")
    assert producer.flush(10) == 0
    recording = tmp_path / "dying.jsonl"

    def take_down_once_recording():
        deadline = time.monotonic() + 30  # a hang guard
        while not recording.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        own_broker.set_down()

    # Waiting longer for the broker than for an idle topic: an outage taken for idleness
    # would end the run with exit 0 first.
    monkeypatch.setattr("consumers.common.BROKER_GONE_S", 3.0)
    saboteur = threading.Thread(target=take_down_once_recording, daemon=True)
    saboteur.start()
    code, out, err = run_cli(["record", "--out", str(recording), "--from-beginning",
                              "--until-idle", "2"], capsys, monkeypatch, settings)
    saboteur.join(timeout=30)
    assert code == 1, (out, err)
    assert out == "" and "Traceback" not in err and len(err.strip().splitlines()) == 1
    written = len(recording.read_bytes().splitlines())
    assert "went away" in err and "is the broker running?" in err
    assert f"{recording} holds the {written:,} records read before and is incomplete" in err


def test_record_refuses_to_overwrite_the_file_it_checks_against(make_settings, tmp_path,
                                                                capsys, monkeypatch):
    settings = make_settings()
    source, _, _ = simulated_file(tmp_path / "sim.jsonl", 50)
    original = open(source, "rb").read()
    link = tmp_path / "link.jsonl"
    link.symlink_to(source)
    for out in (str(tmp_path / "." / "sim.jsonl"), str(link)):
        code, stdout, err = run_cli(["record", "--out", out, "--expect", source,
                                     "--from-beginning", "--until-idle", "0.5"],
                                    capsys, monkeypatch, settings)
        assert code == 2, (stdout, err)
        assert stdout == "" and len(err.strip().splitlines()) == 1
        assert "--out and --expect name the same file" in err
        assert open(source, "rb").read() == original


@pytest.mark.timeout(60)
def test_ctrl_c_while_record_connects_is_an_interruption(tmp_path):
    # A listener that never answers: record is connecting for as long as it waits.
    expected = tmp_path / "expected.jsonl"
    expected.write_bytes(orjson.dumps({"event_id": "e", "type": "click", "user_id": "u",
                                       "ts": 1.7e9, "title_id": "t"}) + b"\n")
    recording = tmp_path / "rec.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS",
                                                           "REDIS_URL")}
    # A shell may start background jobs with SIGINT ignored; the child must get Ctrl-C.
    script = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
              " from streamrec.cli import main; sys.exit(main())")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(30)  # a hang guard
        env["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{silent.getsockname()[1]}"
        child = subprocess.Popen(
            [sys.executable, "-c", script, "record", "--out", str(recording), "--expect",
             str(expected)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            connection, _ = silent.accept()  # it is connecting now
            child.send_signal(signal.SIGINT)
            out, err = child.communicate(timeout=30)
            connection.close()
        finally:
            child.kill()
    assert child.returncode == 130, (out, err)
    assert out == b"" and err.decode().strip() == "streamrec record: interrupted"
    assert not recording.exists()


@pytest.mark.timeout(60)
def test_record_with_no_broker_is_one_readable_line(tmp_path, capsys, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr("consumers.common.METADATA_TIMEOUT_S", 1.0)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")
    recording = tmp_path / "rec.jsonl"
    try:
        code = main(["record", "--out", str(recording)])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "KafkaError{" not in err
    assert f"Kafka at 127.0.0.1:{port} did not answer within 1 s" in err
    assert "is the broker running?" in err
    assert not recording.exists()


def test_simulate_to_kafka_sends_catalogue_then_keyed_events(make_settings, capsys,
                                                             monkeypatch):
    settings = make_settings()
    code, out, err = run_cli(["simulate", "--users", "20", "--titles", "30", "--events",
                              "400", "--invalid-fraction", "0.05"], capsys, monkeypatch,
                             settings)
    assert code == 0, err
    titles = consume_all(settings.kafka_bootstrap_servers, settings.topics.catalog, 30, 4)
    assert sorted(m.key().decode() for m in titles) == sorted(f"t{i}" for i in range(30))
    events = consume_all(settings.kafka_bootstrap_servers, settings.topics.events, 400, 4)
    assert len(events) == 400
    invalid = 0
    for msg in events:
        try:
            event = decode_event(msg.value())
        except ValueError:
            invalid += 1
            assert msg.key() is None
            continue
        assert msg.key().decode() == event["user_id"]
    assert invalid > 0 and f"({invalid:,} deliberately invalid)" in out


@pytest.mark.timeout(180)
def test_simulate_says_what_the_embedded_broker_dropped_unread(tmp_path, capsys,
                                                              monkeypatch):
    # 150,000 simulated events into one partition, no worker: about a quarter do not fit
    # in its 5 MiB. Before, simulate said all were produced and exited 0.
    with EmbeddedBroker(partitions=1) as broker:
        settings = _settings_on(broker, None)
        code, out, err = run_cli(["simulate", "--users", "500", "--titles", "300",
                                  "--events", "150000"], capsys, monkeypatch, settings)
        probe = Consumer({"bootstrap.servers": broker.bootstrap_servers,
                          "group.id": uuid.uuid4().hex})
        low, high = probe.get_watermark_offsets(TopicPartition(settings.topics.events, 0),
                                                timeout=5)
        probe.close()
    assert high == 150_000 and low > 0
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"streamrec simulate: error: the embedded broker dropped {low:,} records of "
        f"'{settings.topics.events}' that no worker had read (it keeps 5 MiB per partition "
        f"and drops the oldest); run `streamrec worker` while producing, or start the "
        f"broker with more --partitions")


def test_simulate_without_a_broker_warns_that_the_data_is_ephemeral(capsys, monkeypatch):
    code, out, err = run_cli(["simulate", "--users", "3", "--titles", "4", "--events", "20"],
                             capsys, monkeypatch)
    assert code == 0
    assert "lives only as long as the process" in err
    assert "20 events" in out


@pytest.mark.timeout(90)
def test_sigterm_stops_a_paced_simulate_with_every_sent_event_delivered_and_counted(
        make_settings, tmp_path):
    # `docker compose stop` sends SIGTERM: the events already sent must reach the broker
    # and the summary must count them, as on Ctrl-C (Python's default dies at once,
    # dropping librdkafka's queue and printing nothing).
    settings = make_settings()
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS",
                                                           "REDIS_URL")}
    env.update(child_environment(settings, {}))
    child = subprocess.Popen(
        [sys.executable, "-m", "streamrec.cli", "simulate", "--users", "50", "--titles",
         "40", "--rate", "500", "--duration", "120"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Events are flowing once the catalogue is on its topic.
        assert len(consume_all(settings.kafka_bootstrap_servers, settings.topics.catalog,
                               40, 4, guard_s=30)) == 40
        time.sleep(1.0)
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 143, (out, err)
    assert err.decode().strip().endswith("streamrec simulate: terminated"), err
    produced = int(out.decode().split(" and ")[1].split(" events")[0].replace(",", ""))
    assert 0 < produced < 500 * 120
    events = consume_all(settings.kafka_bootstrap_servers, settings.topics.events,
                         produced + 1, 4, guard_s=5)
    assert len(events) == produced


@pytest.mark.timeout(60)
def test_sigterm_stops_a_paced_replay_with_its_summary_and_report(make_settings, tmp_path):
    path, _, _ = simulated_file(tmp_path / "e.jsonl", 400)
    report = tmp_path / "r.json"
    settings = make_settings()
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS",
                                                           "REDIS_URL")}
    env.update(child_environment(settings, {}))
    child = subprocess.Popen(
        [sys.executable, "-m", "streamrec.cli", "replay", path, "--rate", "100", "--report",
         str(report)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert consume_all(settings.kafka_bootstrap_servers, settings.topics.events, 1, 4,
                           guard_s=30)
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=40)
    finally:
        child.kill()
    assert child.returncode == 143, (out, err)
    summary = json.loads(report.read_text())
    assert summary["stopped"] == "terminated" and 0 < summary["produced"] < 400
    assert summary["read"] == summary["produced"] + summary["invalid"] + summary["skipped"] \
        + summary["failed"]
    events = consume_all(settings.kafka_bootstrap_servers, settings.topics.events,
                         summary["produced"] + 1, 4, guard_s=5)
    assert len(events) == summary["produced"]


def _wide_events(path, count):
    """``count`` valid events of ~1.1 KB each that lz4 can hardly shrink."""
    with open(path, "wb") as handle:
        for i in range(count):
            handle.write(orjson.dumps({
                "event_id": f"w{i}", "type": "click", "user_id": f"u{i % 50}",
                "ts": 1.7e9 + i, "title_id": "t1", "pad": os.urandom(500).hex()}) + b"\n")
    return path


@pytest.mark.timeout(120)
def test_replay_says_what_the_embedded_broker_dropped_unread(tmp_path, capsys, monkeypatch):
    # No worker: 12,000 records of ~1.1 KB into one partition, which keeps about 5 MiB.
    # Before, replay said all 12,000 were produced and exited 0.
    count = 12_000
    path = _wide_events(tmp_path / "wide.jsonl", count)
    with EmbeddedBroker(partitions=1) as broker:
        settings = _settings_on(broker, None)
        report = tmp_path / "r.json"
        code, _, err = run_cli(["replay", str(path), "--report", str(report)], capsys,
                               monkeypatch, settings)
        probe = Consumer({"bootstrap.servers": broker.bootstrap_servers,
                          "group.id": uuid.uuid4().hex})
        low, high = probe.get_watermark_offsets(TopicPartition(settings.topics.events, 0),
                                                timeout=5)
        probe.close()
    summary = json.loads(report.read_text())
    assert high == count and low > 0  # the broker did drop the oldest
    assert code == 1
    assert summary["dropped"] == low
    errors = [line for line in err.splitlines() if "error:" in line]
    assert errors == [errors[0]] and f"dropped {low:,} records" in errors[0]
    assert "streamrec worker" in errors[0] and "Traceback" not in err


@pytest.mark.timeout(120)
def test_replay_waits_for_a_slow_worker_instead_of_letting_the_broker_drop_events(
        tmp_path, capsys, monkeypatch):
    # One partition of the embedded broker keeps about 5 MiB; 12,000 records of ~1.1 KB
    # that lz4 cannot shrink much are more than twice that. A "worker" (the worker's
    # consumer group) reads slowly and commits as it goes: before the fix replay ran
    # ahead, the broker dropped records the worker had not read and replay still said
    # every one was produced.
    from streamrec.settings import Settings, Topics

    count = 12_000
    path = _wide_events(tmp_path / "wide.jsonl", count)
    with EmbeddedBroker(partitions=1) as broker:
        topics = Topics(events=f"events-{uuid.uuid4().hex[:6]}")
        broker.create_topics(topics.all())
        settings = Settings(kafka_bootstrap_servers=broker.bootstrap_servers, topics=topics,
                            partitions=1, app_id=f"slow-{uuid.uuid4().hex[:6]}",
                            metrics_port=0)
        worker = Consumer({"bootstrap.servers": broker.bootstrap_servers,
                           "group.id": f"{settings.app_id}-events",
                           "enable.auto.commit": False})
        start = TopicPartition(topics.events, 0, 0)
        worker.commit(offsets=[start], asynchronous=False)  # a worker that has started
        worker.assign([start])
        offsets: list[int] = []

        def consume_slowly():
            deadline = time.monotonic() + 90  # a hang guard, not a figure under test
            while len(offsets) < count and time.monotonic() < deadline:
                batch = [m for m in worker.consume(200, 0.1) if m.error() is None]
                offsets.extend(m.offset() for m in batch)
                if batch:
                    worker.commit(offsets=[TopicPartition(topics.events, 0,
                                                          batch[-1].offset() + 1)],
                                  asynchronous=False)
                time.sleep(0.05)

        reader = threading.Thread(target=consume_slowly, daemon=True)
        reader.start()
        report = tmp_path / "r.json"
        code, out, err = run_cli(["replay", str(path), "--report", str(report)], capsys,
                                 monkeypatch, settings)
        reader.join(timeout=100)
        worker.close()
    summary = json.loads(report.read_text())
    assert code == 0, err
    assert summary["produced"] == count
    # Every record reached the worker: none dropped before it read them, none twice.
    assert offsets == list(range(count))
    assert summary["waits_for_worker"] >= 1 and summary["dropped"] == 0
    assert "waiting for the worker: " in err and "Traceback" not in err
    assert "paused" in out
