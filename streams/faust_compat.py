"""A fix for faust's Kafka client (aiokafka) when several workers share the embedded broker.

librdkafka's mock cluster (the embedded broker) finishes a group's sync as soon as the
leader's SyncGroup request arrives, and answers ``INVALID_REQUEST`` to a follower whose
own SyncGroup arrives a millisecond later; a real Kafka broker returns the follower its
assignment instead. aiokafka treats that error as unexpected: it raises it to the
application and then waits for the application to consume the error, which faust, with
no partitions yet, never does. The second worker of a pair then hung at start-up, its
session expired, and the first worker owned every partition.

:func:`patch_aiokafka` makes aiokafka treat that one answer like
``REBALANCE_IN_PROGRESS``: rejoin the group (aiokafka has already asked for the rejoin
before raising). Against a real broker the answer never comes, so nothing changes there.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

_PATCHED = False


def patch_aiokafka() -> None:
    """Idempotent; call before the faust app starts."""
    global _PATCHED
    if _PATCHED:
        return
    from aiokafka import errors
    from aiokafka.consumer.group_coordinator import CoordinatorGroupRebalance

    original = CoordinatorGroupRebalance._send_sync_group_request

    async def send_sync_group_request(self: Any, request: Any) -> Any:
        try:
            return await original(self, request)
        except errors.KafkaError as exc:
            if "InvalidRequestError" not in str(exc):
                raise
            logger.info("group %s: SyncGroup answered INVALID_REQUEST (the embedded broker "
                        "already synced the leader); rejoining", self.group_id)
            self._coordinator.request_rejoin()
            return None

    CoordinatorGroupRebalance._send_sync_group_request = send_sync_group_request
    _PATCHED = True
