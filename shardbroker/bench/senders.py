"""Publisher processes for the protocol contenders (shardbroker, staging, sink).

``stream`` sends a fixed number of pre-built batches as fast as acks allow, consecutive
batches coalesced into one send of about 1 MiB (bounded by the in-flight window); ``paced``
(S5) sends one batch per tick at a fixed rate and times each batch from the publish call to
its ack. Both speak the Embarcadero publish protocol with ack level 1 and produce the bytes
``BatchTemplate`` rebuilds, so any run can be verified.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardbroker.bench import procs
from shardbroker.bench.stats import latency_summary
from shardbroker.bench.wire import CHUNK_TARGET_BYTES, AckStream, ChunkBuilder, chunk_plan
from shardbroker.publisher.batches import BatchGeometry, BatchTemplate
from shardbroker.wire.protocol import (
    BatchHeader,
    Handshake,
    encode_batch_header,
    encode_handshake,
)

ACK_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class StreamParams:
    host: str
    port: int
    client_id: int
    batch_bytes: int
    message_size: int
    batches: int
    cpu: int | None = None
    max_in_flight_bytes: int = 64 << 20
    topic: str = "bench"
    chunk_bytes: int = CHUNK_TARGET_BYTES  # bytes of consecutive batches per send


@dataclass(frozen=True)
class PacedParams:
    host: str
    port: int
    client_id: int
    batch_bytes: int
    message_size: int
    rate_bytes_s: float
    duration_s: float
    cpu: int | None = None
    topic: str = "bench"


def _connect(host: str, port: int, client_id: int, topic: str) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(None)
    sock.sendall(encode_handshake(Handshake(client_id, 1, 0, topic)))
    return sock


def _drain(sock: socket.socket, acks: AckStream) -> None:
    """Read whatever acks have arrived, without waiting."""
    while True:
        try:
            data = sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        if not data:
            raise ConnectionError("broker closed the connection")
        acks.feed(data)


def _wait_acks(sock: socket.socket, acks: AckStream, messages: int,
               timeout_s: float = ACK_TIMEOUT_S) -> None:
    """Block until the cumulative ack count reaches ``messages``."""
    deadline = time.monotonic() + timeout_s
    while acks.count < messages:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            raise TimeoutError(f"acks stopped at {acks.count} of {messages} messages")
        _drain(sock, acks)


def _summary(p: StreamParams | PacedParams, geom: BatchGeometry, batches: int,
             acks: AckStream) -> dict[str, Any]:
    return {"client_id": p.client_id, "message_size": geom.message_size,
            "messages_per_batch": geom.messages, "batches": batches,
            "messages": batches * geom.messages, "acked_messages": acks.count,
            "bytes": batches * geom.payload_bytes}


def stream(index: int, p: StreamParams, arm: Callable[[], None]) -> dict[str, Any]:
    procs.pin_self(p.cpu)
    geom = BatchGeometry.for_batch(p.batch_bytes, p.message_size)
    m, max_in_flight = chunk_plan(geom.payload_bytes, p.max_in_flight_bytes,
                                  p.chunk_bytes)
    chunk = ChunkBuilder(BatchTemplate(p.client_id, geom), m)
    n = geom.messages
    acks = AckStream()
    sock = _connect(p.host, p.port, p.client_id, p.topic)
    try:
        arm()
        t0, cpu0 = time.monotonic(), time.process_time()
        sent = 0
        while sent < p.batches:
            k = min(m, p.batches - sent)
            if sent + k - acks.count // n > max_in_flight:
                _wait_acks(sock, acks, (sent + k - max_in_flight) * n)
            sock.sendall(chunk.fill(sent, k))
            sent += k
            _drain(sock, acks)
        _wait_acks(sock, acks, sent * n)
        t1, cpu1 = time.monotonic(), time.process_time()
    finally:
        sock.close()
    return _summary(p, geom, sent, acks) | {"t_start": t0, "t_end": t1, "cpu_s": cpu1 - cpu0,
                                            "batches_per_send": m}


def paced(index: int, p: PacedParams, arm: Callable[[], None]) -> dict[str, Any]:
    """Open-loop paced publisher: batch k is due at start + k * interval; its latency runs from
    the moment its send call starts to the ack that covers it. A publisher that falls more
    than 10 ms behind its schedule skips ahead (counted as ``schedule_resets``)."""
    procs.pin_self(p.cpu)
    geom = BatchGeometry.for_batch(p.batch_bytes, p.message_size)
    tmpl = BatchTemplate(p.client_id, geom)
    n = geom.messages
    interval_ns = int(geom.payload_bytes / p.rate_bytes_s * 1e9)
    planned = int(p.duration_s * 1e9 / interval_ns) + 16
    sent_at = np.zeros(planned, dtype=np.int64)
    latency = np.zeros(planned, dtype=np.int64)
    header = bytearray(encode_batch_header(BatchHeader(0, p.client_id, n, geom.payload_bytes)))
    acks = AckStream()
    sock = _connect(p.host, p.port, p.client_id, p.topic)
    fd = sock.fileno()
    resets = 0
    done = 0  # batches whose ack has been seen

    def take_acks() -> None:
        nonlocal done
        now = time.perf_counter_ns()
        upto = min(acks.count // n, sent)
        if upto > done:
            latency[done:upto] = now - sent_at[done:upto]
            done = upto

    try:
        arm()
        t0, cpu0 = time.monotonic(), time.process_time()
        start = time.perf_counter_ns()
        end = start + int(p.duration_s * 1e9)
        due = start
        sent = 0
        while sent < planned:
            now = time.perf_counter_ns()
            if now >= end:
                break
            if now >= due:
                header[0:8] = sent.to_bytes(8, "little")
                payload = tmpl.for_seq(sent)
                sent_at[sent] = time.perf_counter_ns()
                sock.sendmsg([header, payload])
                sent += 1
                due += interval_ns
                if now - due > 10_000_000:
                    due, resets = now + interval_ns, resets + 1
            wait_ns = due - time.perf_counter_ns()
            if wait_ns > 200_000:  # long gap: sleep in poll so an ack wakes us at once
                select.select([fd], [], [], (wait_ns - 100_000) / 1e9)
            _drain(sock, acks)
            take_acks()
        _wait_acks(sock, acks, sent * n)
        take_acks()
        t1, cpu1 = time.monotonic(), time.process_time()
    finally:
        sock.close()
    out = _summary(p, geom, sent, acks)
    out.update(t_start=t0, t_end=t1, cpu_s=cpu1 - cpu0, schedule_resets=resets,
               latency_us=latency_summary(latency[:done].tolist()),
               offered_gbps=p.rate_bytes_s / 1e9)
    return out
