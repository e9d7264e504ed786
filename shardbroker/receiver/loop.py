"""The epoll receive loop of one receiver process (one shard, one CPU).

For every readable connection it drains until EAGAIN: headers go into a 128-byte per-connection
buffer, payloads are ``recv_into`` the space reserved in the shard's BLog (no staging copy).
SO_RCVLOWAT is re-armed only when the loop is about to wait, to ``min(bytes left in the batch,
cap)``: fewer wakeups per batch, and never more than the publisher is bound to send (a static
value would stall a batch's tail when the publisher goes idle waiting for its ack).
Statistics are plain int attributes, written to the shard header twice a second.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import select
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from shardbroker.config import Config
from shardbroker.errors import SegmentError
from shardbroker.platform import linux
from shardbroker.receiver.connection import (
    PHASE_HANDSHAKE,
    PHASE_HEADER,
    PHASE_PAYLOAD,
    Connection,
)
from shardbroker.segment.layout import last_committed_batch_seq
from shardbroker.segment.writer import ShardWriter
from shardbroker.wire.protocol import (
    BATCH_HEADER_SIZE,
    Limits,
    ProtocolError,
    Reason,
    check_message_framing,
    decode_batch_header,
    encode_control_frame,
    parse_handshake,
)

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
LOWAT_MIN = 64 << 10  # below this a batch tail is read on the next wakeup anyway
SCATTER_MAX = 256 << 10  # payload tails up to this are read together with the next header
DRAIN_BUDGET = 16 << 20  # bytes per connection per wakeup, so one publisher cannot starve others
STATS_INTERVAL_S = 0.5  # shard-header counters (read by dump, demo, tests)
HIST_BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # recv calls per batch: <=1, <=2, ... , 64+
LATENCY_RING = 4096  # commit latencies kept for p50/p99 per snapshot
BLOCK_RECHECK_S = 0.001  # retention `block`: how often parked connections look for room


def hist_bucket(n: int) -> int:
    """Index into HIST_BUCKETS for ``n`` recv calls: 1->0, 2->1, 3-4->2, ..., 33+->6."""
    return min(6, (n - 1).bit_length()) if n > 0 else 0


def percentile(sorted_values: list[int], q: float) -> int:
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class ReceiveLoop:
    """The epoll backend, and the connection/commit/ack/stats/hand-over logic every backend
    shares (receiver/uring_loop.py subclasses it; receiver/backend.py picks one)."""

    connection_class: type[Connection] = Connection  # a backend may keep more per connection

    def __init__(self, cfg: Config, writer: ShardWriter, control: socket.socket, log: Any,
                 backend: str = "epoll",
                 on_tick: Callable[[ReceiveLoop], None] | None = None,
                 cpu: int | None = None, listener: socket.socket | None = None) -> None:
        self.cfg = cfg
        self.writer = writer
        self.buf = writer.buf
        self.control = control
        self.log = log
        self.backend = backend
        self.limits = Limits(cfg.limits.max_batch_bytes, cfg.limits.max_messages_per_batch,
                             cfg.limits.max_message_bytes)
        self.lowat_cap = cfg.socket.rcvlowat_cap
        self.validate_payload = cfg.limits.validate_payload
        self.ep = select.epoll()
        self.conns: dict[int, Connection] = {}
        self.ack_owner: dict[int, Connection] = {}  # back-channel ack fd -> its connection
        self.in_flight: dict[int, Connection] = {}  # fd -> connection with a BLog reservation
        self.stopping = False
        self.stop_deadline = 0.0
        self.on_tick = on_tick  # called every STATS_INTERVAL_S (metrics publishing)
        self.moves_wanted = 0  # connections the supervisor asked us to hand over
        self.retiring = False  # hand over everything, take nothing new, then exit
        self.retired_sent = False
        self.moved_out = 0
        self.moved_in = 0
        s = cfg.socket
        self.socket_requests: dict[str, int] = {
            "rcvbuf": s.rcvbuf, "rcvbuf_force": int(s.rcvbuf_force),
            "busy_poll_us": s.busy_poll_us, "prefer_busy_poll": int(s.prefer_busy_poll),
            "nodelay": int(s.nodelay), "quickack": int(s.quickack),
        }
        if s.incoming_cpu and cpu is not None:
            self.socket_requests["incoming_cpu"] = cpu
        self.socket_options: dict[str, linux.AppliedOption] = {}
        self.listener = listener  # SO_REUSEPORT accept mode: this receiver accepts itself
        # statistics (plain ints: the hot path must not pay for metrics)
        self.recv_calls = 0
        self.payload_recv_calls = 0
        self.eagain = 0
        self.wakeups = 0
        self.connections_total = 0
        self.rejected = 0
        self.rejected_by_reason: Counter[str] = Counter()
        self.disconnects_mid_batch = 0
        self.rcvbuf_min = 0
        self.rcvbuf_max = 0
        self.lowat_sets = 0
        self.acks_sent = 0
        self.lapped_in_flight = 0
        self.duplicates_skipped = 0  # resent batches already committed (acked, not again)
        self.geometry = writer.geometry
        self.batches = 0
        self.messages = 0
        self.bytes = 0
        self.recv_hist = [0] * len(HIST_BUCKETS)
        self.latency_ns = [0] * LATENCY_RING
        self.latency_count = 0
        self.backpressured_s = 0.0  # time with connections parked (retention `block`)
        self.parked: dict[int, Connection] = {}  # fd -> connection waiting for segment room
        self.parked_since = 0.0
        self.parks = 0  # times a batch had to wait for a consumer
        self.uring_enters = 0  # io_uring_enter calls (uring backend; 0 here)
        self.uring_completions = 0  # CQEs reaped (uring backend; 0 here)
        self.backend_fallback = ""  # why `auto` did not get io_uring ("" = it was not asked)

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        self.ep.register(self.control.fileno(), EPOLLIN)
        if self.listener is not None:
            self.ep.register(self.listener.fileno(), EPOLLIN)
        listen_fd = self.listener.fileno() if self.listener is not None else -2
        next_stats = time.monotonic() + STATS_INTERVAL_S
        ctrl_fd = self.control.fileno()
        conns = self.conns
        try:
            while True:
                try:
                    events = self.ep.poll(self._wait_s(next_stats))
                except InterruptedError:
                    continue
                if events:
                    self.wakeups += 1
                for fd, ev in events:
                    conn = conns.get(fd)
                    if conn is not None:
                        if ev & EPOLLOUT:
                            self._on_writable(conn)
                        if ev & ~EPOLLOUT and fd in conns:
                            if not conn.parked:
                                self._on_readable(conn)
                            elif ev & (select.EPOLLERR | select.EPOLLHUP):
                                self._peer_closed(conn)  # reported even with no events asked
                    elif fd == ctrl_fd:
                        if not self._on_control():
                            return
                    elif fd == listen_fd:
                        self._accept()
                    else:
                        owner = self.ack_owner.get(fd)
                        if owner is not None:
                            self._on_writable(owner)
                now = time.monotonic()
                next_stats = self._periodic(now, next_stats)
                if self._stop_due(now):
                    return
        finally:
            self.flush_stats()
            for c in list(conns.values()):
                self._close(c, "")
            self.ep.close()

    def _wait_s(self, next_stats: float) -> float:
        """How long the loop may sleep (both backends): until the next stats tick, or the next
        look for room while connections are parked."""
        timeout = max(0.0, next_stats - time.monotonic())
        return min(timeout, BLOCK_RECHECK_S) if self.parked else timeout

    def _periodic(self, now: float, next_stats: float) -> float:
        """After every loop iteration (both backends): parked connections look for room; every
        STATS_INTERVAL_S, timeouts, shard-header counters and metrics."""
        if self.parked:
            self.retry_parked(now)
        if now < next_stats:
            return next_stats
        self.sweep_timeouts(now)
        self.flush_stats()
        if self.on_tick is not None:
            self.on_tick(self)
        return now + STATS_INTERVAL_S

    def _stop_due(self, now: float) -> bool:
        """Stopping, and nothing is left in flight (or the grace is over): close the rest."""
        if not self.stopping or (self.conns and now < self.stop_deadline):
            return False
        for c in list(self.conns.values()):
            self._close(c, "receiver.stop_deadline" if c.in_batch else "")
        return True

    def _on_control(self) -> bool:
        """Messages from the supervisor. False: leave the loop."""
        try:
            msg, fds, _flags, _addr = socket.recv_fds(self.control, 256, 64)
        except (BlockingIOError, InterruptedError):
            return True
        except ConnectionError:
            msg, fds = b"", []
        if not msg:
            self.log.warning("receiver.supervisor_gone")
            for fd in fds:
                os.close(fd)
            return False
        if msg.startswith(b"conn"):
            for fd in fds:
                self._adopt(fd)
        elif msg.startswith(b"adopt "):
            self._adopt_moved(json.loads(msg[6:]), fds)
        elif msg.startswith(b"handoff "):
            arg = msg[8:].decode()
            if arg == "all":
                self.close_listener()
                self.retiring = True
                self.moves_wanted = len(self.conns)
            else:
                self.moves_wanted = max(0, min(int(arg), len(self.conns)))
            self._start_moves()
        elif msg.startswith(b"drain"):
            self.close_listener()
        elif msg.startswith(b"stop"):
            self._begin_stop()
        else:
            for fd in fds:
                os.close(fd)
            self.log.warning("receiver.control.unknown", message=msg[:32].decode("latin-1"))
        return True

    def _accept(self) -> None:
        assert self.listener is not None
        for _ in range(64):
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.warning("receiver.accept_failed", error=str(exc))
                return
            fd = sock.detach()
            if self._adopt(fd) is not None:
                with contextlib.suppress(OSError):
                    self.control.send(b"opened")

    def close_listener(self) -> None:
        if self.listener is not None:
            with contextlib.suppress(OSError, ValueError):
                self.ep.unregister(self.listener.fileno())
            self.listener.close()
            self.listener = None

    def _begin_stop(self) -> None:
        self.close_listener()
        self.stopping = True
        self.stop_deadline = time.monotonic() + 5.0
        for c in list(self.conns.values()):
            if c.in_batch and not c.parked:
                c.closing = True  # finish the batch in flight, then close
            else:
                self._close(c, "")
        self.log.info("receiver.stopping", batches_in_flight=len(self.conns))

    # ------------------------------------------------------------------ connections

    def _adopt(self, fd: int) -> Connection | None:
        sock = socket.socket(fileno=fd)
        try:
            addr = sock.getpeername()
        except OSError:
            addr = ("?", 0)
        if self.stopping or self.retiring:
            sock.close()
            with contextlib.suppress(OSError):
                self.control.send(b"closed " + str(addr[0]).encode())
            return None
        sock.setblocking(False)
        try:
            peer = "{}:{}".format(*addr[:2])
        except (OSError, IndexError):
            peer = "?"
        # TCP_QUICKACK is not sticky (the kernel may return to delayed acks); it is set once.
        applied = linux.apply_socket_options(sock, self.socket_requests)
        if applied != self.socket_options:
            self._report_socket_options(applied)
        self._note_rcvbuf(sock)
        conn = self.connection_class(sock, peer)
        self.conns[fd] = conn
        self.connections_total += 1
        self._watch(conn)
        return conn

    def _watch(self, conn: Connection) -> None:
        """Start receiving on a new connection (epoll: wait for EPOLLIN)."""
        self.ep.register(conn.fd, EPOLLIN)

    def _at_boundary(self, conn: Connection) -> bool:
        """A batch or the handshake just completed: close or hand the connection over if that
        was asked for. True while the connection is still this receiver's."""
        if conn.closing:
            self._close(conn, "receiver.stop")
            return False
        if conn.moving:
            self._hand_over(conn)
            return self.conns.get(conn.fd) is conn
        return True

    def _report_socket_options(self, applied: dict[str, linux.AppliedOption]) -> None:
        """Log what the kernel applied (once per change), warn where it refused or capped."""
        self.socket_options = applied
        for name, opt in applied.items():
            if opt.applied is None:
                self.log.warning("receiver.socket.option_refused", option=name,
                                 requested=opt.requested, error=opt.error)
            elif name == "SO_RCVBUF" and opt.applied < opt.requested:
                self.log.warning(
                    "receiver.socket.rcvbuf_capped", requested=opt.requested,
                    applied=opt.applied,
                    hint="raise net.core.rmem_max (tools/tune_kernel_buffers.sh --apply) "
                         "or set socket.rcvbuf_force as root")
        self.log.info("receiver.socket.options", **{
            n: o.applied if o.applied is not None else f"refused: {o.error}"
            for n, o in applied.items()})

    # ------------------------------------------------------------------ live rebalancing

    def _adopt_moved(self, state: dict[str, Any], fds: list[int]) -> None:
        """Continue a connection another receiver handed over at a batch boundary."""
        if not fds:
            return
        ack_sock = None
        if state.get("separate_ack") and len(fds) > 1:
            ack_sock = socket.socket(fileno=fds[1])
            ack_sock.setblocking(False)
        conn = self._adopt(fds[0])
        if conn is None:
            if ack_sock is not None:
                ack_sock.close()
            return
        conn.restore(state, ack_sock)
        self.moved_in += 1
        # bytes of the next batch may already be queued: read them without waiting for epoll
        self._on_readable(conn)

    def _start_moves(self) -> None:
        """Mark connections to hand over; idle ones (at a batch boundary) go at once."""
        candidates = sorted(self.conns.values(), key=lambda c: c.in_batch)
        for conn in candidates:
            if self.moves_wanted <= 0:
                break
            if conn.moving:
                continue
            conn.moving = True
            self.moves_wanted -= 1
            if not conn.in_batch and conn.phase != PHASE_HANDSHAKE:
                self._hand_over(conn)
        self._maybe_retired()

    def _maybe_retired(self) -> None:
        if self.retiring and not self.conns and not self.retired_sent:
            self.retired_sent = True
            self.control.send(b"retired")

    def _hand_over(self, conn: Connection) -> None:
        """Send the socket(s) and protocol state to the supervisor for another receiver."""
        if conn.out_partial or conn.out_latest is not None:
            with contextlib.suppress(OSError):
                conn.flush_acks()
            if conn.out_partial or conn.out_latest is not None:
                return  # acks still pending: try again at the next batch boundary
        fds = [conn.fd]
        if conn.ack_sock is not None and conn.ack_sock is not conn.sock:
            fds.append(conn.ack_sock.fileno())
        try:
            socket.send_fds(self.control, [b"move " + json.dumps(conn.state()).encode()], fds)
        except OSError as exc:
            self.log.warning("receiver.handoff_failed", peer=conn.peer, error=str(exc))
            conn.moving = False
            return
        self.conns.pop(conn.fd, None)
        self.in_flight.pop(conn.fd, None)
        with contextlib.suppress(OSError, ValueError):
            self.ep.unregister(conn.fd)
        if len(fds) > 1 and conn.ack_sock is not None:
            self.ack_owner.pop(conn.ack_sock.fileno(), None)
            with contextlib.suppress(OSError, ValueError):
                self.ep.unregister(conn.ack_sock.fileno())
            conn.ack_sock.close()
        conn.sock.close()  # our copy only: the TCP connection lives on in the other receiver
        self.moved_out += 1
        self._maybe_retired()

    def _note_rcvbuf(self, sock: socket.socket) -> None:
        try:
            v = linux.rcvbuf(sock)
        except OSError:
            return
        self.rcvbuf_min = v if not self.rcvbuf_min else min(self.rcvbuf_min, v)
        self.rcvbuf_max = max(self.rcvbuf_max, v)

    def _close(self, conn: Connection, reason: str) -> None:
        fd = conn.fd
        if self.conns.pop(fd, None) is None:
            return
        self.in_flight.pop(fd, None)
        if self.parked.pop(fd, None) is not None and not self.parked:
            self.backpressured_s += time.monotonic() - self.parked_since
        if conn.out_latest is not None or conn.out_partial:
            # best effort: the last count still tells the publisher what is committed
            with contextlib.suppress(OSError):
                conn.flush_acks()
        self._note_rcvbuf(conn.sock)
        with contextlib.suppress(OSError, ValueError):
            self.ep.unregister(fd)
        if conn.ack_sock is not None and conn.ack_sock is not conn.sock:
            self.ack_owner.pop(conn.ack_sock.fileno(), None)
            with contextlib.suppress(OSError, ValueError):
                self.ep.unregister(conn.ack_sock.fileno())
            conn.ack_sock.close()
        conn.target = None
        self._release(conn)
        if reason:
            self.log.info("receiver.connection.closed", peer=conn.peer, reason=reason,
                          batches=conn.batches)
        # so dump and tests see final counters as soon as publishers are gone
        self.writer.write_stats(self.stats_tuple())
        with contextlib.suppress(OSError):
            self.control.send(b"closed " + conn.source.encode())

    def _release(self, conn: Connection) -> None:
        """Close a closed connection's socket (a backend whose kernel requests may still name
        the fd closes it once they are done)."""
        conn.sock.close()

    def _reject(self, conn: Connection, reason: str, detail: str) -> None:
        """Close one connection for a violation: tell the publisher why, count it, log it."""
        self.rejected += 1
        self.rejected_by_reason[reason] += 1
        self.log.warning("receiver.connection.rejected", peer=conn.peer, reason=reason,
                         detail=detail, batches=conn.batches)
        target = conn.ack_sock if conn.ack_sock is not None else conn.sock
        try:
            if conn.out_partial:
                target.send(conn.out_partial)
            target.send(encode_control_frame(f"{reason}: {detail}"))
        except OSError:
            pass
        self._close(conn, "")

    def _peer_closed(self, conn: Connection) -> None:
        if conn.in_batch or (conn.phase == PHASE_HANDSHAKE and conn.hfill):
            self.disconnects_mid_batch += 1
            reason = (Reason.PEER_CLOSED_MID_HANDSHAKE if conn.phase == PHASE_HANDSHAKE
                      else Reason.PEER_CLOSED_MID_BATCH)
            self.rejected_by_reason[str(reason)] += 1  # per-reason counter, like rejections
            self.log.warning("receiver.connection.closed_mid_batch", peer=conn.peer,
                             reason=str(reason), batch_seq=conn.batch_seq,
                             bytes_missing=conn.left)
            self._close(conn, "")
        else:
            self._close(conn, "peer.closed")

    # ------------------------------------------------------------------ receive path

    def _on_readable(self, conn: Connection) -> None:
        sock = conn.sock
        budget = DRAIN_BUDGET
        try:
            while True:
                if conn.phase == PHASE_PAYLOAD:
                    left = conn.left
                    try:
                        if left <= SCATTER_MAX and not (conn.moving or conn.closing):
                            # one syscall for the payload's tail and the next batch header
                            n = sock.recvmsg_into([conn.target, conn.hview])[0]  # type: ignore[list-item]
                        else:
                            n = sock.recv_into(conn.target, left)  # type: ignore[arg-type]
                    except BlockingIOError:
                        self.recv_calls += 1
                        self.payload_recv_calls += 1
                        self.eagain += 1
                        conn.recvs += 1
                        self._rearm_lowat(conn)
                        break
                    self.recv_calls += 1
                    self.payload_recv_calls += 1
                    conn.recvs += 1
                    if n == 0:
                        self._peer_closed(conn)
                        return
                    budget -= n
                    if n < left:
                        conn.left = left - n
                        conn.target = conn.target[n:]  # type: ignore[index]
                        continue
                    conn.left = 0
                    self._complete_batch(conn)
                    if n > left:  # the next header's first bytes came with it
                        conn.hfill = n - left
                        if conn.hfill == BATCH_HEADER_SIZE:
                            self._on_header(conn)
                            if conn.parked:
                                break
                        if budget <= 0:
                            break
                        continue
                    if (conn.closing or conn.moving) and not self._at_boundary(conn):
                        return
                    if budget <= 0:
                        break
                else:
                    need = conn.header_need
                    fill = conn.hfill
                    try:
                        n = sock.recv_into(conn.hview[fill: fill + need], need)
                    except BlockingIOError:
                        self.recv_calls += 1
                        self.eagain += 1
                        conn.recvs += 1
                        self._rearm_lowat(conn)
                        break
                    self.recv_calls += 1
                    conn.recvs += 1
                    if n == 0:
                        self._peer_closed(conn)
                        return
                    conn.hfill = fill + n
                    if n < need:
                        continue
                    if conn.phase == PHASE_HANDSHAKE:
                        self._on_handshake(conn)
                        if conn.moving and not self._at_boundary(conn):
                            return
                    else:
                        self._on_header(conn)
                        if conn.parked:
                            break
        except ProtocolError as exc:
            self._reject(conn, str(exc.reason), exc.detail)
            return
        except OSError as exc:
            if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.EHOSTUNREACH):
                self._peer_closed(conn)  # a reset is a close: same counters, same cleanup
                return
            raise
        if conn.out_latest is not None and not conn.want_write:
            self._send_acks(conn)

    def _rearm_lowat(self, conn: Connection) -> None:
        """About to wait on this connection: wake only when this many bytes are queued."""
        cap = self.lowat_cap
        if not cap:
            return
        if conn.phase == PHASE_PAYLOAD:
            left = conn.left
            want = (left if left < cap else cap) if left >= LOWAT_MIN else 1
        elif conn.lowat > conn.header_need:
            want = 1
        else:
            return
        if want != conn.lowat:
            try:
                linux.set_rcvlowat(conn.sock, want)
            except OSError:
                return
            conn.lowat = want
            self.lowat_sets += 1

    def _on_handshake(self, conn: Connection) -> None:
        hs = parse_handshake(conn.hview[:64])
        conn.handshake = hs
        # A reconnecting publisher resends what was not acked: batches already committed
        # (in any shard) are received and acked but not committed twice.
        last = last_committed_batch_seq(self.buf, self.geometry, hs.client_id)
        conn.dedupe_below = 0 if last is None else last + 1
        conn.hfill = 0
        conn.phase = PHASE_HEADER
        try:
            conn.topic_idx = self.writer.topic_index(hs.topic)
        except SegmentError as exc:
            raise ProtocolError(Reason.TOPIC_TABLE_FULL, exc.message) from exc
        if hs.ack >= 1:
            if hs.port == 0:
                conn.ack_sock = conn.sock
            else:
                conn.ack_sock = self._connect_back(conn, hs.port)
            conn.start_ack_stream(self.writer.broker_id)
            self._send_acks(conn)
        self.log.debug("receiver.connection.handshake", peer=conn.peer, client_id=hs.client_id,
                       topic=hs.topic, ack=hs.ack, ack_port=hs.port)

    def _connect_back(self, conn: Connection, port: int) -> socket.socket:
        """Embarcadero style: acks go to a listener the publisher opened at ``port``."""
        host = conn.sock.getpeername()[0]
        try:
            # Bounded: this blocks the loop, so only briefly, once per such connection.
            ack = socket.create_connection((host, port), timeout=1.0)
        except OSError as exc:
            raise ProtocolError(Reason.ACK_CONNECT_FAILED,
                                f"cannot connect back to {host}:{port}: {exc}") from exc
        ack.setblocking(False)
        ack.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return ack

    def _on_header(self, conn: Connection) -> None:
        hs = conn.handshake
        assert hs is not None
        hdr = decode_batch_header(conn.hbuf, hs.client_id, self.limits)
        conn.hfill = 0
        conn.batch_seq = hdr.batch_seq
        conn.orig_seq = hdr.original_client_batch_seq
        conn.num_msg = hdr.num_msg
        conn.session_epoch = hdr.session_epoch
        conn.left = hdr.total_size
        if self.parked or (self.writer.blocking and not self._room_for(hdr.total_size)):
            self._park(conn)  # retention `block`: a live consumer still needs the space
            return
        self._reserve(conn)

    def _room_for(self, size: int) -> bool:
        pending = [c.res.blog_abs for c in self.in_flight.values() if c.res is not None]
        return self.writer.has_room(size, min(pending) if pending else None)

    def _reserve(self, conn: Connection) -> None:
        """Give the batch whose header ``conn`` holds its BLog space: the payload phase."""
        size = conn.left
        res = self.writer.reserve(size)
        if self.in_flight:
            self._abort_lapped()
        conn.res = res
        conn.target = self.buf[res.log_idx: res.log_idx + size]
        conn.duplicate = conn.batch_seq < conn.dedupe_below
        conn.phase = PHASE_PAYLOAD
        conn.header_ns = time.monotonic_ns()
        self.in_flight[conn.fd] = conn

    # ------------------------------------------------------------------ retention: block

    def _park(self, conn: Connection) -> None:
        """Stop reading ``conn`` until the segment has room for its batch: the socket's receive
        queue fills and TCP flow control stalls the publisher (nothing is dropped)."""
        if not self.parked:
            self.parked_since = time.monotonic()
        conn.parked = True
        self.parked[conn.fd] = conn
        self.parks += 1
        self._pause_reading(conn)

    def _pause_reading(self, conn: Connection) -> None:
        """epoll: keep only EPOLLOUT (pending acks), so a parked socket cannot wake the loop."""
        with contextlib.suppress(OSError, ValueError):
            same_ack = conn.want_write and conn.ack_sock is conn.sock
            self.ep.modify(conn.fd, EPOLLOUT if same_ack else 0)

    def _resume_reading(self, conn: Connection) -> None:
        same_ack = conn.want_write and conn.ack_sock is conn.sock
        self.ep.modify(conn.fd, EPOLLIN | (EPOLLOUT if same_ack else 0))
        self._on_readable(conn)  # its bytes are queued already

    def retry_parked(self, now: float) -> None:
        """Unpark connections, oldest first, while the consumers have made room for them."""
        for fd, conn in list(self.parked.items()):
            if self.conns.get(fd) is not conn:
                del self.parked[fd]
                continue
            if not self._room_for(conn.left):
                break  # first come, first served: nobody overtakes the oldest
            del self.parked[fd]
            conn.parked = False
            self._reserve(conn)
            self._resume_reading(conn)
        if not self.parked:
            self.backpressured_s += now - self.parked_since

    def _abort_lapped(self) -> None:
        """A new reservation reclaimed BLog bytes a slow connection is still receiving into:
        that batch can never be committed, and its socket must stop writing there now."""
        reclaim = self.writer.reclaim
        for c in list(self.in_flight.values()):
            if c.res is not None and c.res.blog_abs < reclaim:
                self.lapped_in_flight += 1
                self._reject(c, str(Reason.LAPPED_IN_FLIGHT),
                             f"batch {c.batch_seq} was overwritten by newer data before it "
                             "arrived in full; the publisher is too slow for the ring size")

    def _complete_batch(self, conn: Connection) -> None:
        res = conn.res
        assert res is not None
        self.in_flight.pop(conn.fd, None)
        if self.validate_payload:
            view = self.buf[res.log_idx: res.log_idx + res.size]
            try:
                check_message_framing(view, conn.num_msg, self.limits)
            finally:
                view.release()
        conn.target = None
        conn.res = None
        conn.phase = PHASE_HEADER
        hs = conn.handshake
        assert hs is not None
        if conn.duplicate:
            self.duplicates_skipped += 1  # already committed before a reconnect: ack only
        else:
            self.writer.commit(res, conn.batch_seq, conn.orig_seq, hs.client_id, conn.num_msg,
                               conn.session_epoch, conn.topic_idx)
        conn.batches += 1
        self.batches += 1
        self.messages += conn.num_msg
        self.bytes += res.size
        self.latency_ns[self.latency_count % LATENCY_RING] = time.monotonic_ns() - conn.header_ns
        self.latency_count += 1
        n = conn.recvs - conn.batch_recvs_start
        self.recv_hist[hist_bucket(n)] += 1
        conn.batch_recvs_start = conn.recvs
        if conn.ack_sock is not None:
            conn.acked += conn.num_msg
            conn.out_latest = conn.acked

    # ------------------------------------------------------------------ acks

    def _send_acks(self, conn: Connection) -> None:
        try:
            done = conn.flush_acks()
        except OSError as exc:
            self._close(conn, f"ack.send_failed:{exc.strerror}")
            return
        self.acks_sent += 1
        if not done:
            self._want_write(conn, True)

    def _on_writable(self, conn: Connection) -> None:
        try:
            done = conn.flush_acks()
        except OSError as exc:
            self._close(conn, f"ack.send_failed:{exc.strerror}")
            return
        if done:
            self._want_write(conn, False)

    def _want_write(self, conn: Connection, on: bool) -> None:
        if conn.want_write == on or conn.ack_sock is None:
            return
        conn.want_write = on
        ack = conn.ack_sock
        if ack is conn.sock:
            reading = 0 if conn.parked else EPOLLIN  # a parked socket stays unread
            self.ep.modify(conn.fd, reading | (EPOLLOUT if on else 0))
        elif on:
            self.ack_owner[ack.fileno()] = conn
            self.ep.register(ack.fileno(), EPOLLOUT)
        else:
            self.ack_owner.pop(ack.fileno(), None)
            self.ep.unregister(ack.fileno())

    # ------------------------------------------------------------------ statistics

    def sweep_timeouts(self, now: float) -> None:
        """Close connections that stall (slowloris senders, dead peers), by config limits.
        Progress is judged from protocol state, so no clock is read on the receive path."""
        lim = self.cfg.limits
        for c in list(self.conns.values()):
            mark = (c.batches, c.left, c.hfill, c.phase)
            if mark != c.progress_mark:
                c.progress_mark = mark
                c.idle_since = now
            if c.parked:
                c.idle_since = now  # stalled by us (retention `block`), not by the peer
            elif c.phase == PHASE_HANDSHAKE and lim.handshake_timeout_s \
                    and now - c.opened_at > lim.handshake_timeout_s:
                self._reject(c, str(Reason.TIMEOUT_HANDSHAKE),
                             f"no complete handshake within {lim.handshake_timeout_s:g} s")
            elif c.phase == PHASE_PAYLOAD and lim.batch_timeout_s \
                    and now - c.header_ns / 1e9 > lim.batch_timeout_s:
                self._reject(c, str(Reason.TIMEOUT_BATCH),
                             f"batch {c.batch_seq} not complete within {lim.batch_timeout_s:g} s")
            elif lim.idle_timeout_s and now - c.idle_since > lim.idle_timeout_s:
                self._reject(c, str(Reason.TIMEOUT_IDLE),
                             f"nothing received for {lim.idle_timeout_s:g} s")

    def stats_tuple(self) -> tuple[int, ...]:
        return (
            self.recv_calls, self.payload_recv_calls, self.eagain, self.wakeups,
            len(self.conns), self.connections_total, self.rejected, self.disconnects_mid_batch,
            self.rcvbuf_min, self.rcvbuf_max, self.lowat_sets, self.acks_sent,
            self.lapped_in_flight, self.uring_enters, self.uring_completions,
        )

    def snapshot(self) -> dict[str, Any]:
        """Everything this receiver counts, for the supervisor's metrics aggregation."""
        n = min(self.latency_count, LATENCY_RING)
        lat = sorted(self.latency_ns[:n])
        ru = resource.getrusage(resource.RUSAGE_SELF)
        w = self.writer
        rcv = []
        for c in self.conns.values():
            with contextlib.suppress(OSError):
                rcv.append(linux.rcvbuf(c.sock))
        return {
            "shard": w.shard, "pid": os.getpid(), "backend": self.backend,
            "backend_fallback": self.backend_fallback,
            "time": time.time(),
            "bytes": self.bytes, "batches": self.batches, "messages": self.messages,
            "committed_batches": w.next_index, "committed_bytes": w.bytes,
            "connections_open": len(self.conns), "connections_total": self.connections_total,
            "recv_calls": self.recv_calls, "payload_recv_calls": self.payload_recv_calls,
            "recv_calls_hist": dict(zip([str(b) for b in HIST_BUCKETS[:-1]] + ["64+"],
                                        self.recv_hist, strict=True)),
            "eagain": self.eagain, "wakeups": self.wakeups, "lowat_sets": self.lowat_sets,
            "uring_enters": self.uring_enters, "uring_completions": self.uring_completions,
            "acks_sent": self.acks_sent,
            "rcvbuf_min": min(rcv) if rcv else self.rcvbuf_min,
            "rcvbuf_max": max(rcv) if rcv else self.rcvbuf_max,
            "commit_latency_us": {"p50": percentile(lat, 0.5) / 1000,
                                  "p99": percentile(lat, 0.99) / 1000, "samples": n},
            "rejected": dict(self.rejected_by_reason),
            "disconnects_mid_batch": self.disconnects_mid_batch,
            "lapped_in_flight": self.lapped_in_flight,
            "duplicates_skipped": self.duplicates_skipped,
            "backpressured_s": self.backpressured_s + (
                time.monotonic() - self.parked_since if self.parked else 0.0),
            "parked_connections": len(self.parked), "parks": self.parks,
            "retention_checks": self.writer.room_checks,
            "segment_fill": {
                "pbr": min(w.next_index, w.slots) / w.slots,
                "blog": min(w.head, w.blog_bytes) / w.blog_bytes,
            },
            "cpu_user_s": ru.ru_utime, "cpu_sys_s": ru.ru_stime, "rss_bytes": _rss_bytes(),
            "moved_in": self.moved_in, "moved_out": self.moved_out,
            "socket_options": {n: {"requested": o.requested, "applied": o.applied,
                                   "error": o.error} for n, o in self.socket_options.items()},
        }

    def flush_stats(self) -> None:
        for c in self.conns.values():
            self._note_rcvbuf(c.sock)
        self.writer.write_stats(self.stats_tuple())
        self.writer.heartbeat()


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0
