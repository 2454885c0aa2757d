"""Model checkpoints and the catalogue copy in Redis, so a restarted worker is not cold.

``sr:model:<app_id>`` holds a HASH: ``blob`` (the pickled model), ``version`` (a counter,
incremented on every save, continuing from the version restored), ``saved_at``,
``log_id`` (the position in the model log, ``streams.model_sync``, that the model
reflects exactly: the precise identity of a checkpoint when several workers save) and
``offsets`` (``topic[partition]`` -> the next events offset the model has learned).
``sr:catalog:<app_id>`` holds title_id -> catalogue JSON. ``sr:apps`` holds app_id -> when
a worker of that app last started or saved a checkpoint on this Redis database: per-user
state (``sr:u:{uid}:*``) is not scoped by app, so a worker warns when another app used the
same database recently (:func:`apps_sharing_users`).

Pickle is only ever read back from the product's own Redis; anyone who can write there
can already rewrite every user's state, so this adds no new trust boundary.
"""

from __future__ import annotations

import logging
import pickle
import time
from typing import Any

import orjson
import redis
import redis.asyncio

from models.hybrid import Hybrid
from streamrec.exceptions import StateStoreUnavailable
from streamrec.metrics import LAST_CHECKPOINT, REDIS_ERRORS

logger = logging.getLogger(__name__)


def model_key(app_id: str) -> str:
    return f"sr:model:{app_id}"


def catalog_key(app_id: str) -> str:
    return f"sr:catalog:{app_id}"


APPS_KEY = "sr:apps"


def apps_sharing_users(seen: dict[str, float], app_id: str, now: float,
                       within_s: float) -> list[str]:
    """The other apps of ``seen`` (app_id -> last seen) seen within ``within_s`` of ``now``
    (the state TTL: their users' state is still there), sorted.

    Examples
    --------
    >>> apps_sharing_users({"prod": 990.0, "old": 10.0, "me": 1000.0}, "me", 1000.0, 100.0)
    ['prod']
    """
    return sorted(a for a, ts in seen.items() if a != app_id and now - ts < within_s)


class Checkpointer:
    def __init__(self, client: redis.asyncio.Redis, app_id: str) -> None:
        self._client = client
        self.app_id = app_id
        self.version = 0
        # What the restored checkpoint reflects (see the module docstring).
        self.log_id: str | None = None
        self.offsets: dict[str, int] = {}

    async def load(self) -> Hybrid | None:
        try:
            stored = await self._client.hgetall(model_key(self.app_id))
        except redis.RedisError as exc:
            REDIS_ERRORS.labels(op="checkpoint_load").inc()
            raise StateStoreUnavailable(f"could not read the model checkpoint: {exc}") from exc
        blob = stored.get(b"blob")
        if not isinstance(blob, bytes):  # none saved (replies are bytes: not decoded)
            return None
        try:
            model = pickle.loads(blob)  # noqa: S301 - our own Redis, see module doc
        except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint must not stop startup
            logger.error("model checkpoint unreadable (%s); starting from scratch", exc)
            return None
        if not isinstance(model, Hybrid):
            logger.error("model checkpoint holds a %s, not a Hybrid; ignoring it",
                         type(model).__name__)
            return None
        self.version = int(stored.get(b"version", b"0"))
        LAST_CHECKPOINT.set(float(stored.get(b"saved_at", b"0")))
        log_id = stored.get(b"log_id")
        self.log_id = log_id.decode() if isinstance(log_id, bytes) and log_id else None
        self.offsets = orjson.loads(stored.get(b"offsets") or b"{}")
        logger.info("restored model checkpoint version %d (%d titles; model log position "
                    "%s; events learned up to %s)", self.version,
                    model.size().get("titles", 0), self.log_id, self.offsets)
        return model

    async def note_app(self, now: float) -> dict[str, float]:
        """Record that this app uses this Redis database as of ``now``; returns every app
        recorded (app_id -> when last seen), this one included."""
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.hset(APPS_KEY, self.app_id, now)
            pipe.hgetall(APPS_KEY)
            _, seen = await pipe.execute()
        except redis.RedisError as exc:
            REDIS_ERRORS.labels(op="checkpoint_load").inc()
            raise StateStoreUnavailable(f"could not record this app in {APPS_KEY}: {exc}") from exc
        out = {}
        for app, ts in seen.items():
            try:
                out[app.decode() if isinstance(app, bytes) else app] = float(ts)
            except ValueError:  # not written by streamrec: not an app to warn about
                continue
        return out

    async def save(self, model: Hybrid, offsets: dict[str, int] | None = None,
                   log_id: str | None = None) -> int:
        blob = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
        self.version += 1
        saved_at = time.time()
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.hset(model_key(self.app_id), mapping={
                "blob": blob, "version": self.version, "saved_at": saved_at,
                "offsets": orjson.dumps(offsets or {}), "log_id": log_id or "",
            })
            pipe.hset(APPS_KEY, self.app_id, saved_at)  # still using this database
            await pipe.execute()
        except redis.RedisError as exc:
            REDIS_ERRORS.labels(op="checkpoint_save").inc()
            raise StateStoreUnavailable(f"could not save the model checkpoint: {exc}") from exc
        LAST_CHECKPOINT.set(saved_at)
        logger.info("saved model checkpoint version %d (%d bytes)", self.version, len(blob))
        return self.version

    async def save_title(self, title: dict[str, Any]) -> None:
        try:
            await self._client.hset(catalog_key(self.app_id), title["title_id"],
                                    orjson.dumps(title))
        except redis.RedisError as exc:
            REDIS_ERRORS.labels(op="catalog").inc()
            raise StateStoreUnavailable(f"could not save a catalogue title: {exc}") from exc

    async def remove_title(self, title_id: str) -> None:
        try:
            await self._client.hdel(catalog_key(self.app_id), title_id)
        except redis.RedisError as exc:
            REDIS_ERRORS.labels(op="catalog").inc()
            raise StateStoreUnavailable(f"could not remove a catalogue title: {exc}") from exc

    async def load_catalog(self) -> list[dict[str, Any]]:
        try:
            raw = await self._client.hgetall(catalog_key(self.app_id))
        except redis.RedisError as exc:
            REDIS_ERRORS.labels(op="catalog").inc()
            raise StateStoreUnavailable(f"could not read the catalogue copy: {exc}") from exc
        return [orjson.loads(v) for v in raw.values()]

    async def catalogued_ids(self) -> set[str]:
        """The title ids in the catalogue copy (their entries are not read)."""
        try:
            raw = await self._client.hkeys(catalog_key(self.app_id))
        except redis.RedisError as exc:
            REDIS_ERRORS.labels(op="catalog").inc()
            raise StateStoreUnavailable(f"could not read the catalogue copy: {exc}") from exc
        return {k.decode() if isinstance(k, bytes) else k for k in raw}


def load_catalog_sync(client: redis.Redis, app_id: str) -> dict[str, dict[str, Any]]:
    """title_id -> catalogue entry, for commands outside the worker."""
    raw = client.hgetall(catalog_key(app_id))
    return {(k.decode() if isinstance(k, bytes) else k): orjson.loads(v) for k, v in raw.items()}
