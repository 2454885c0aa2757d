"""Two fixes for faust's Kafka client (aiokafka): several workers on the embedded
broker, and stopping when the broker is gone.

librdkafka's mock cluster (the embedded broker) finishes a group's sync as soon as the
leader's SyncGroup request arrives, and answers ``INVALID_REQUEST`` to a follower whose
own SyncGroup arrives a millisecond later; a real Kafka broker returns the follower its
assignment instead. aiokafka treats that error as unexpected: it raises it to the
application and then waits for the application to consume the error, which faust, with
no partitions yet, never does. The second worker of a pair then hung at start-up, its
session expired, and the first worker owned every partition.

:func:`patch_aiokafka` changes two things in aiokafka:

* the group leader waits ``LEADER_SYNC_DELAY_S`` before computing and sending the
  assignment, so that the followers' SyncGroup requests (sent as soon as they joined)
  reach the broker first: rejoining alone was not enough, the leader won the race six
  rounds in a row in one test run, ~9 s per round;
* that one answer is treated like ``REBALANCE_IN_PROGRESS``: rejoin the group (aiokafka
  has already asked for the rejoin before raising), should a follower still be late.

Against a real broker the answer never comes and the delay costs a rebalance 0.2 s.

:func:`limit_consumer_thread_stop`: with the broker gone, a SIGTERM took 61.4 s. The
events pipeline stopped and the model checkpoint was saved within milliseconds, then
faust's consumer thread (a mode ``ServiceThread``) waited out mode's 60 s
``shutdown_timeout`` for aiokafka to leave a group on a broker that no longer answers.
With a broker, that stop takes about a second (the whole SIGTERM 1.0 s).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

logger = logging.getLogger(__name__)

_PATCHED = False
# How long the group leader waits before sending its SyncGroup, seconds: followers send
# theirs immediately on joining, so a fraction of a second lets them arrive first.
LEADER_SYNC_DELAY_S = 0.2
# The longest faust's consumer thread may take to stop, seconds (mode's default is 60):
# well above the ~1 s it takes with a broker, well below a 30 s termination grace period.
CONSUMER_THREAD_STOP_TIMEOUT_S = 10.0


def patch_aiokafka() -> None:
    """Idempotent; call before the faust app starts."""
    global _PATCHED
    if _PATCHED:
        return
    from aiokafka import errors
    from aiokafka.consumer.group_coordinator import CoordinatorGroupRebalance

    original = CoordinatorGroupRebalance._send_sync_group_request
    original_leader = CoordinatorGroupRebalance._on_join_leader

    async def on_join_leader(self: Any, response: Any) -> Any:
        await asyncio.sleep(LEADER_SYNC_DELAY_S)
        return await original_leader(self, response)

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
    CoordinatorGroupRebalance._on_join_leader = on_join_leader
    _PATCHED = True


def limit_consumer_thread_stop() -> None:
    """Give faust's consumer thread ``CONSUMER_THREAD_STOP_TIMEOUT_S`` to stop, not 60 s.

    Nothing waits on what it would finish: the events pipeline commits its own offsets,
    and a catalogue record whose offset is not committed is read again on restart (its
    Redis copy and notification are written idempotently).
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    AIOKafkaConsumerThread.shutdown_timeout = CONSUMER_THREAD_STOP_TIMEOUT_S
