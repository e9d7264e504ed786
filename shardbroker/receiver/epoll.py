"""The epoll driver: level-triggered epoll + non-blocking ``recv_into`` the session's buffer.

Per readable connection it reads until the socket is drained: into the hot read-ahead buffer
(many small batches per call) or, for a large payload, straight into its BLog reservation,
with the payload's tail and the next header in one ``recvmsg_into`` (scatter). A read-ahead
read that returns less than asked means the queue is empty: the loop stops there instead of
paying one more call for EAGAIN (level-triggered epoll reports the socket again).
SO_RCVLOWAT is re-armed only when the loop is about to wait: to the bytes the batch in hand
still needs (capped), so a wakeup comes when the batch can complete.
"""

from __future__ import annotations

import contextlib
import select
import socket

from shardbroker.receiver.connection import Connection
from shardbroker.receiver.receiver import RESET_ERRNOS, Receiver
from shardbroker.receiver.session import PHASE_DIRECT

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLL_ERR = select.EPOLLERR | select.EPOLLHUP
SCATTER_MAX = 256 << 10  # payload tails up to this are read together with the next headers
DRAIN_BUDGET = 16 << 20  # bytes per connection per wakeup, so one publisher cannot starve others


class EpollBackend:
    name = "epoll"
    setup_names: list[str] = []

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.rx: Receiver | None = None
        self.ctrl_fd = -1
        self.listen_fd = -2
        self.ack_owner: dict[int, Connection] = {}  # separate ack socket fd -> connection

    # ------------------------------------------------------------------ Backend interface

    def start(self, rx: Receiver, control: socket.socket,
              listener: socket.socket | None) -> None:
        self.rx = rx
        self.ctrl_fd = control.fileno()
        self.ep.register(self.ctrl_fd, EPOLLIN)
        if listener is not None:
            self.listen_fd = listener.fileno()
            self.ep.register(self.listen_fd, EPOLLIN)

    def drop_listener(self, listener: socket.socket) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.ep.unregister(listener.fileno())
        self.listen_fd = -2

    def watch(self, conn: Connection) -> None:
        self.ep.register(conn.fd, EPOLLIN)

    def adopted(self, conn: Connection) -> None:
        self._on_readable(conn)  # a moved-in connection's next bytes may be queued already

    def unwatch(self, conn: Connection) -> bool:
        with contextlib.suppress(OSError, ValueError):
            self.ep.unregister(conn.fd)
        ack = conn.ack_sock
        if ack is not None and ack is not conn.sock and ack.fileno() in self.ack_owner:
            del self.ack_owner[ack.fileno()]
            with contextlib.suppress(OSError, ValueError):
                self.ep.unregister(ack.fileno())
        return True  # nothing of ours is in flight: the socket may close now

    def idle(self, conn: Connection) -> bool:
        return True  # reads happen only inside _on_readable

    def quiesce(self, conn: Connection) -> None:
        """Nothing to stop: no read is in flight outside _on_readable."""

    def pause(self, conn: Connection) -> None:
        """Parked: keep only EPOLLOUT (pending acks), so its socket cannot wake the loop."""
        with contextlib.suppress(OSError, ValueError):
            self.ep.modify(conn.fd, EPOLLOUT if self._same_ack_waits(conn) else 0)

    def resume(self, conn: Connection) -> None:
        self.ep.modify(conn.fd, EPOLLIN | (EPOLLOUT if self._same_ack_waits(conn) else 0))
        self._on_readable(conn)  # its bytes are queued already

    def want_write(self, conn: Connection, on: bool) -> None:
        ack = conn.ack_sock
        if ack is None:
            return
        if ack is conn.sock:
            reading = 0 if conn.parked else EPOLLIN  # a parked socket stays unread
            self.ep.modify(conn.fd, reading | (EPOLLOUT if on else 0))
        elif on:
            self.ack_owner[ack.fileno()] = conn
            self.ep.register(ack.fileno(), EPOLLOUT)
        elif ack.fileno() in self.ack_owner:
            del self.ack_owner[ack.fileno()]
            self.ep.unregister(ack.fileno())

    def wait(self, timeout_s: float) -> None:
        rx = self.rx
        assert rx is not None
        try:
            events = self.ep.poll(timeout_s)
        except InterruptedError:
            return
        if not events:
            return
        rx.wakeups += 1
        conns = rx.conns
        for fd, ev in events:
            conn = conns.get(fd)
            if conn is not None:
                if ev & EPOLLOUT:
                    rx.on_writable(conn)
                if ev & ~EPOLLOUT and conns.get(fd) is conn:
                    if not conn.parked:
                        self._on_readable(conn)
                    elif ev & EPOLL_ERR:
                        rx.peer_closed(conn)  # reported even with no events asked
            elif fd == self.ctrl_fd:
                rx.on_control()
            elif fd == self.listen_fd:
                rx.accept()
            else:
                owner = self.ack_owner.get(fd)
                if owner is not None:
                    rx.on_writable(owner)
        if rx.acks_due:
            rx.flush_due_acks()

    def close(self) -> None:
        self.ep.close()

    # ------------------------------------------------------------------ the receive path

    def _on_readable(self, conn: Connection) -> None:
        rx = self.rx
        assert rx is not None
        s = conn.session
        sock = conn.sock
        budget = DRAIN_BUDGET
        while budget > 0:
            buf = s.next_buffer()
            want = len(buf)
            direct = s.phase == PHASE_DIRECT
            try:
                spill = s.spill_buffer() if direct and want <= SCATTER_MAX else None
                if spill is not None:
                    # the payload's tail and the next batch header in one call
                    want += len(spill)
                    n = sock.recvmsg_into([buf, spill])[0]
                else:
                    n = sock.recv_into(buf)
            except BlockingIOError:
                rx.recv_calls += 1
                rx.payload_recv_calls += direct
                rx.eagain += 1
                rx.rearm_lowat(conn)
                return
            except OSError as exc:
                if exc.errno in RESET_ERRNOS:
                    rx.peer_closed(conn)  # a reset is a close: same counters, same cleanup
                    return
                raise
            rx.recv_calls += 1
            rx.payload_recv_calls += direct
            if n == 0:
                rx.peer_closed(conn)
                return
            if not rx.received(conn, n):
                return  # closed, parked or handed over
            if n < want and not direct:
                # drained: epoll reports the socket again when more arrives (a large payload
                # streams in meanwhile, so there one more read usually beats a wakeup)
                break
            budget -= n
        rx.rearm_lowat(conn)

    @staticmethod
    def _same_ack_waits(conn: Connection) -> bool:
        return conn.want_write and conn.ack_sock is conn.sock
