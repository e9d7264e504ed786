"""A receiver process's connections, whatever the I/O driver: adoption, the events of each
connection's session (handshake, commits, parking), acks, rejections, timeouts, hand-overs to
other receivers, the supervisor's control messages and the statistics.

The driver (epoll.py or uring.py, behind the Backend interface of backend.py) waits and moves
bytes; it calls ``received`` after each read with the byte count, ``peer_closed`` /
``recv_failed`` on the socket's end, ``on_control`` / ``accept`` / ``on_writable`` for the other
descriptors. Nothing here reads a socket's payload.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from shardbroker import counters
from shardbroker.config import Config
from shardbroker.platform import linux
from shardbroker.receiver import messages
from shardbroker.receiver.backend import Backend
from shardbroker.receiver.committer import HIST_LABELS, LATENCY_RING, ShardCommitter
from shardbroker.receiver.connection import Connection
from shardbroker.receiver.session import EV_ACK, EV_HANDSHAKE, EV_PARKED, Session
from shardbroker.segment.writer import ShardWriter
from shardbroker.wire.protocol import Limits, ProtocolError, Reason, encode_control_frame

# Acks are cumulative: within one driver pass a connection's count goes out once per this many
# of its bytes, and whatever is left when the pass ends (a send costs as much as a read).
ACK_EVERY_BYTES = 1 << 20
CONTROL_MAX = 65536  # bytes of one supervisor message (SOCK_SEQPACKET: one recv, one message)
STATS_INTERVAL_S = 0.5  # shard-header counters (read by dump, demo, tests)
BLOCK_RECHECK_S = 0.001  # retention `block`: how often parked connections look for room
RESET_ERRNOS = (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.EHOSTUNREACH)


def percentile(sorted_values: list[int], q: float) -> int:
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class Receiver:
    """One shard's receiver: see the module docstring."""

    def __init__(self, cfg: Config, writer: ShardWriter, control: socket.socket, log: Any,
                 backend: Backend, on_tick: Callable[[Receiver], None] | None = None,
                 cpu: int | None = None, listener: socket.socket | None = None) -> None:
        self.cfg = cfg
        self.writer = writer
        self.control = control
        self.log = log
        self.backend = backend
        lim = cfg.limits
        self.committer = ShardCommitter(
            writer, Limits(lim.max_batch_bytes, lim.max_messages_per_batch,
                           lim.max_message_bytes), lim.validate_payload)
        self.committer.on_lapped = self._quiesce_lapped
        self.readahead = cfg.socket.readahead
        self.direct_min = cfg.socket.direct_min
        self.lowat_cap = cfg.socket.rcvlowat_cap
        self.conns: dict[int, Connection] = {}
        self.acks_due: dict[Connection, None] = {}  # counts held back until the pass ends
        self.by_session: dict[Session, Connection] = {}
        self.stopping = False
        self.stop_deadline = 0.0
        self.leaving = False  # the supervisor is gone: leave the loop
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
        # statistics kept by the drivers and here (plain ints: the hot path must not pay)
        self.recv_calls = 0
        self.payload_recv_calls = 0
        self.eagain = 0
        self.wakeups = 0
        self.lowat_sets = 0
        self.uring_enters = 0
        self.uring_completions = 0
        self.connections_total = 0
        self.rejected = 0
        self.rejected_by_reason: Counter[str] = Counter()
        self.disconnects_mid_batch = 0
        self.rcvbuf_min = 0
        self.rcvbuf_max = 0
        self.acks_sent = 0
        self.backpressured_s = 0.0  # time with connections parked (retention `block`)
        self.parked_since = 0.0
        self.parks = 0  # times a batch had to wait for a consumer
        self.backend_fallback = ""  # why `auto` did not get io_uring ("" = it was not asked)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        self.backend.start(self, self.control, self.listener)
        next_stats = time.monotonic() + STATS_INTERVAL_S
        try:
            while not self.leaving:
                self.backend.wait(self._wait_s(next_stats))
                now = time.monotonic()
                next_stats = self._periodic(now, next_stats)
                if self._stop_due(now):
                    return
        finally:
            self.flush_stats()
            for c in list(self.conns.values()):
                self._close(c, "")
            self.backend.close()

    def _wait_s(self, next_stats: float) -> float:
        """How long the driver may sleep: until the next stats tick, or the next look for
        room while connections are parked."""
        timeout = max(0.0, next_stats - time.monotonic())
        return min(timeout, BLOCK_RECHECK_S) if self.committer.parked else timeout

    def _periodic(self, now: float, next_stats: float) -> float:
        """After every wait: parked connections look for room; every STATS_INTERVAL_S,
        timeouts, shard-header counters and metrics."""
        if self.committer.parked:
            self.retry_parked()
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
            self._close(c, "receiver.stop_deadline" if c.session.in_batch else "")
        return True

    def on_control(self) -> None:
        """Messages from the supervisor."""
        try:
            # a moved connection's state (topic, counters, peer) is a few hundred bytes
            msg, fds, flags, _addr = socket.recv_fds(self.control, CONTROL_MAX, 64)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionError:
            msg, fds, flags = b"", [], 0
        if flags & socket.MSG_TRUNC:  # never parse half a message: refuse it, loudly
            for fd in fds:
                os.close(fd)
            self.log.error("receiver.control.truncated", size_limit=CONTROL_MAX)
            return
        if not msg:
            self.log.warning("receiver.supervisor_gone")
            for fd in fds:
                os.close(fd)
            self.leaving = True
            return
        error = "not for a receiver"
        try:
            message: messages.Message | None = messages.decode(msg)
        except messages.BadMessage as exc:
            message, error = None, str(exc)
        match message:
            case messages.CONN:
                for fd in fds:
                    self._adopt(fd)
            case messages.Handover(verb=messages.Verb.ADOPT, state=state):
                self._adopt_moved(state, fds)
            case messages.Handoff(count=None):
                self.close_listener()
                self.retiring = True
                self.moves_wanted = len(self.conns)
                self._start_moves()
            case messages.Handoff(count=int(count)):
                self.moves_wanted = max(0, min(count, len(self.conns)))
                self._start_moves()
            case messages.DRAIN:
                self.close_listener()
            case messages.STOP:
                self._begin_stop()
            case _:
                for fd in fds:
                    os.close(fd)
                self.log.warning("receiver.control.unknown", message=msg[:32].decode("latin-1"),
                                 error=error)

    def accept(self) -> None:
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
                    self.control.send(messages.encode(messages.OPENED))

    def close_listener(self) -> None:
        if self.listener is not None:
            self.backend.drop_listener(self.listener)
            self.listener.close()
            self.listener = None

    def _begin_stop(self) -> None:
        self.close_listener()
        self.stopping = True
        self.stop_deadline = time.monotonic() + 5.0
        for c in list(self.conns.values()):
            s = c.session
            if s.in_batch and not s.parked:
                c.closing = True  # finish the batch in flight, then close
                s.exact = True
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
                self.control.send(messages.encode(messages.Closed(str(addr[0]))))
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
        session = Session(self.committer, self.readahead, self.direct_min)
        conn = Connection(sock, peer, session)
        self.conns[fd] = conn
        self.by_session[session] = conn
        self.connections_total += 1
        self.backend.watch(conn)
        return conn

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

    def _note_rcvbuf(self, sock: socket.socket) -> None:
        try:
            v = linux.rcvbuf(sock)
        except OSError:
            return
        self.rcvbuf_min = v if not self.rcvbuf_min else min(self.rcvbuf_min, v)
        self.rcvbuf_max = max(self.rcvbuf_max, v)

    def owns(self, conn: Connection) -> bool:
        return self.conns.get(conn.fd) is conn

    # ------------------------------------------------------------------ bytes arrived

    def received(self, conn: Connection, n: int) -> bool:
        """The driver read ``n`` bytes into the session's buffer. True while the driver should
        keep reading this connection (still ours, not parked, not at a hand-over)."""
        s = conn.session
        try:
            ev = s.advance(n)
            if ev:
                if ev & EV_HANDSHAKE:
                    self._on_handshake(conn)
                if ev & EV_ACK:
                    conn.queue_ack()
                    if not conn.want_write:
                        if (s.bytes_in - conn.ack_mark >= ACK_EVERY_BYTES or conn.closing
                                or conn.moving):
                            self._send_acks(conn)
                        else:  # more reads may follow in this pass: one count for them all
                            self.acks_due[conn] = None
                if ev & EV_PARKED:
                    self._on_parked(conn)
        except ProtocolError as exc:
            self._reject(conn, str(exc.reason), exc.detail)
            return False
        if self.committer.lapped:
            self._reject_lapped()
        if self.conns.get(conn.fd) is not conn or s.parked:
            return False
        if (conn.closing or conn.moving) and s.at_boundary:
            return self._at_boundary(conn)
        return True

    def settled(self, conn: Connection) -> bool:
        """The driver's operations on ``conn`` ended without bytes (e.g. a cancellation):
        a hand-over or close waiting for a boundary may go now. True while still ours."""
        if (conn.closing or conn.moving) and conn.session.at_boundary:
            return self._at_boundary(conn)
        return self.owns(conn)

    def _at_boundary(self, conn: Connection) -> bool:
        """A batch boundary with a close or hand-over pending. True while still ours."""
        if conn.closing:
            self._close(conn, "receiver.stop")
            return False
        self._hand_over(conn)
        return self.owns(conn)

    def _on_handshake(self, conn: Connection) -> None:
        hs = conn.session.handshake
        assert hs is not None
        if hs.ack >= 1:
            conn.ack_sock = conn.sock if hs.port == 0 else self._connect_back(conn, hs.port)
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

    def rearm_lowat(self, conn: Connection) -> None:
        """About to wait on this connection: wake only when the batch in hand can complete
        (or ``rcvlowat_cap`` bytes are there), never for less than the publisher owes."""
        cap = self.lowat_cap
        if cap:
            self.set_lowat(conn, conn.session.want_lowat(cap))

    def set_lowat(self, conn: Connection, want: int) -> None:
        """SO_RCVLOWAT = ``want`` on ``conn`` (a syscall only when it changes; a refusal
        leaves the old value, which ``conn.lowat`` keeps saying)."""
        if want != conn.lowat:
            try:
                linux.set_rcvlowat(conn.sock, want)
            except OSError:
                return
            conn.lowat = want
            self.lowat_sets += 1

    # ------------------------------------------------------------------ retention: block

    def _on_parked(self, conn: Connection) -> None:
        """No room for the batch in hand: stop reading ``conn``; its socket's receive queue
        fills and TCP flow control stalls the publisher (nothing is dropped)."""
        if not self.parked_since:
            self.parked_since = time.monotonic()
        self.parks += 1
        self.backend.pause(conn)

    def retry_parked(self) -> None:
        """Parked sessions, oldest first, continue while the consumers have made room."""
        for session in list(self.committer.parked):
            conn = self.by_session.get(session)
            if conn is None or not self.owns(conn):
                self.committer.forget(session)
                continue
            try:
                ev = session.resume()
            except ProtocolError as exc:
                self._reject(conn, str(exc.reason), exc.detail)
                continue
            if ev & EV_ACK:
                conn.queue_ack()
                if not conn.want_write:
                    self._send_acks(conn)
            if session.parked:
                break  # first come, first served: nobody overtakes the oldest
            self._note_unparked()  # before resume: reading may park it again at once
            if self.owns(conn):
                self.backend.resume(conn)
        if self.committer.lapped:
            self._reject_lapped()

    def _note_unparked(self) -> None:
        """Nobody waits for room any more: the back-pressured interval ends now."""
        if not self.committer.parked and self.parked_since:
            self.backpressured_s += time.monotonic() - self.parked_since
            self.parked_since = 0.0

    # ------------------------------------------------------------------ overwritten in flight

    def _quiesce_lapped(self, session: Session) -> None:
        """A new reservation reclaimed BLog bytes ``session`` is still receiving into: the
        driver must stop writing there before those bytes are reused (called from inside the
        reservation, before any byte of the new batch is written)."""
        conn = self.by_session.get(session)
        if conn is not None:
            self.backend.quiesce(conn)

    def _reject_lapped(self) -> None:
        lapped, self.committer.lapped = self.committer.lapped, []
        for session in lapped:
            conn = self.by_session.get(session)
            if conn is not None and self.owns(conn):
                self._reject(conn, str(Reason.LAPPED_IN_FLIGHT),
                             f"batch {session.batch_seq} was overwritten by newer data before "
                             "it arrived in full; the publisher is too slow for the ring size")

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
        self.backend.adopted(conn)  # bytes of the next batch may be queued already

    def _start_moves(self) -> None:
        """Mark connections to hand over; idle ones (at a batch boundary) go at once."""
        candidates = sorted(self.conns.values(), key=lambda c: c.session.in_batch)
        for conn in candidates:
            if self.moves_wanted <= 0:
                break
            if conn.moving:
                continue
            conn.moving = True
            conn.session.exact = True  # read no further than the batch in hand
            self.moves_wanted -= 1
            if conn.session.at_boundary:
                self._hand_over(conn)
        self._maybe_retired()

    def _maybe_retired(self) -> None:
        if self.retiring and not self.conns and not self.retired_sent:
            self.retired_sent = True
            self.control.send(messages.encode(messages.RETIRED))

    def _hand_over(self, conn: Connection) -> None:
        """Send the socket(s) and protocol state to the supervisor for another receiver."""
        if conn.out_partial or conn.out_latest is not None:
            with contextlib.suppress(OSError):
                conn.flush_acks()
            if conn.out_partial or conn.out_latest is not None:
                return  # acks still pending: try again at the next batch boundary
        if not self.backend.idle(conn):
            return  # the driver calls settled() once its operations on conn have ended
        if conn.lowat != 1:
            with contextlib.suppress(OSError):
                linux.set_rcvlowat(conn.sock, 1)
                conn.lowat = 1
        fds = [conn.fd]
        if conn.ack_sock is not None and conn.ack_sock is not conn.sock:
            fds.append(conn.ack_sock.fileno())
        try:
            socket.send_fds(self.control, [messages.encode(
                messages.Handover(messages.Verb.MOVE, conn.state()))], fds)
        except OSError as exc:
            self.log.warning("receiver.handoff_failed", peer=conn.peer, error=str(exc))
            conn.moving = False
            conn.session.exact = False
            return
        self._forget(conn)
        if len(fds) > 1 and conn.ack_sock is not None:
            conn.ack_sock.close()
        conn.sock.close()  # our copy only: the TCP connection lives on in the other receiver
        self.moved_out += 1
        self._maybe_retired()

    def _forget(self, conn: Connection) -> bool:
        """Drop ``conn`` from every table. True: the socket may be closed now (else the
        driver closes it when its operations on it have ended)."""
        self.conns.pop(conn.fd, None)
        self.by_session.pop(conn.session, None)
        self.committer.forget(conn.session)
        self._note_unparked()
        return self.backend.unwatch(conn)

    # ------------------------------------------------------------------ closing

    def _close(self, conn: Connection, reason: str) -> None:
        if not self.owns(conn):
            return
        if conn.out_latest is not None or conn.out_partial:
            # best effort: the last count still tells the publisher what is committed
            with contextlib.suppress(OSError):
                conn.flush_acks()
        self._note_rcvbuf(conn.sock)
        close_now = self._forget(conn)
        if conn.ack_sock is not None and conn.ack_sock is not conn.sock:
            conn.ack_sock.close()
        if close_now:
            conn.sock.close()
        if reason:
            self.log.info("receiver.connection.closed", peer=conn.peer, reason=reason,
                          batches=conn.session.batches)
        # so dump and tests see final counters as soon as publishers are gone
        self.writer.write_stats(self.stats_tuple())
        with contextlib.suppress(OSError):
            self.control.send(messages.encode(messages.Closed(conn.source)))
        self._maybe_retired()

    def _reject(self, conn: Connection, reason: str, detail: str) -> None:
        """Close one connection for a violation: tell the publisher why, count it, log it."""
        if not self.owns(conn):
            return
        self.rejected += 1
        self.rejected_by_reason[reason] += 1
        self.log.warning("receiver.connection.rejected", peer=conn.peer, reason=reason,
                         detail=detail, batches=conn.session.batches)
        target = conn.ack_sock if conn.ack_sock is not None else conn.sock
        try:
            if conn.out_latest is not None:
                conn.flush_acks()  # what was committed before the violation, counted first
            if conn.out_partial:
                target.send(conn.out_partial)
            target.send(encode_control_frame(f"{reason}: {detail}"))
        except OSError:
            pass
        self._close(conn, "")

    def peer_closed(self, conn: Connection) -> None:
        s = conn.session
        if s.in_batch:
            self.disconnects_mid_batch += 1
            reason = (Reason.PEER_CLOSED_MID_HANDSHAKE if s.in_handshake
                      else Reason.PEER_CLOSED_MID_BATCH)
            self.rejected_by_reason[str(reason)] += 1  # per-reason counter, like rejections
            self.log.warning("receiver.connection.closed_mid_batch", peer=conn.peer,
                             reason=str(reason), batch_seq=s.batch_seq,
                             bytes_missing=s.left)
            self._close(conn, "")
        else:
            self._close(conn, "peer.closed")

    def recv_failed(self, conn: Connection, err: int) -> None:
        if err in RESET_ERRNOS:
            self.peer_closed(conn)  # a reset is a close: same counters, same cleanup
            return
        name = errno.errorcode.get(err, str(err))
        self.disconnects_mid_batch += int(conn.session.in_batch)
        self.log.warning("receiver.recv_failed", peer=conn.peer, error=name)
        self._close(conn, f"recv_failed:{name}")

    # ------------------------------------------------------------------ acks

    def _flush(self, conn: Connection) -> bool | None:
        """Send what acks are pending: True when all went out, False when the socket is
        full, None when sending failed (the connection is closed then)."""
        try:
            return conn.flush_acks()
        except OSError as exc:
            if exc.errno in RESET_ERRNOS:
                # the peer is gone: a reset seen while sending is the same close as one seen
                # while reading (counted mid-batch if bytes of a batch are held)
                self.peer_closed(conn)
            else:
                self._close(conn, f"ack.send_failed:{exc.strerror}")
            return None

    def flush_due_acks(self) -> None:
        """The driver's pass ended: the counts held back within it go out now, so an ack
        waits for at most one pass (or ACK_EVERY_BYTES of the connection's bytes)."""
        due = self.acks_due
        self.acks_due = {}
        for conn in due:
            if not conn.want_write and self.owns(conn):
                self._send_acks(conn)

    def flush_quiet_acks(self, held: dict[Connection, None]) -> None:
        """Counts held since an earlier pass go out for the connections that committed nothing
        new since (they have no bytes to share a count with); the rest stay held, within
        ACK_EVERY_BYTES, until the driver is about to sleep (``flush_due_acks``)."""
        due = self.acks_due
        for conn in held:
            if conn in due or conn.want_write or not self.owns(conn):
                continue
            self._send_acks(conn)

    def _send_acks(self, conn: Connection) -> None:
        conn.ack_mark = conn.session.bytes_in
        done = self._flush(conn)
        if done is None:
            return
        self.acks_sent += 1
        if not done:
            conn.want_write = True
            self.backend.want_write(conn, True)

    def on_writable(self, conn: Connection) -> None:
        done = self._flush(conn)
        if done and conn.want_write:
            conn.want_write = False
            self.backend.want_write(conn, False)
            if conn.moving and conn.session.at_boundary:
                self._hand_over(conn)

    # ------------------------------------------------------------------ timeouts

    def sweep_timeouts(self, now: float) -> None:
        """Close connections that stall (slowloris senders, dead peers), by config limits.
        Progress is judged from the sessions' counters, so no clock is read per read."""
        lim = self.cfg.limits
        for c in list(self.conns.values()):
            s = c.session
            mark = (s.batches, s.bytes_in)
            if mark != c.progress_mark:
                c.progress_mark = mark
                c.idle_since = now
            if s.parked:
                c.idle_since = now  # stalled by us (retention `block`), not by the peer
                c.batch_mark = None
                continue
            if s.in_handshake:
                if lim.handshake_timeout_s and now - c.opened_at > lim.handshake_timeout_s:
                    self._reject(c, str(Reason.TIMEOUT_HANDSHAKE),
                                 f"no complete handshake within {lim.handshake_timeout_s:g} s")
                    continue
            elif s.in_batch:
                if c.batch_mark is None or c.batch_mark[0] != s.batches:
                    c.batch_mark = (s.batches, now)
                elif lim.batch_timeout_s and now - c.batch_mark[1] > lim.batch_timeout_s:
                    self._reject(c, str(Reason.TIMEOUT_BATCH),
                                 f"batch {s.batches} of this connection not complete within "
                                 f"{lim.batch_timeout_s:g} s")
                    continue
            else:
                c.batch_mark = None
            if lim.idle_timeout_s and now - c.idle_since > lim.idle_timeout_s:
                self._reject(c, str(Reason.TIMEOUT_IDLE),
                             f"nothing received for {lim.idle_timeout_s:g} s")

    # ------------------------------------------------------------------ statistics

    def counter_values(self, names: tuple[str, ...] | None = None) -> dict[str, float]:
        """The figures of the one counter table (shardbroker/counters.py), read now, by name
        (all of them, or ``names``). The hot path only bumps plain ints; they are looked up
        here, by the table's attribute paths, when a snapshot or the shard header wants them.
        Entries without a path are computed below."""
        usage: list[resource.struct_rusage] = []  # getrusage once, and only when asked

        def rusage() -> resource.struct_rusage:
            if not usage:
                usage.append(resource.getrusage(resource.RUSAGE_SELF))
            return usage[0]

        computed: dict[str, Callable[[], float]] = {
            "connections_open": lambda: len(self.conns),
            "parked_connections": lambda: len(self.committer.parked),
            # the wait still going on counts too, so the figure moves while publishers wait
            "backpressured_s": lambda: self.backpressured_s + (
                time.monotonic() - self.parked_since if self.parked_since else 0.0),
            "cpu_user_s": lambda: rusage().ru_utime,
            "cpu_sys_s": lambda: rusage().ru_stime,
            "rss_bytes": linux.rss_bytes,
        }
        out: dict[str, float] = {}
        for d in counters.TABLE:
            if names is None or d.name in names:
                value = computed[d.name]() if d.source is None else d.value_of(self)
                assert isinstance(value, int | float), (d.name, value)
                out[d.name] = value
        return out

    def stats_tuple(self) -> tuple[int, ...]:
        """The shard header's statistics (segment/layout.py STAT_FIELDS), in byte order."""
        names = counters.segment_names()
        values = self.counter_values(names)
        return tuple(int(values[n]) for n in names)

    def snapshot(self) -> dict[str, Any]:
        """Everything this receiver counts, for the supervisor's metrics aggregation: the
        counter table's figures, then what is not a single number."""
        c = self.committer
        n = min(c.latency_count, LATENCY_RING)
        lat = sorted(c.latency_ns[:n])
        w = self.writer
        snap: dict[str, Any] = {
            "shard": w.shard, "pid": os.getpid(), "backend": self.backend.name,
            "backend_fallback": self.backend_fallback, "time": time.time(),
        }
        snap.update(self.counter_values(counters.snapshot_names()))
        # The shard header keeps the extremes seen; the snapshot shows the connections open
        # now (the kernel grows their buffers as it autotunes), while there are any.
        rcv = []
        for conn in self.conns.values():
            with contextlib.suppress(OSError):
                rcv.append(linux.rcvbuf(conn.sock))
        if rcv:
            snap["rcvbuf_min"], snap["rcvbuf_max"] = min(rcv), max(rcv)
        snap.update({
            "recv_calls_hist": dict(zip(HIST_LABELS, c.recv_hist, strict=True)),
            "commit_latency_us": {"p50": percentile(lat, 0.5) / 1000,
                                  "p99": percentile(lat, 0.99) / 1000, "samples": n},
            "rejected": dict(self.rejected_by_reason),  # by reason (the header: a count)
            "segment_fill": {
                "pbr": min(w.next_index, w.slots) / w.slots,
                "blog": min(w.head, w.blog_bytes) / w.blog_bytes,
            },
            "socket_options": {n: {"requested": o.requested, "applied": o.applied,
                                   "error": o.error} for n, o in self.socket_options.items()},
        })
        return snap

    def flush_stats(self) -> None:
        for c in self.conns.values():
            self._note_rcvbuf(c.sock)
        self.writer.write_stats(self.stats_tuple())
        self.writer.heartbeat()
