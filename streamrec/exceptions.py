"""Every error streamrec raises on purpose derives from one root.

::

    StreamrecError
    ├── ConfigError            a setting or argument is wrong; the message says how to fix it
    ├── InvalidRecord          a streamed record broke its contract; ``reason`` is a short code
    ├── BrokerUnavailable      Kafka could not be reached or refused a request
    ├── StateStoreUnavailable  Redis could not be reached or refused a request
    └── EmbeddedServiceError   the embedded broker or Redis could not be started

Library errors are converted at the boundary (``raise BrokerUnavailable(...) from exc``)
so callers, and the CLI, only need to know this tree.
"""

from __future__ import annotations


class StreamrecError(Exception):
    """Root of every error streamrec raises deliberately."""


class ConfigError(StreamrecError, ValueError):
    """A setting or argument is invalid. The message names it and says how to fix it."""


class InvalidRecord(StreamrecError, ValueError):
    """A record that does not satisfy its message contract.

    Parameters
    ----------
    reason
        A short, low-cardinality code (used as a metric label and in the dead-letter
        record), e.g. ``"invalid_json"`` or ``"missing_field"``.
    detail
        One human-readable line saying what was wrong.

    Attributes
    ----------
    line_no
        The record's line in the file it was read from, when a reader sets it (None
        otherwise).
    """

    line_no: int | None = None

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class BrokerUnavailable(StreamrecError):
    """Kafka could not be reached, or a request to it failed."""


class StateStoreUnavailable(StreamrecError):
    """Redis could not be reached, or a command failed."""


class EmbeddedServiceError(StreamrecError):
    """The embedded broker or the embedded Redis server could not be started."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``docker compose stop``, ``kill``), raised where Ctrl-C's KeyboardInterrupt
    would be, so every command stops as cleanly as on Ctrl-C: what was sent is delivered
    and counted, files are closed whole; the exit status is then 143 instead of 130."""
