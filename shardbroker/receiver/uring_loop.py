"""The io_uring receive loop: the same connections, commits, acks, statistics, rejections and
hand-overs as the epoll loop (it subclasses ReceiveLoop), with a different way to wait and read.

Per connection at most one receive *chain* is in flight:

* the handshake (64 bytes), or a batch header after a short read: one RECV + MSG_WAITALL into
  the connection's small header buffer;
* each payload: RECV + MSG_WAITALL straight into the space reserved for it in the shard's
  BLog (an address inside the shared-memory mapping), so the kernel copies payload bytes into
  the log, then, linked, a RECV of the next 128-byte batch header. MSG_WAITALL completes inside
  the kernel: it retries on every wakeup of the socket without coming back here. To keep those
  wakeups few (as SO_RCVLOWAT does for epoll) the payload is split into segments, each preceded
  by a linked SETSOCKOPT(SO_RCVLOWAT) (``plan_segments``): ``[lowat 1 MiB][RECV 1 MiB] ->
  [lowat 512 KiB][RECV 512 KiB] -> ... -> [lowat 1][RECV 128 KiB] -> [RECV header]``. A
  segment's low-water mark never exceeds the bytes still to come after it, so no segment can
  wait for bytes the publisher will never send, and the header is received with lowat 1.
  Without kernel support for linked socket commands (platform/uring.py probes it) the payload
  is one RECV with lowat 1.

Completions per chain: SETSOCKOPTs and all payload RECVs but the last carry CQE_SKIP_SUCCESS.
On success the chain posts twice: the last payload RECV (the batch is committed and acked on
it, even if the publisher then goes quiet) and the header RECV (usually reaped in the same
``io_uring_enter`` when the publisher streams: one trip through this loop per batch). A
skipped member that fails posts the only completion (the kernel silences the links it
cancels); a failing last payload RECV is followed by the header RECV's -ECANCELED.

SQEs for every connection are queued during an iteration and go in with the wait: one
``io_uring_enter`` per loop iteration (submit, then wait for completions or the next
statistics tick). With several connections the wait asks for one completion per connection
but returns ``MIN_WAIT_US`` after the first one at the latest (IORING_FEAT_MIN_TIMEOUT), so
completions are reaped in batches. The control socket (and a receiver-side SO_REUSEPORT
listener) are watched with one-shot POLL_ADDs. Acks go out with a plain non-blocking ``send``
once their batch is committed; a full send buffer arms a POLLOUT poll on the ack socket.

Completions: bytes that arrived are applied first (a short chain, e.g. after a signal, is
resubmitted for the remainder); then ``res == 0`` is the peer closing (mid-batch: counted,
nothing committed, as epoll) and ``res < 0`` an error that closes that connection only. A
batch is committed only when the completion that brings its last byte has been reaped.

What the kernel may still touch after this code lets go of a connection:

* A linked request resolves its fd number when it starts, and one that is queued in task work
  can be missed by a cancellation. So a connection closed with a chain in flight becomes a
  *zombie*: its socket is shut down (a pending or later RECV then returns at once) and
  cancelled, but the fd stays open until the chain's completion is reaped (``by_uid`` also
  keeps the header buffer alive until then).
* A zombie's RECV may still copy bytes that were already queued into its (abandoned) BLog
  space; while any zombie has a payload chain in flight no new payload RECV is armed, so two
  requests never target the same BLog bytes (this is what makes the lapped-in-flight case
  safe: the lapped connection is rejected, and the newer reservation waits for it).
* A hand-over (live scaling) happens only with nothing in flight for the connection: the idle
  header RECV is cancelled, and the socket goes when the cancellation's completion says no
  byte was taken (bytes that did arrive are processed first; the hand-over then waits for the
  next batch boundary, as under epoll).

``user_data`` = ``uid << 12 | gen << 8 | segment << 3 | kind``: ``uid`` is a per-connection
number never reused (fd numbers are), ``gen`` the connection's chain generation (a completion
of an earlier chain is ignored), ``segment`` the chain member.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import socket
import time
from collections.abc import Callable
from typing import Any

from shardbroker.config import Config
from shardbroker.platform import linux
from shardbroker.platform.uring import (
    IORING_FEAT_MIN_TIMEOUT,
    IOSQE_CQE_SKIP_SUCCESS,
    IOSQE_IO_LINK,
    POLLIN,
    POLLOUT,
    SETUP_FLAG_NAMES,
    SO_RCVLOWAT,
    SOL_SOCKET,
    Ring,
    buffer_address,
    flag_names,
)
from shardbroker.receiver.connection import PHASE_HANDSHAKE, PHASE_PAYLOAD, Connection
from shardbroker.receiver.loop import STATS_INTERVAL_S, ReceiveLoop
from shardbroker.segment.writer import ShardWriter
from shardbroker.wire.protocol import BATCH_HEADER_SIZE, HANDSHAKE_SIZE, ProtocolError

K_RX = 1  # RECV (header, or a payload segment)
K_TX = 2  # POLLOUT on the ack socket
K_CONTROL = 3  # POLLIN on the supervisor's control socket
K_LISTEN = 4  # POLLIN on a receiver-side SO_REUSEPORT listener
K_CANCEL = 5  # ASYNC_CANCEL (its own completion carries nothing we need)
K_SOPT = 6  # SETSOCKOPT(SO_RCVLOWAT) in a payload chain (completes only on failure)
UD_CONTROL = K_CONTROL
UD_LISTEN = K_LISTEN
LINK = IOSQE_IO_LINK | IOSQE_CQE_SKIP_SUCCESS

RING_ENTRIES = 256
CQ_ENTRIES = 4096
SEG_TAIL = 128 << 10  # last payload segment, received with lowat 1
MAX_SEGMENTS = 8
MIN_WAIT_US = 50  # wait this long for the completions expected soon, then reap what is there
MAX_WAIT_NR = 16
DRAIN_TIMEOUT_S = 2.0  # at exit: wait this long for cancelled operations to complete


def plan_segments(left: int, cap: int, tail: int = SEG_TAIL) -> list[tuple[int, int]]:
    """Split a payload of ``left`` bytes into ``[(length, lowat)]``, front first.

    Built from the end: the last ``tail`` bytes with lowat 1, then segments doubling in size,
    each with lowat = min(cap, bytes after it), the front one taking what is left. Every lowat
    is at most the number of bytes still to come after its segment, so each segment's wakeup
    condition is always eventually met by the rest of the batch alone."""
    if not cap or left < 2 * tail:
        return [(left, 1)]
    segs = [(tail, 1)]
    rest = tail
    while rest < left:
        size = left - rest if rest >= cap or len(segs) == MAX_SEGMENTS - 1 else min(
            rest, left - rest)
        segs.append((size, min(cap, rest)))
        rest += size
    segs.reverse()
    return segs


class UringConnection(Connection):
    """A connection plus what the ring needs to know about it."""

    __slots__ = ("uid", "gen", "rx", "tx", "seg_lens", "hdr_len", "blog_busy", "chain_lowat",
                 "handing", "cancel_sent", "zombie", "zombie_blog", "haddr", "opt", "opt_addr")

    def __init__(self, sock: socket.socket, peer: str) -> None:
        super().__init__(sock, peer)
        self.uid = 0
        self.gen = 0  # bumped when a chain ends
        self.rx = False  # a receive chain is queued or in flight
        self.tx = False  # a POLLOUT on the ack socket is queued or in flight
        self.seg_lens: tuple[int, ...] = ()  # payload RECV lengths of the chain in flight
        self.hdr_len = 0  # its header RECV (after the payload, or alone); 0: none
        self.blog_busy = False  # the chain's payload part may still write into the BLog
        self.chain_lowat = 1  # lowat the chain leaves behind when it completes
        self.handing = False  # a hand-over waits for the operations in flight to finish
        self.cancel_sent = False
        self.zombie = False  # closed, fd kept open until the chain in flight completes
        self.zombie_blog = False  # ... and that chain targets the BLog
        self.haddr = buffer_address(self.hbuf)  # hbuf never resizes (hview exports it)
        self.opt = (ctypes.c_int * MAX_SEGMENTS)()  # SO_RCVLOWAT values of the chain
        self.opt_addr = ctypes.addressof(self.opt)


class UringLoop(ReceiveLoop):
    connection_class = UringConnection

    def __init__(self, cfg: Config, writer: ShardWriter, control: socket.socket, log: Any,
                 on_tick: Callable[[ReceiveLoop], None] | None = None,
                 cpu: int | None = None, listener: socket.socket | None = None,
                 setup_flags: int | None = None, lowat_chain: bool = True,
                 min_wait_us: int = MIN_WAIT_US) -> None:
        super().__init__(cfg, writer, control, log, backend="uring", on_tick=on_tick, cpu=cpu,
                         listener=listener)
        self.ring = Ring(RING_ENTRIES, setup_flags, cq_entries=CQ_ENTRIES)
        self.setup_names = flag_names(self.ring.flags, SETUP_FLAG_NAMES)
        # Payload RECVs target base_addr + log_idx. The mapping outlives the loop (the
        # receiver unmaps nothing before exit), and run() reaps every operation in flight
        # before it returns.
        self.base_addr = buffer_address(writer.buf)
        self.lowat_chain = lowat_chain and self.lowat_cap > 0
        self.min_wait_us = min_wait_us
        self.by_uid: dict[int, UringConnection] = {}
        self.next_uid = 1
        self.to_arm: list[UringConnection] = []
        self.blocked: list[UringConnection] = []  # payload arms waiting for zombies
        self.recancel: list[UringConnection] = []
        self.zombie_blogs = 0
        self.ctrl_armed = False
        self.listen_armed = False
        self.resubmits = 0  # chains re-armed for the rest of a short completion

    # ------------------------------------------------------------------ hooks from ReceiveLoop

    def _watch(self, conn: Connection) -> None:
        assert isinstance(conn, UringConnection)
        conn.uid = self.next_uid
        self.next_uid += 1
        self.by_uid[conn.uid] = conn
        # Armed at the end of the iteration: a moved-in connection gets its state restored
        # (phase, lowat) after _adopt returns.
        self.to_arm.append(conn)

    def _on_readable(self, conn: Connection) -> None:
        """ReceiveLoop calls this for a moved-in connection: start receiving on it."""
        assert isinstance(conn, UringConnection)
        self.to_arm.append(conn)

    def _pause_reading(self, conn: Connection) -> None:
        """Nothing to undo: a parked connection simply gets no new receive chain."""

    def _resume_reading(self, conn: Connection) -> None:
        assert isinstance(conn, UringConnection)
        self.to_arm.append(conn)

    def _want_write(self, conn: Connection, on: bool) -> None:
        assert isinstance(conn, UringConnection)
        if conn.want_write == on or conn.ack_sock is None:
            return
        conn.want_write = on
        if on and not conn.tx and not conn.handing:
            self._arm_tx(conn)

    def _close(self, conn: Connection, reason: str) -> None:
        assert isinstance(conn, UringConnection)
        if self.conns.get(conn.fd) is not conn:
            return
        ack = conn.ack_sock
        if conn.tx and ack is not None and ack is not conn.sock:
            # the POLLOUT was armed when submitted: cancel it before ReceiveLoop closes the fd
            self.ring.prep_cancel_fd(ack.fileno(), K_CANCEL)
            self._submit_now()
        super()._close(conn, reason)  # ends in _release

    def _release(self, conn: Connection) -> None:
        assert isinstance(conn, UringConnection)
        if not conn.rx and not (conn.tx and conn.ack_sock is conn.sock):
            conn.sock.close()
            self._forget(conn)
            return
        # Something in flight names this fd: end it, keep the fd until its completion.
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)
        self.ring.prep_cancel_fd(conn.fd, K_CANCEL)
        self._submit_now()
        conn.zombie = True
        if conn.rx and conn.blog_busy:
            conn.zombie_blog = True
            self.zombie_blogs += 1

    def _hand_over(self, conn: Connection) -> None:
        """Hand over only when no SQE for this connection is in flight: cancel and wait."""
        assert isinstance(conn, UringConnection)
        if conn.out_partial or conn.out_latest is not None:
            with contextlib.suppress(OSError):
                conn.flush_acks()
            if conn.out_partial or conn.out_latest is not None:
                conn.handing = False
                return  # acks still pending: try again at the next batch boundary
        if conn.rx or conn.tx:
            conn.handing = True
            if not conn.cancel_sent:
                # Only an idle connection gets here with a chain in flight: a single header
                # RECV, armed when it was submitted, so a cancellation finds it.
                if conn.rx:
                    self.ring.prep_cancel(self._ud(conn, len(conn.seg_lens), K_RX),
                                          (conn.uid << 12) | K_CANCEL)
                if conn.tx:
                    self.ring.prep_cancel((conn.uid << 12) | K_TX, (conn.uid << 12) | K_CANCEL)
                conn.cancel_sent = True
            return  # the completions come back to _after_chain / _on_tx
        conn.handing = False
        if conn.lowat != 1:
            with contextlib.suppress(OSError):
                linux.set_rcvlowat(conn.sock, 1)
                conn.lowat = 1
        super()._hand_over(conn)
        if self.conns.get(conn.fd) is not conn:
            self._forget(conn)
        else:
            self.to_arm.append(conn)  # not handed over after all (e.g. send_fds failed)

    def close_listener(self) -> None:
        if self.listener is not None and self.listen_armed:
            self.ring.prep_cancel(UD_LISTEN, K_CANCEL)
            self._submit_now()  # before the fd closes
        super().close_listener()

    # ------------------------------------------------------------------ submissions

    def _submit_now(self) -> None:
        self.ring.submit()
        self.uring_enters += 1

    @staticmethod
    def _ud(conn: UringConnection, seg: int, kind: int) -> int:
        return (conn.uid << 12) | ((conn.gen & 15) << 8) | (seg << 3) | kind

    def _forget(self, conn: UringConnection) -> None:
        if not conn.rx and not conn.tx:
            self.by_uid.pop(conn.uid, None)

    def _arm(self, conn: UringConnection) -> None:
        """Queue the next receive chain: the rest of the header, or the rest of the payload
        followed by the next batch header."""
        if conn.rx or conn.handing or conn.parked or self.conns.get(conn.fd) is not conn:
            return
        ring = self.ring
        if conn.phase != PHASE_PAYLOAD:
            if conn.lowat != 1:  # after a broken chain (or from another receiver)
                try:
                    linux.set_rcvlowat(conn.sock, 1)
                except OSError:
                    pass
                else:
                    conn.lowat = 1
                    self.lowat_sets += 1
            need = conn.header_need
            if conn.hfill:
                self.resubmits += 1
            conn.seg_lens = ()
            conn.hdr_len = need
            conn.chain_lowat = conn.lowat
            ring.prep_recv(conn.fd, conn.haddr + conn.hfill, need, self._ud(conn, 0, K_RX))
            conn.rx = True
            return
        if self.zombie_blogs:
            self.blocked.append(conn)  # a closed connection may still write into the BLog
            return
        res = conn.res
        assert res is not None
        left = conn.left
        if left < res.size:
            self.resubmits += 1
        addr = self.base_addr + res.log_idx + res.size - left
        fd = conn.fd
        if self.lowat_chain:
            segs = plan_segments(left, self.lowat_cap)
        else:
            segs = [(left, 1)]
            if conn.lowat != 1:
                with contextlib.suppress(OSError):
                    linux.set_rcvlowat(conn.sock, 1)
                    conn.lowat = 1
                    self.lowat_sets += 1
        last = len(segs) - 1
        ring.reserve(2 * len(segs) + 1)  # a chain goes in whole
        lowat = conn.lowat
        opt, opt_addr = conn.opt, conn.opt_addr
        base = (conn.uid << 12) | ((conn.gen & 15) << 8)
        for i, (length, want) in enumerate(segs):
            if want != lowat:
                opt[i] = want
                ring.prep_setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, opt_addr + 4 * i, 4,
                                     base | (i << 3) | K_SOPT, LINK)
                lowat = want
                self.lowat_sets += 1
            # the last payload RECV reports (the batch commits on it), then links on
            ring.prep_recv(fd, addr, length, base | (i << 3) | K_RX,
                           sqe_flags=IOSQE_IO_LINK if i == last else LINK)
            addr += length
        # The next batch header, fixed size: reaped with the payload's completion when the
        # publisher streams, so a batch costs one trip through this loop, not two.
        ring.prep_recv(fd, conn.haddr, BATCH_HEADER_SIZE, base | ((last + 1) << 3) | K_RX)
        conn.seg_lens = tuple(n for n, _ in segs)
        conn.hdr_len = BATCH_HEADER_SIZE
        conn.chain_lowat = lowat
        conn.blog_busy = True
        conn.rx = True

    def _arm_tx(self, conn: UringConnection) -> None:
        ack = conn.ack_sock
        assert ack is not None
        self.ring.prep_poll_add(ack.fileno(), POLLOUT, (conn.uid << 12) | K_TX)
        conn.tx = True

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        ring = self.ring
        conns = self.conns
        by_uid = self.by_uid
        ctrl_fd = self.control.fileno()
        min_wait = self.min_wait_us if self.ring.features & IORING_FEAT_MIN_TIMEOUT else 0
        next_stats = time.monotonic() + STATS_INTERVAL_S
        leaving = False
        try:
            while not leaving:
                if not self.ctrl_armed:
                    ring.prep_poll_add(ctrl_fd, POLLIN, UD_CONTROL)
                    self.ctrl_armed = True
                if self.listener is not None and not self.listen_armed:
                    ring.prep_poll_add(self.listener.fileno(), POLLIN, UD_LISTEN)
                    self.listen_armed = True
                if self.to_arm:
                    todo, self.to_arm = self.to_arm, []
                    for uc in todo:
                        self._arm(uc)
                if self.recancel:
                    todo, self.recancel = self.recancel, []
                    for uc in todo:
                        if uc.handing and uc.rx and conns.get(uc.fd) is uc:
                            self._hand_over(uc)
                timeout = self._wait_s(next_stats)
                if min_wait and conns:
                    # completions to expect soon: a payload chain reports twice (its last
                    # payload RECV, then the next header), a header RECV once
                    want = MAX_WAIT_NR
                    if len(conns) < MAX_WAIT_NR:
                        want = 0
                        for c in conns.values():
                            if c.rx:  # type: ignore[attr-defined]
                                want += 2 if c.blog_busy else 1  # type: ignore[attr-defined]
                    ring.enter(timeout, min(max(want, 1), MAX_WAIT_NR), min_wait)
                else:
                    ring.enter(timeout)
                self.uring_enters += 1
                cqes = ring.reap()
                if cqes:
                    self.wakeups += 1
                    self.uring_completions += len(cqes)
                    for ud, res, _flags in cqes:
                        kind = ud & 7
                        if kind in (K_RX, K_SOPT):
                            conn = by_uid.get(ud >> 12)
                            if conn is not None and (ud >> 8) & 15 == conn.gen & 15 and conn.rx:
                                self._after_chain(conn, (ud >> 3) & 31, kind, res)
                        elif kind == K_TX:
                            conn = by_uid.get(ud >> 12)
                            if conn is not None and conn.tx:
                                conn.tx = False
                                self._on_tx(conn)
                        elif kind == K_CANCEL:
                            conn = by_uid.get(ud >> 12)
                            if conn is not None and res < 0:
                                self._on_cancel(conn, res)
                        elif kind == K_CONTROL:
                            self.ctrl_armed = False
                            # the supervisor is gone: finish this batch of completions first
                            leaving = not self._on_control()
                        elif kind == K_LISTEN:
                            self.listen_armed = False
                            if self.listener is not None:
                                self._accept()
                now = time.monotonic()
                # (progress inside one RECV shows when it completes: a header trickled in
                # byte by byte counts as idle for the timeouts until all 128 bytes are there)
                next_stats = self._periodic(now, next_stats)
                if self._stop_due(now):
                    return
        finally:
            self.flush_stats()
            for c in list(conns.values()):
                self._close(c, "")
            self._drain()
            ring.close()
            self.ep.close()

    def _drain(self) -> None:
        """Reap every operation still in flight, so the kernel no longer holds our sockets or
        writes into the segment or header buffers once the ring is gone."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while any(c.rx or c.tx for c in self.by_uid.values()):
            left = deadline - time.monotonic()
            if left <= 0:
                self.log.warning("receiver.uring.drain_timeout",
                                 in_flight=sum(c.rx + c.tx for c in self.by_uid.values()))
                break
            self.ring.enter(min(left, 0.1))
            self.uring_enters += 1
            for ud, res, _flags in self.ring.reap():
                c = self.by_uid.get(ud >> 12)
                if c is None:
                    continue
                kind = ud & 7
                if kind in (K_RX, K_SOPT) and (ud >> 8) & 15 == c.gen & 15:
                    self._after_chain(c, (ud >> 3) & 31, kind, res)
                elif kind == K_TX:
                    c.tx = False
                    self._reap_zombie(c)
        for c in list(self.by_uid.values()):
            if c.zombie:
                c.sock.close()
        self.by_uid.clear()

    # ------------------------------------------------------------------ completions

    def _reap_zombie(self, conn: UringConnection) -> None:
        """A connection that is no longer ours had an operation complete: once nothing is
        in flight, close its fd if it is a zombie, and forget it."""
        if conn.rx or conn.tx:
            return
        if conn.zombie:
            conn.zombie = False
            conn.sock.close()
        self.by_uid.pop(conn.uid, None)

    def _after_chain(self, conn: UringConnection, seg: int, kind: int, res: int) -> None:
        """A completion of the receive chain in flight. A chain posts: on success, its last
        payload RECV's and its header RECV's; on a failure, the failing member's (a skipped
        member silences the rest; the last payload RECV's failure cancels the header RECV,
        which then reports -ECANCELED)."""
        lens = conn.seg_lens
        nseg = len(lens)
        if seg < nseg or kind == K_SOPT:  # the payload part
            got = sum(lens[:seg]) + (res if kind == K_RX and res > 0 else 0)
            ran = seg + (kind == K_RX)
            last = kind == K_RX and seg == nseg - 1
            if last and res == lens[seg]:
                conn.lowat = conn.chain_lowat
            elif nseg > 1 or kind == K_SOPT:
                conn.lowat = -1  # the chain stopped part-way: which lowat is set is unknown
            done = not last  # after the last payload RECV, the header RECV still reports
            conn.blog_busy = False
            if conn.zombie_blog:
                conn.zombie_blog = False
                self.zombie_blogs -= 1
                if not self.zombie_blogs and self.blocked:
                    self.to_arm.extend(self.blocked)
                    self.blocked.clear()
        else:  # the header RECV
            got = res if res > 0 else 0
            ran = 1
            done = True
        if done:
            conn.rx = False
            conn.gen += 1
        if self.conns.get(conn.fd) is not conn:
            self._reap_zombie(conn)  # closed or handed over while the chain was in flight
            return
        self.recv_calls += ran
        conn.recvs += ran
        if seg < nseg:
            self.payload_recv_calls += ran
        if got:
            self._on_received(conn, got)
            if self.conns.get(conn.fd) is not conn:
                return
        if res == 0 and kind == K_RX:
            self._peer_closed(conn)
            return
        if res < 0 and res not in (-errno.ECANCELED, -errno.EINTR, -errno.EAGAIN):
            if kind == K_SOPT:
                self.lowat_chain = False  # this kernel cannot; plain RECVs from now on
                self.log.warning("receiver.uring.lowat_chain_off", peer=conn.peer,
                                 error=errno.errorcode.get(-res, str(-res)))
            else:
                self._on_error(conn, -res)
                return
        if not done:
            return
        if conn.handing or conn.moving:
            if conn.in_batch or conn.phase == PHASE_HANDSHAKE:
                conn.handing = False  # bytes came in after all: hand over at the boundary
            else:
                self._hand_over(conn)
                if self.conns.get(conn.fd) is not conn:
                    return
        if not conn.handing:
            conn.cancel_sent = False
            self._arm(conn)

    def _on_cancel(self, conn: UringConnection, res: int) -> None:
        """A hand-over's cancellation found nothing (the header RECV may not have been armed
        yet, e.g. still queued behind its link): try again next iteration."""
        if res < 0 and conn.handing and conn.rx and self.conns.get(conn.fd) is conn:
            conn.cancel_sent = False
            self.recancel.append(conn)

    def _on_received(self, conn: UringConnection, n: int) -> None:
        try:
            if conn.phase == PHASE_PAYLOAD:
                left = conn.left - n
                conn.left = left
                if left:
                    return  # short: _after_chain resubmits the rest
                self._complete_batch(conn)
                if (conn.closing or conn.moving) and not self._at_boundary(conn):
                    return
                if conn.out_latest is not None and not conn.want_write:
                    self._send_acks(conn)
                return
            fill = conn.hfill + n
            conn.hfill = fill
            if conn.phase == PHASE_HANDSHAKE:
                if fill < HANDSHAKE_SIZE:
                    return
                self._on_handshake(conn)
                if conn.moving:
                    self._at_boundary(conn)
            elif not conn.header_need:
                self._on_header(conn)
        except ProtocolError as exc:
            self._reject(conn, str(exc.reason), exc.detail)

    def _on_error(self, conn: UringConnection, err: int) -> None:
        if err in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.EHOSTUNREACH):
            self._peer_closed(conn)  # a reset is a close: same counters as epoll
            return
        self.disconnects_mid_batch += int(conn.in_batch)
        self.log.warning("receiver.uring.recv_failed", peer=conn.peer,
                         error=errno.errorcode.get(err, str(err)), phase=conn.phase)
        self._close(conn, f"uring.recv_failed:{errno.errorcode.get(err, str(err))}")

    def _on_tx(self, conn: UringConnection) -> None:
        if self.conns.get(conn.fd) is not conn:
            self._reap_zombie(conn)
            return
        self._on_writable(conn)  # flush; clears want_write when everything went out
        if self.conns.get(conn.fd) is not conn:
            return
        if conn.handing:
            self._hand_over(conn)
        elif conn.want_write and not conn.tx:
            self._arm_tx(conn)
