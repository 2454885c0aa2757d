"""Settings come from the environment once, are validated, and keep secrets out of sight."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from streamrec.exceptions import ConfigError
from streamrec.settings import ENV_VARS, Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults_need_no_environment():
    settings = Settings.from_env({})
    assert settings.uses_embedded_broker and settings.uses_embedded_redis
    assert settings.topics.events == "events" and settings.topics.dlq == "events.dlq"


def test_every_variable_is_parsed():
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "k:9092", "REDIS_URL": "redis://r:6379/1",
        "STREAMREC_TOPIC_EVENTS": "ev", "STREAMREC_BATCH_SIZE": "250",
        "STREAMREC_CHECKPOINT_INTERVAL_S": "2.5", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_PASSWORD": "hunter2",
    }
    settings = Settings.from_env(env)
    assert settings.kafka_bootstrap_servers == "k:9092"
    assert settings.topics.events == "ev" and settings.topics.catalog == "catalog"
    assert settings.batch_size == 250 and settings.checkpoint_interval_s == 2.5
    assert settings.kafka_sasl_password.reveal() == "hunter2"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STREAMREC_BATCH_SIZE": "lots"}, "STREAMREC_BATCH_SIZE"),
        ({"STREAMREC_BATCH_SIZE": "0"}, "^STREAMREC_BATCH_SIZE must be a positive whole number"),
        ({"STREAMREC_SESSION_TIMEOUT_S": "1"}, "^STREAMREC_SESSION_TIMEOUT_S must be within 3"),
        ({"STREAMREC_LOG_LEVEL": "verbose"}, "^STREAMREC_LOG_LEVEL must be one of DEBUG, INFO"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL must start with"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"STREAMREC_METRICS_PORT": "70000"}, "^STREAMREC_METRICS_PORT must be 0..65535"),
    ],
)
def test_bad_values_say_which_variable_and_how_to_fix(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_secrets_never_show_in_repr_or_logs(caplog):
    settings = Settings.from_env({"KAFKA_SASL_PASSWORD": "hunter2",
                                  "REDIS_PASSWORD": "s3cret"})
    assert "hunter2" not in repr(settings) and "s3cret" not in repr(settings)
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("settings %s %s", settings, settings.redis_password)
    assert "hunter2" not in caplog.text and "s3cret" not in caplog.text


def test_readme_documents_every_environment_variable():
    text = README.read_text()
    section = text.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", section))
    assert set(ENV_VARS) <= documented, sorted(set(ENV_VARS) - documented)


def test_child_processes_get_exactly_the_same_settings():
    from streamrec.runtime import child_environment

    settings = Settings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": "k:1", "REDIS_URL": "redis://x:1/0", "STREAMREC_TOP_N": "7",
        "STREAMREC_TOPIC_DLQ": "dead", "KAFKA_SASL_PASSWORD": "pw",
    })
    env = child_environment(settings, {"PATH": "/bin", "REDIS_URL": "redis://stale:1/0"})
    assert Settings.from_env(env) == settings
    assert env["PATH"] == "/bin"


def test_a_bad_log_level_stops_a_command_with_one_line(monkeypatch, capsys):
    from streamrec.cli import main

    monkeypatch.setenv("STREAMREC_LOG_LEVEL", "verbose")
    assert main(["recs", "nobody"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "STREAMREC_LOG_LEVEL must be one of" in err
