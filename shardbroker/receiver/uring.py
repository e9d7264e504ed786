"""The io_uring driver: one RECV in flight per connection, into where its session says.

* Headers and small batches: a plain RECV of up to the read-ahead buffer's free space into the
  session's hot buffer (it completes with whatever is queued: many batches per completion).
* A large payload: its rest straight into its BLog reservation (an address inside the
  shared-memory mapping), by a RECV that polls first with SO_RCVLOWAT set to what is owed, so
  it runs once, when the bytes are queued (see ``_arm_direct``).

SQEs are queued while completions are handled and go in with the next wait: one
``io_uring_enter`` per loop pass. The supervisor's control socket and a receiver-side
SO_REUSEPORT listener are watched with one-shot POLL_ADDs. Acks go out with a plain
non-blocking ``send`` (receiver.py) when the loop is about to sleep, or once a connection has
read ACK_EVERY_BYTES since its last count (``_collect``); a full send buffer arms a POLLOUT
poll on the ack socket.

What the kernel may still touch after the receiver lets go of a connection:

* A connection closed with a RECV in flight becomes a *zombie*: its RECV is cancelled and its
  socket shut down, but the fd (and the session's hot buffer, held by ``by_uid``) stay until
  the RECV's completion is reaped.
* A RECV into a BLog reservation that newer data laps (the publisher is too slow for the ring)
  is cancelled and reaped *before* the lapping batch is written (``quiesce``), so the kernel
  never writes into bytes that were reused.
* A hand-over happens only with nothing in flight: the receive is cancelled and the hand-over
  waits for its completion (bytes that did arrive are processed first; the session's exact mode
  keeps them within the batch in hand).

``user_data`` = ``uid << 12 | gen << 8 | kind``: ``uid`` is a per-connection number never reused
(fd numbers are), ``gen`` the connection's receive generation (a stale completion is ignored).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import socket
import time

from shardbroker.platform.uring import (
    IORING_RECVSEND_POLL_FIRST,
    IOVEC,
    MSGHDR,
    POLLIN,
    POLLOUT,
    SETUP_FLAG_NAMES,
    Ring,
    buffer_address,
    flag_names,
)
from shardbroker.receiver.connection import Connection
from shardbroker.receiver.receiver import Receiver
from shardbroker.wire.protocol import BATCH_HEADER_SIZE

K_RX = 1  # RECV into the session's buffer or reservation
K_TX = 2  # POLLOUT on the ack socket
K_CONTROL = 3  # POLLIN on the supervisor's control socket
K_LISTEN = 4  # POLLIN on a receiver-side SO_REUSEPORT listener
K_CANCEL = 5  # ASYNC_CANCEL (its own completion carries nothing we need)
RING_ENTRIES = 256
CQ_ENTRIES = 4096
DRAIN_TIMEOUT_S = 2.0  # at exit: wait this long for cancelled operations to complete
QUIESCE_TIMEOUT_S = 1.0


class UringConn:
    """What the ring needs to know about one connection (``Connection.driver``)."""

    __slots__ = ("conn", "uid", "gen", "rx", "rx_direct", "tx", "zombie", "handing",
                 "hot", "hot_addr", "msg", "msg_addr")

    def __init__(self, conn: Connection, uid: int) -> None:
        self.conn = conn
        self.uid = uid
        self.gen = 0  # bumped when a receive completes
        self.rx = False  # a RECV is queued or in flight
        self.rx_direct = False  # ... and it targets the BLog
        self.tx = False  # a POLLOUT on the ack socket is queued or in flight
        self.zombie = False  # closed; the fd stays open until what is in flight completes
        self.handing = False  # a hand-over waits for the receive in flight to end
        # The session replaces its buffer when it grows (never while a RECV targets it): the
        # address is looked up again then. Holding ``hot`` keeps a zombie's target alive.
        self.hot = conn.session.hot
        self.hot_addr = buffer_address(self.hot)
        # A direct payload's RECVMSG: one msghdr and two iovecs (the payload's rest, then the
        # hot buffer's first header), kept here while the kernel may read them.
        self.msg = ctypes.create_string_buffer(MSGHDR.size + 2 * IOVEC.size)
        self.msg_addr = ctypes.addressof(self.msg)
        MSGHDR.pack_into(self.msg, 0, 0, 0, self.msg_addr + MSGHDR.size, 2, 0, 0, 0)

    def ud(self, kind: int) -> int:
        return (self.uid << 12) | ((self.gen & 15) << 8) | kind


class UringBackend:
    name = "uring"

    def __init__(self, setup_flags: int | None = None) -> None:
        self.ring = Ring(RING_ENTRIES, setup_flags, cq_entries=CQ_ENTRIES)
        self.setup_names = flag_names(self.ring.flags, SETUP_FLAG_NAMES)
        self.rx: Receiver | None = None
        self.base_addr = 0
        self.control: socket.socket | None = None
        self.listener: socket.socket | None = None
        self.ctrl_armed = False
        self.listen_armed = False
        self.by_uid: dict[int, UringConn] = {}
        self.next_uid = 1
        self.to_arm: list[Connection] = []
        self.stashed: list[tuple[int, int, int]] = []  # completions reaped by quiesce
        self.poll_first = IORING_RECVSEND_POLL_FIRST  # 0 once the kernel refused it

    # ------------------------------------------------------------------ Backend interface

    def start(self, rx: Receiver, control: socket.socket,
              listener: socket.socket | None) -> None:
        self.rx = rx
        # RECVs target base_addr + segment offset. The mapping outlives the driver (the
        # receiver unmaps nothing before exit), and close() reaps everything in flight.
        self.base_addr = buffer_address(rx.writer.buf)
        self.control = control
        self.listener = listener

    def drop_listener(self, listener: socket.socket) -> None:
        if self.listen_armed:
            self.ring.prep_cancel(K_LISTEN, K_CANCEL)
            self._submit_now()  # before the fd closes
        self.listener = None

    def watch(self, conn: Connection) -> None:
        st = UringConn(conn, self.next_uid)
        self.next_uid += 1
        self.by_uid[st.uid] = st
        conn.driver = st
        # armed at the next wait: a moved-in connection gets its state restored first
        self.to_arm.append(conn)

    def adopted(self, conn: Connection) -> None:
        self.to_arm.append(conn)

    def unwatch(self, conn: Connection) -> bool:
        st: UringConn = conn.driver
        ack = conn.ack_sock
        if st.tx and ack is not None and ack is not conn.sock:
            # the POLLOUT names the separate ack socket, which closes right after this
            self.ring.prep_cancel_fd(ack.fileno(), K_CANCEL)
            self._submit_now()
            st.tx = False
        if not st.rx and not st.tx:
            self.by_uid.pop(st.uid, None)
            return True
        # Something in flight names this fd: end it, keep the fd until its completion.
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)
        self.ring.prep_cancel_fd(conn.fd, K_CANCEL)
        self._submit_now()
        st.zombie = True
        return False

    def idle(self, conn: Connection) -> bool:
        st: UringConn = conn.driver
        if not st.rx and not st.tx:
            st.handing = False
            return True
        if not st.handing:
            st.handing = True
            if st.rx:
                self.ring.prep_cancel(st.ud(K_RX), K_CANCEL)
            if st.tx:
                self.ring.prep_cancel((st.uid << 12) | K_TX, K_CANCEL)
        return False  # the completions come back to _on_rx / _on_tx

    def quiesce(self, conn: Connection) -> None:
        st: UringConn = conn.driver
        if not (st.rx and st.rx_direct):
            return
        self.ring.prep_cancel(st.ud(K_RX), K_CANCEL)
        deadline = time.monotonic() + QUIESCE_TIMEOUT_S
        target = st.ud(K_RX)
        while st.rx and time.monotonic() < deadline:
            self.ring.enter(0.05)
            for cqe in self.ring.reap():
                if cqe[0] == target:
                    st.rx = False
                    st.gen += 1
                    # its bytes went into space that is being reused: nothing to keep
                else:
                    self.stashed.append(cqe)
        if st.rx:
            rx = self.rx
            assert rx is not None
            rx.log.error("receiver.uring.quiesce_timeout", peer=conn.peer)

    def pause(self, conn: Connection) -> None:
        """Nothing to undo: a parked connection simply gets no new RECV."""

    def resume(self, conn: Connection) -> None:
        self.to_arm.append(conn)

    def want_write(self, conn: Connection, on: bool) -> None:
        st: UringConn = conn.driver
        if on and not st.tx and not st.handing:
            self._arm_tx(conn)

    def wait(self, timeout_s: float) -> None:
        rx = self.rx
        assert rx is not None and self.control is not None
        ring = self.ring
        if not self.ctrl_armed:
            ring.prep_poll_add(self.control.fileno(), POLLIN, K_CONTROL)
            self.ctrl_armed = True
        if self.listener is not None and not self.listen_armed:
            ring.prep_poll_add(self.listener.fileno(), POLLIN, K_LISTEN)
            self.listen_armed = True
        if self.to_arm:
            todo, self.to_arm = self.to_arm, []
            for conn in todo:
                self._arm(conn)
        cqes = self._collect(timeout_s)
        if not cqes:
            return
        rx.wakeups += 1
        rx.uring_completions += len(cqes)
        held = None  # counts held from earlier passes (a fresh dict only if there are any)
        if rx.acks_due:
            held, rx.acks_due = rx.acks_due, {}
        by_uid = self.by_uid
        for ud, res, _flags in cqes:
            kind = ud & 7
            if kind == K_RX:
                st = by_uid.get(ud >> 12)
                if st is not None and st.rx and (ud >> 8) & 15 == st.gen & 15:
                    self._on_rx(st, res)
            elif kind == K_TX:
                st = by_uid.get(ud >> 12)
                if st is not None and st.tx:
                    st.tx = False
                    self._on_tx(st)
            elif kind == K_CONTROL:
                self.ctrl_armed = False
                rx.on_control()
            elif kind == K_LISTEN:
                self.listen_armed = False
                if rx.listener is not None:
                    rx.accept()
        if held:
            rx.flush_quiet_acks(held)

    def _collect(self, timeout_s: float) -> list[tuple[int, int, int]]:
        """Submit what is queued, and wait up to ``timeout_s`` for completions.

        Held ack counts (``Receiver.acks_due``) go out only when nothing more is ready: a
        loop that is never idle would otherwise send one count per completion, and each send
        costs the loopback's delivery to the publisher in this process (an ack per 256 KiB
        read took a tenth of the receiver at 4 KiB batches). So first a look that does not
        wait (it runs the kernel's deferred task work); only if it finds nothing do the
        counts go out, before sleeping."""
        rx = self.rx
        assert rx is not None
        ring = self.ring
        if rx.acks_due or self.stashed:
            ring.enter(0.0)
            rx.uring_enters += 1
            cqes = self.stashed + ring.reap()
            self.stashed = []
            if cqes:
                return cqes
            rx.flush_due_acks()
        ring.enter(timeout_s)
        rx.uring_enters += 1
        return ring.reap()

    def close(self) -> None:
        """Reap every operation still in flight, so the kernel no longer holds our sockets or
        writes into the segment or the hot buffers once the ring is gone."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        for st in self.by_uid.values():
            if st.rx or st.tx:
                self.ring.prep_cancel_fd(st.conn.fd, K_CANCEL)
        while any(st.rx or st.tx for st in self.by_uid.values()):
            left = deadline - time.monotonic()
            if left <= 0:
                rx = self.rx
                if rx is not None:
                    rx.log.warning("receiver.uring.drain_timeout", in_flight=sum(
                        st.rx + st.tx for st in self.by_uid.values()))
                break
            self.ring.enter(min(left, 0.1))
            for ud, _res, _flags in self.ring.reap():
                done = self.by_uid.get(ud >> 12)
                if done is None:
                    continue
                if ud & 7 == K_RX:
                    done.rx = False
                elif ud & 7 == K_TX:
                    done.tx = False
        for st in self.by_uid.values():
            if st.zombie:
                st.conn.sock.close()
        self.by_uid.clear()
        self.ring.close()

    # ------------------------------------------------------------------ submissions

    def _submit_now(self) -> None:
        self.ring.submit()
        rx = self.rx
        if rx is not None:
            rx.uring_enters += 1

    def _arm(self, conn: Connection) -> None:
        """Queue the next receive: into the hot buffer, or the rest of a direct payload."""
        rx = self.rx
        assert rx is not None
        st: UringConn = conn.driver
        s = conn.session
        if st.rx or st.handing or s.parked or not rx.owns(conn):
            return
        in_segment, offset, length = s.next_target()
        if length <= 0:
            return
        if in_segment:
            self._arm_direct(conn, st, self.base_addr + offset, length)
        else:
            if st.hot is not s.hot:
                st.hot = s.hot
                st.hot_addr = buffer_address(s.hot)
            rx.rearm_lowat(conn)
            self.ring.prep_recv(conn.fd, st.hot_addr + offset, length, st.ud(K_RX), 0)
        st.rx = True
        st.rx_direct = in_segment

    def _arm_direct(self, conn: Connection, st: UringConn, addr: int, length: int) -> None:
        """The rest of a large payload, straight into its BLog reservation.

        SO_RCVLOWAT is the bytes still owed (up to ``rcvlowat_cap``) and the receive polls
        first, so it runs once, when they are queued: one kernel copy of the whole rest and
        one completion. No MSG_WAITALL: its retries take whatever each wakeup brought (lowat
        must then stay 1, since a retry may owe less than any lowat set before), and every
        small read sends a window update whose loopback delivery runs in this process; that
        cost twice epoll's CPU per 64 KiB batch. A short result is fine: the next arm sets
        lowat to what is still owed, never more, so nothing can stall.

        After a payload larger than the read-ahead buffer the next batch is likely large too:
        as epoll's scatter read, its header comes in the same call where it is queued already
        (a RECVMSG whose second iovec is the empty hot buffer's first header), unless the
        connection ends after this batch (exact). After a smaller one the next read-ahead
        read takes whole batches instead: one completion for several of them costs less than
        one each (64 KiB batches: 0.55 against 0.63 receiver CPU-s/GB here; 2 MiB batches:
        0.186 with the header against 0.210 without)."""
        rx = self.rx
        assert rx is not None
        s = conn.session
        cap = rx.lowat_cap
        want = (length if length < cap else cap) if cap else 1
        rx.set_lowat(conn, want)
        # poll first only if the lowat took: an older, larger one could exceed what is owed
        prio = self.poll_first if conn.lowat == want else 0
        if s.exact or s.size < s.max_cap:
            self.ring.prep_recv(conn.fd, addr, length, st.ud(K_RX), 0, ioprio=prio)
            return
        if st.hot is not s.hot:
            st.hot = s.hot
            st.hot_addr = buffer_address(s.hot)
        IOVEC.pack_into(st.msg, MSGHDR.size, addr, length)
        IOVEC.pack_into(st.msg, MSGHDR.size + IOVEC.size, st.hot_addr, BATCH_HEADER_SIZE)
        self.ring.prep_recvmsg(conn.fd, st.msg_addr, st.ud(K_RX), 0, ioprio=prio)

    def _arm_tx(self, conn: Connection) -> None:
        st: UringConn = conn.driver
        ack = conn.ack_sock
        assert ack is not None
        self.ring.prep_poll_add(ack.fileno(), POLLOUT, (st.uid << 12) | K_TX)
        st.tx = True

    # ------------------------------------------------------------------ completions

    def _reap_zombie(self, st: UringConn) -> None:
        """A connection that is no longer ours had an operation complete: once nothing is in
        flight, close its fd if it is a zombie, and forget it."""
        if st.rx or st.tx:
            return
        if st.zombie:
            st.zombie = False
            st.conn.sock.close()
        self.by_uid.pop(st.uid, None)

    def _on_rx(self, st: UringConn, res: int) -> None:
        rx = self.rx
        assert rx is not None
        conn = st.conn
        st.rx = False
        st.gen += 1
        if not rx.owns(conn):
            self._reap_zombie(st)  # closed or handed over while the receive was in flight
            return
        rx.recv_calls += 1
        rx.payload_recv_calls += st.rx_direct
        st.handing = False
        if res > 0:
            if rx.received(conn, res):
                self.to_arm.append(conn)
            return
        if res == 0:
            rx.peer_closed(conn)
            return
        if res == -errno.EINVAL and st.rx_direct and self.poll_first:
            # a kernel before 5.19 refuses IORING_RECVSEND_POLL_FIRST: receive without it
            self.poll_first = 0
            rx.log.info("receiver.uring.no_poll_first")
            self.to_arm.append(conn)
            return
        if res not in (-errno.ECANCELED, -errno.EINTR, -errno.EAGAIN):
            rx.recv_failed(conn, -res)
            return
        if rx.settled(conn) and not conn.session.parked:
            self.to_arm.append(conn)

    def _on_tx(self, st: UringConn) -> None:
        rx = self.rx
        assert rx is not None
        conn = st.conn
        if not rx.owns(conn):
            self._reap_zombie(st)
            return
        rx.on_writable(conn)  # flush; clears want_write when everything went out
        if not rx.owns(conn):
            return
        if st.handing and not st.rx:
            st.handing = False
            rx.settled(conn)
        elif conn.want_write and not st.tx:
            self._arm_tx(conn)
