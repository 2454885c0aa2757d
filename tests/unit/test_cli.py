"""A user who makes a mistake gets one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import pytest

from streamrec.cli import main


def run(argv, capsys, monkeypatch, env=None):
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse exits for usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["demo", "--users", "0"], "--users must be a positive"),
        (["demo", "--events", "many"], "invalid int value"),
        (["demo", "--invalid-fraction", "2"], "--invalid-fraction"),
        (["broker", "--partitions", "0"], "--partitions must be positive"),
        (["broker", "--port", "99999"], "--port"),
        (["tail"], "KAFKA_BOOTSTRAP_SERVERS is not set"),
        (["recs", "u1"], "REDIS_URL is not set"),
        (["features", "u1"], "REDIS_URL is not set"),
        (["no-such-command"], "invalid choice"),
        # Output files are checked before the work, not after minutes of it.
        (["demo", "--report", "/nonexistent-dir/r.json"], "mkdir -p /nonexistent-dir"),
        (["demo", "--report", "/tmp"], "--report /tmp is a directory"),
        (["bench", "--mode", "core", "--report", "/nonexistent-dir/b.json"],
         "its directory /nonexistent-dir does not exist"),
        (["tail", "--max", "0"], "--max must be a positive whole number"),
    ],
)
def test_mistakes_get_one_line_and_nonzero_exit(argv, fragment, capsys, monkeypatch):
    code, _, err = run(argv, capsys, monkeypatch)
    assert code == 2
    assert fragment in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


@pytest.mark.parametrize(("argv", "prog"), [
    (["experiment", "report", "--bogus"], "streamrec experiment report"),
    (["worker", "--bogus"], "streamrec worker"),
    (["--bogus", "worker"], "streamrec"),
])
def test_an_unknown_option_points_at_its_commands_help(argv, prog, capsys, monkeypatch):
    # It said "(see streamrec --help)", whose page does not list any command's options.
    code, _, err = run(argv, capsys, monkeypatch)
    assert code == 2
    assert err == f"{prog}: error: unrecognized arguments: --bogus (see {prog} --help)\n"


def test_bad_environment_is_one_line(capsys, monkeypatch):
    code, _, err = run(["tail"], capsys, monkeypatch, {"STREAMREC_BATCH_SIZE": "x"})
    assert code == 2
    assert "STREAMREC_BATCH_SIZE" in err and len(err.strip().splitlines()) == 1


def test_help_lists_every_command(capsys, monkeypatch):
    code, out, _ = run(["--help"], capsys, monkeypatch)
    assert code == 0
    for command in ("broker", "worker", "simulate", "replay", "demo", "recs", "features"):
        assert command in out


def test_an_unreachable_cluster_is_one_line_not_librdkafkas_log(capfd):
    """`streamrec worker` with KAFKA_BOOTSTRAP_SERVERS naming no broker checks the topics
    first: that wait printed ~290 librdkafka reconnect lines before a
    ``KafkaError{code=_TRANSPORT,...}`` repr; the README promises one line and exit 1."""
    from streamrec.exceptions import BrokerUnavailable
    from streamrec.kafka import ensure_topics
    from streamrec.settings import Settings

    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    with pytest.raises(BrokerUnavailable) as raised:
        ensure_topics(settings, timeout_s=1.0)
    message = str(raised.value)
    assert message.startswith("Kafka at 127.0.0.1:1 did not answer within 1 s (")
    assert "is the broker running?" in message and "KafkaError{" not in message
    _, err = capfd.readouterr()
    assert "|FAIL|" not in err and "Connection refused" not in err, err
