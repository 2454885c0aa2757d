"""The embedded Kafka-protocol broker: librdkafka's mock cluster, driven through ctypes.

librdkafka ships a mock cluster that speaks the Kafka protocol over TCP; the copy inside
the confluent-kafka wheel is used so nothing needs downloading. Any Kafka client
(confluent-kafka, aiokafka, faust) can talk to it.

Honest limits, which every user of the embedded broker should know:

* It keeps everything **in memory only**; stopping it loses every topic.
* Each partition keeps at most **5 MiB of record batches** (as sent, so the producer's
  compression multiplies what fits) and **silently drops the oldest** beyond that. The
  product therefore compresses what it produces (lz4), spreads topics over
  ``Settings.partitions`` partitions, and the worker compares each partition's low
  watermark with its own position, counting any gap in ``streamrec_records_lost_total``
  and logging an error, so a drop never goes unnoticed.
* It does not implement CreateTopics, so every topic, faust's internal ones included, is
  created here through the mock API before clients start.
* It listens on 127.0.0.1 on a port the OS picks. ``--port``/``--host`` put a small TCP
  forwarder in front of it and advertise that address instead.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import selectors
import socket
import threading
from typing import cast

from streamrec.exceptions import EmbeddedServiceError

logger = logging.getLogger(__name__)

_ERRSTR_BYTES = 512
_RD_KAFKA_PRODUCER = 0


def _load_librdkafka() -> ctypes.CDLL:
    import confluent_kafka

    libs_dir = os.path.join(os.path.dirname(confluent_kafka.__file__), os.pardir,
                            "confluent_kafka.libs")
    candidates = sorted(glob.glob(os.path.join(libs_dir, "librdkafka*.so*")))
    if not candidates:
        raise EmbeddedServiceError(
            f"librdkafka was not found in {os.path.normpath(libs_dir)}; reinstall "
            "confluent-kafka from its binary wheel (pip install --force-reinstall confluent-kafka)"
        )
    lib = ctypes.CDLL(candidates[0])
    vp, cp, i32 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32
    signatures = {
        "rd_kafka_conf_new": ([], vp),
        "rd_kafka_conf_set": ([vp, cp, cp, cp, ctypes.c_size_t], ctypes.c_int),
        "rd_kafka_new": ([ctypes.c_int, vp, cp, ctypes.c_size_t], vp),
        "rd_kafka_destroy": ([vp], None),
        "rd_kafka_mock_cluster_new": ([vp, ctypes.c_int], vp),
        "rd_kafka_mock_cluster_destroy": ([vp], None),
        "rd_kafka_mock_cluster_bootstraps": ([vp], cp),
        "rd_kafka_mock_topic_create": ([vp, cp, ctypes.c_int, ctypes.c_int], ctypes.c_int),
        "rd_kafka_mock_set_controller_id": ([vp, i32], ctypes.c_int),
        "rd_kafka_mock_broker_set_down": ([vp, i32], ctypes.c_int),
        "rd_kafka_mock_broker_set_up": ([vp, i32], ctypes.c_int),
        "rd_kafka_mock_broker_set_host_port": ([vp, i32, cp, ctypes.c_int], ctypes.c_int),
        "rd_kafka_mock_group_initial_rebalance_delay_ms": ([vp, i32], ctypes.c_int),
        "rd_kafka_err2str": ([ctypes.c_int], cp),
    }
    for name, (argtypes, restype) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = restype
    return lib


def internal_topics(app_id: str) -> list[str]:
    """Topics faust creates for itself; the mock cannot, so we do."""
    return [f"{app_id}-__assignor-__leader"]


class EmbeddedBroker:
    """A one-broker Kafka-protocol cluster in this process.

    Parameters
    ----------
    partitions
        Partitions for each topic created with :meth:`create_topics`.
    host, port
        Where clients should connect. ``None``/``0`` with host 127.0.0.1 uses the mock's
        own listener directly (fastest); anything else adds a TCP forwarder.
    """

    BROKER_ID = 1

    def __init__(self, partitions: int = 8, host: str = "127.0.0.1", port: int = 0) -> None:
        if partitions <= 0:
            raise ValueError(f"partitions must be positive, got {partitions}")
        self.partitions = partitions
        self.host = host
        self.port = port
        self._lib: ctypes.CDLL | None = None
        self._rk: int | None = None
        self._cluster: int | None = None
        self._forwarder: _Forwarder | None = None
        self.bootstrap_servers = ""

    def start(self) -> EmbeddedBroker:
        lib = _load_librdkafka()
        errstr = ctypes.create_string_buffer(_ERRSTR_BYTES)
        conf = lib.rd_kafka_conf_new()
        # Only errors from the mock's own handle; clients log for themselves.
        lib.rd_kafka_conf_set(conf, b"log_level", b"3", errstr, _ERRSTR_BYTES)
        rk = lib.rd_kafka_new(_RD_KAFKA_PRODUCER, conf, errstr, _ERRSTR_BYTES)
        if not rk:
            raise EmbeddedServiceError(f"could not create a librdkafka handle: {errstr.value!r}")
        cluster = lib.rd_kafka_mock_cluster_new(rk, 1)
        if not cluster:
            lib.rd_kafka_destroy(rk)
            raise EmbeddedServiceError("librdkafka could not start its mock cluster")
        self._lib, self._rk, self._cluster = lib, rk, cluster
        # Admin clients need a controller for metadata requests.
        lib.rd_kafka_mock_set_controller_id(cluster, self.BROKER_ID)
        # The mock waits 3 s (Kafka's group.initial.rebalance.delay.ms) before the first
        # assignment of every consumer group; on one machine that is only start-up delay.
        lib.rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0)
        own_address = lib.rd_kafka_mock_cluster_bootstraps(cluster).decode()
        if self.host == "127.0.0.1" and not self.port:
            self.bootstrap_servers = own_address
        else:
            target_host, target_port = own_address.rsplit(":", 1)
            try:
                self._forwarder = _Forwarder(self.host, self.port, target_host, int(target_port))
            except OSError:
                self.stop()
                raise
            self._forwarder.start()
            advertised = self._forwarder.bound_port
            lib.rd_kafka_mock_broker_set_host_port(
                cluster, self.BROKER_ID, self.host.encode(), advertised
            )
            self.bootstrap_servers = f"{self.host}:{advertised}"
        logger.info("embedded Kafka-protocol broker at %s", self.bootstrap_servers)
        return self

    def create_topics(self, names: list[str], partitions: int | None = None) -> None:
        lib, cluster = self._require_started()
        for name in names:
            err = lib.rd_kafka_mock_topic_create(
                cluster, name.encode(), partitions or self.partitions, 1
            )
            # Creating a topic twice is harmless (TOPIC_ALREADY_EXISTS = 36).
            if err not in (0, 36):
                raise EmbeddedServiceError(
                    f"could not create topic {name!r}: {lib.rd_kafka_err2str(err).decode()}"
                )

    def set_down(self) -> None:
        """Take the broker down: clients see connection failures until :meth:`set_up`."""
        lib, cluster = self._require_started()
        lib.rd_kafka_mock_broker_set_down(cluster, self.BROKER_ID)

    def set_up(self) -> None:
        lib, cluster = self._require_started()
        lib.rd_kafka_mock_broker_set_up(cluster, self.BROKER_ID)

    def stop(self) -> None:
        if self._forwarder is not None:
            self._forwarder.stop()
            self._forwarder = None
        if self._lib is not None and self._cluster is not None:
            self._lib.rd_kafka_mock_cluster_destroy(self._cluster)
            self._lib.rd_kafka_destroy(self._rk)
        self._cluster = self._rk = None

    def _require_started(self) -> tuple[ctypes.CDLL, int]:
        if self._lib is None or self._cluster is None:
            raise EmbeddedServiceError("the embedded broker is not started; call start() first")
        return self._lib, self._cluster

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Forwarder:
    """Forwards TCP connections from (host, port) to the mock's loopback listener."""

    # Bytes read per socket event; large enough that a fetch response moves in few reads.
    _CHUNK_BYTES = 256 * 1024

    def __init__(self, host: str, port: int, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server((host, port), reuse_port=False)
        self._listener.setblocking(False)
        self.bound_port = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="broker-forwarder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=2)
        self._listener.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            for key, _ in self._selector.select(timeout=0.2):
                if key.data is None:
                    self._accept()
                else:
                    # Only sockets are registered (above); typeshed's fileobj is any file.
                    self._pump(cast(socket.socket, key.fileobj), key.data)

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        upstream = socket.create_connection(self._target)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._selector.register(client, selectors.EVENT_READ, upstream)
        self._selector.register(upstream, selectors.EVENT_READ, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            data = source.recv(self._CHUNK_BYTES)
            if data:
                sink.sendall(data)
                return
        except OSError:
            pass
        for sock in (source, sink):
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
