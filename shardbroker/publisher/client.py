"""Publisher library: ``from shardbroker import Publisher``.

Speaks the Embarcadero publish protocol (wire/protocol.py): one handshake, then batches of
framed messages; acks come back on the same connection as cumulative message counts.
``publish(bytes)`` batches messages up to ``batch_bytes``; ``publish_batch`` sends an already
framed payload (what load generators use, so the client costs about what iperf3 does per byte).
At most ``max_in_flight`` batches wait for acks; ``flush()`` waits for all of them.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import NoReturn

from shardbroker.errors import PublishError
from shardbroker.publisher.batcher import MessageBatcher
from shardbroker.publisher.connection import AckStream, open_connection, send_batch


@dataclass(slots=True)
class _InFlight:
    seq: int
    num_msg: int
    conn_cum: int  # cumulative messages on the current connection once this batch is acked
    payload: bytes | bytearray | memoryview | None  # None: ask resend_source for the bytes


class Publisher:
    """``retries`` > 0: a dropped connection (not a rejection with a reason) is reconnected
    with exponential backoff and every unacked batch is sent again with the same batch_seq;
    the broker recognises batches it already committed and only acks them. The bytes to resend
    come from ``resend_source(batch_seq)`` when given (load generators regenerate them), else
    from a copy kept per unacked batch."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        topic: str = "default",
        client_id: int | None = None,
        ack: int = 1,
        batch_bytes: int = 2 << 20,
        max_in_flight: int = 32,
        timeout: float = 30.0,
        retries: int = 0,
        resend_source: Callable[[int], bytes | bytearray | memoryview] | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.client_id = client_id if client_id is not None else random.getrandbits(31) | 1
        self.topic = topic
        self.ack = ack
        self.batch_bytes = batch_bytes
        self.max_in_flight = max(1, max_in_flight)
        self.timeout = timeout
        self.retries = retries
        self.resend_source = resend_source
        self.reconnects = 0
        self.next_batch_seq = 0
        self.sent_messages = 0
        self.sent_bytes = 0
        self.acked_messages = 0
        self._acked_before_conn = 0  # acked on earlier connections
        self._conn_sent = 0  # messages sent on the current connection
        self._in_flight: deque[_InFlight] = deque()
        self._acks = AckStream()
        self._closed_reason: str | None = None
        self._messages = MessageBatcher(batch_bytes, self.client_id,
                                        lambda: self.next_batch_seq,
                                        partial(self._publish, owned=True))
        self.sock = self._connect()

    def _connect(self) -> socket.socket:
        return open_connection(self.host, self.port, self.client_id, self.ack, self.topic,
                               self.timeout)

    @property
    def broker_id(self) -> int | None:
        """The id the broker sent at the start of this connection's ack stream."""
        return self._acks.broker_id

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if et is None:
            self.flush()
        self.close()

    # ------------------------------------------------------------------ publishing

    def publish(self, data: bytes | bytearray | memoryview) -> None:
        """Queue one message; a full batch goes out (and may wait for acks)."""
        self._messages.add(data)

    def publish_batch(self, payload: bytes | bytearray | memoryview, num_msg: int) -> int:
        """Send one already framed batch (``num_msg`` messages). Returns its batch_seq."""
        return self._publish(payload, num_msg, owned=False)

    def _publish(self, payload: bytes | bytearray | memoryview, num_msg: int, owned: bool
                 ) -> int:
        self._check_open()
        if self.ack:
            reconnects = self.reconnects
            self._reap_acks(block=len(self._in_flight) >= self.max_in_flight)
            if self.reconnects != reconnects and self.resend_source is not None:
                # the resends took their bytes from resend_source, which may be the very
                # buffer the caller filled for this batch (BatchTemplate): fetch it again
                payload = self.resend_source(self.next_batch_seq)
        seq = self.next_batch_seq
        self.next_batch_seq = seq + 1
        self.sent_messages += num_msg
        self.sent_bytes += len(payload)
        if self.ack:
            keep: bytes | bytearray | memoryview | None = None
            if self.retries and self.resend_source is None:
                keep = payload if owned else bytes(payload)
            self._conn_sent += num_msg
            self._in_flight.append(_InFlight(seq, num_msg, self._conn_sent, keep))
        try:
            self._send_batch(seq, num_msg, payload)
        except OSError as exc:
            self._connection_lost(exc)
        return seq

    def _send_batch(self, seq: int, num_msg: int, payload: bytes | bytearray | memoryview
                    ) -> None:
        send_batch(self.sock, seq, self.client_id, num_msg, payload)

    def flush(self, timeout: float | None = None) -> None:
        """Send the partial batch and wait until every batch is acked."""
        self._messages.send_pending()
        if not self.ack:
            return
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self._in_flight:
            if time.monotonic() > deadline:
                raise PublishError(
                    f"{len(self._in_flight)} batches not acked within the timeout",
                    hint="the broker may be overloaded or stopped",
                )
            self._reap_acks(block=True, deadline=deadline)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    # ------------------------------------------------------------------ reconnects

    def _connection_lost(self, exc: OSError | None) -> None:
        """Find the broker's stated reason; reconnect and resend if allowed, else raise."""
        self._read_reason()
        if self._closed_reason is not None or not self.retries:
            self._raise_closed(exc)
        delay = 0.05
        last: Exception | None = exc
        for _attempt in range(self.retries):
            time.sleep(delay)
            delay = min(1.0, delay * 2)
            try:
                self._reconnect()
                return
            except (OSError, PublishError) as err:
                last = err
                if isinstance(err, PublishError) and err.reason:
                    raise
        raise PublishError(f"broker unreachable after {self.retries} reconnects: {last}",
                           reason="connection.lost",
                           hint="is the broker running? acked messages are safe") from last

    def _reconnect(self) -> None:
        self.close()
        self.sock = self._connect()
        self.reconnects += 1
        self._acks = AckStream()
        self._acked_before_conn = self.acked_messages
        self._conn_sent = 0
        try:
            for b in self._in_flight:  # everything not acked, again, in order
                self._conn_sent += b.num_msg
                b.conn_cum = self._conn_sent
                data = b.payload if b.payload is not None else (
                    self.resend_source(b.seq) if self.resend_source is not None else None)
                if data is None:
                    raise PublishError(f"batch {b.seq} cannot be resent: its bytes are gone")
                self._send_batch(b.seq, b.num_msg, data)
        except OSError:
            self.close()
            raise

    # ------------------------------------------------------------------ acks

    def _check_open(self) -> None:
        if self._closed_reason is not None:
            raise PublishError(f"broker closed the connection: {self._closed_reason}",
                               reason=self._closed_reason.split(":", 1)[0])

    def _read_reason(self) -> None:
        """After a failure, read what the broker still sent: acks, maybe a stated reason."""
        try:
            self.sock.settimeout(0.5)
            while self._closed_reason is None:
                data = self.sock.recv(65536)
                if not data:
                    break
                self._feed(data)
        except OSError:
            pass

    def _raise_closed(self, exc: OSError | None) -> NoReturn:
        """The broker's stated reason (``"batch.total_size_zero: ..."``) names the error;
        without one the reason is ``connection.lost``."""
        if self._closed_reason is None:
            self._closed_reason = "connection.lost: " + (str(exc) if exc else "closed by peer")
        raise PublishError(f"broker closed the connection: {self._closed_reason}",
                           reason=self._closed_reason.split(":", 1)[0]) from exc

    def _reap_acks(self, block: bool, deadline: float | None = None) -> None:
        """Read acks that arrived. ``block``: wait until at least one batch is acked."""
        before = len(self._in_flight)
        while True:
            try:
                data = self.sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if not block or len(self._in_flight) < before:
                    return
                wait = self.timeout if deadline is None else max(0.0, deadline - time.monotonic())
                readable, _, _ = select.select([self.sock], [], [], wait)
                if not readable:
                    raise PublishError("no ack from the broker within the timeout",
                                       hint="the broker may be overloaded or stopped") from None
                continue
            except OSError as exc:
                self._connection_lost(exc)
                before = len(self._in_flight)
                continue
            if not data:
                self._connection_lost(None)
                before = len(self._in_flight)
                continue
            self._feed(data)
            if self._closed_reason is not None:
                self._raise_closed(None)

    def _feed(self, data: bytes) -> None:
        acks = self._acks
        acks.feed(data)
        if acks.closed_reason is not None:
            self._closed_reason = acks.closed_reason
        count = acks.count
        self.acked_messages = self._acked_before_conn + count
        while self._in_flight and self._in_flight[0].conn_cum <= count:
            self._in_flight.popleft()


def random_client_id() -> int:
    return int.from_bytes(os.urandom(4), "little") | 1
