"""One publisher connection's receive state, sans-IO: bytes in, committed batches out.

No sockets, no clock, no logging. A driver (epoll or io_uring) asks for the next buffer to fill,
reads into it, and reports the byte count::

    buf = session.next_buffer()       # writable memoryview
    n = sock.recv_into(buf)           # or: io_uring RECV into its address
    events = session.advance(n)       # may raise ProtocolError (close the connection)

Where the bytes go:

* **Read-ahead** (handshake, headers, small batches): a per-connection ``readahead``-byte hot
  buffer. One read can hold many batches; each complete batch is reserved in the BLog, its
  payload copied there with one memmove and its PBR slot committed, all inside ``advance``;
  the shard header's counters are published once per read. A batch straddling the end of a
  read stays in the buffer (moved to its front) until the rest arrives.
* **Direct** (a payload of ``direct_min`` bytes or more): the header comes through the hot
  buffer, the payload bytes already there are copied into the BLog reservation once, and the
  rest is received straight into the reservation (``next_buffer`` is the reservation's
  remainder). ``spill_buffer`` offers the hot buffer as a second scatter target, so a
  payload's tail and the next headers arrive in one call.

Nothing is visible before its batch is whole: a slot is committed only when every payload
byte is in the segment. ``exact`` (set when the connection is to be handed over or closed)
stops read-ahead past the current batch, so the connection ends at a batch boundary with an
empty buffer.

``advance`` returns a bitmask: EV_HANDSHAKE (the handshake was accepted: set up the ack
stream before sending any count), EV_ACK (``acked`` grew: send it),
EV_PARKED (retention ``block``: no room; stop reading until ``resume`` succeeds).
"""

from __future__ import annotations

import struct
from typing import Any

from shardbroker.errors import SegmentError
from shardbroker.receiver.committer import ShardCommitter, hist_bucket
from shardbroker.segment.layout import committed_batch_seqs
from shardbroker.wire.protocol import (
    BATCH_HEADER_SIZE,
    HANDSHAKE_SIZE,
    MESSAGE_HEADER_SIZE,
    Handshake,
    ProtocolError,
    Reason,
    check_batch_header,
    parse_handshake,
)

EV_HANDSHAKE = 1
EV_ACK = 2
EV_PARKED = 4

PHASE_HANDSHAKE = 0
PHASE_STREAM = 1  # headers and small batches through the hot buffer
PHASE_DIRECT = 2  # a large payload straight into its BLog reservation

# batch_seq, original_client_batch_seq, client_id, num_msg, session_epoch, total_size
HEADER_FIELDS = struct.Struct("<QQII18xH20xQ")
READAHEAD_DEFAULT = 256 << 10
# A new connection's buffer starts this small and grows (x4, up to the read-ahead) when a read
# fills it: idle connections cost little memory, busy ones soon read in large pieces.
READAHEAD_START = 16 << 10
DIRECT_MIN_DEFAULT = 64 << 10
LOWAT_MIN = 64 << 10  # below this, a wakeup for the rest of a batch is not worth arming


class Session:
    """Parse state and buffers of one connection; see the module docstring."""

    __slots__ = (
        "c", "limits", "hot", "hv", "cap", "max_cap", "pos", "fill", "phase", "direct_min", "exact",
        "handshake", "client_id", "topic_idx", "dedupe_below", "dedupe_seqs", "resent", "acks",
        "acked",
        "target", "left", "res_abs", "size", "batch_seq", "orig_seq", "num_msg", "epoch",
        "duplicate", "parked", "batches", "bytes_in", "reads", "batch_first_read",
        "waiting_since_ns",
    )

    def __init__(self, committer: ShardCommitter, readahead: int = READAHEAD_DEFAULT,
                 direct_min: int = DIRECT_MIN_DEFAULT) -> None:
        if readahead < BATCH_HEADER_SIZE + MESSAGE_HEADER_SIZE:
            raise ValueError(f"readahead {readahead} is too small")
        self.c = committer
        self.limits = committer.limits
        self.max_cap = readahead
        self.cap = min(readahead, READAHEAD_START)
        self.hot = bytearray(self.cap)
        self.hv = memoryview(self.hot)
        self.pos = 0  # first unprocessed byte in hot
        self.fill = 0  # end of received bytes in hot
        self.phase = PHASE_HANDSHAKE
        # a batch that cannot be whole in the buffer goes direct whatever its size
        self.direct_min = min(direct_min, readahead - BATCH_HEADER_SIZE)
        self.exact = False
        self.handshake: Handshake | None = None
        self.client_id = 0
        self.topic_idx = 0
        # A reconnect: batch_seqs below ``dedupe_below`` may be resends. Those listed in
        # ``dedupe_seqs`` (sorted numpy uint64, from the segment at the handshake) or
        # ``resent`` (committed on this connection since) are acked, not committed twice.
        self.dedupe_below = 0
        self.dedupe_seqs: Any = None
        self.resent: set[int] = set()
        self.acks = False  # ack level >= 1: count what is committed for the publisher
        self.acked = 0  # cumulative messages committed for this client on this connection
        self.target: memoryview | None = None  # direct: where the payload's rest goes
        self.left = 0  # direct: payload bytes still to come
        self.res_abs = 0
        self.size = 0
        self.batch_seq = 0
        self.orig_seq = 0
        self.num_msg = 0
        self.epoch = 0
        self.duplicate = False
        self.parked = False
        self.batches = 0  # batches completed on this connection
        self.bytes_in = 0  # bytes received on this connection (progress, for timeouts)
        self.reads = 0  # advance() calls with bytes
        self.batch_first_read = 1  # the read that brought the current batch's first byte
        self.waiting_since_ns = 0  # a batch straddles reads: when its first read happened

    # ------------------------------------------------------------------ driver interface

    def next_target(self) -> tuple[bool, int, int]:
        """``next_buffer`` as an address for a kernel-side receive: (in the segment?, offset
        into the segment or the hot buffer, length)."""
        if self.phase == PHASE_DIRECT:
            w = self.c.writer
            at = w.blog_off + self.res_abs % w.blog_bytes + self.size - self.left
            return True, at, self.left
        end = self.pos + self._unit_need() if self.exact else self.cap
        return False, self.fill, end - self.fill

    def next_buffer(self) -> memoryview:
        """Where the next received bytes go (never empty unless the session is parked)."""
        if self.phase == PHASE_DIRECT:
            assert self.target is not None
            return self.target
        if self.exact:
            return self.hv[self.fill: self.pos + self._unit_need()]
        return self.hv[self.fill:]

    def spill_buffer(self) -> memoryview | None:
        """Direct phase: a second scatter target for the bytes past the payload, or None where
        the driver must read the payload alone. One batch header: after a large batch the next
        is likely large too, and payload bytes read here would cost a memmove into the BLog
        (a small next batch comes with the following read-ahead)."""
        if self.phase != PHASE_DIRECT or self.exact:
            return None
        return self.hv[:BATCH_HEADER_SIZE]  # the hot buffer is empty during the direct phase

    def advance(self, n: int) -> int:
        """``n`` bytes arrived in ``next_buffer()`` (and, past it, in ``spill_buffer()``)."""
        if n:
            self.reads += 1
            self.bytes_in += n
            if self.phase == PHASE_DIRECT:
                left = self.left
                if n < left:
                    self.left = left - n
                    self.target = self.target[n:]  # type: ignore[index]
                    return 0
                self.left = 0
                ev = self._finish_direct()
                self.fill = n - left  # spill: the next headers landed in the hot buffer
                if self.parked:
                    return ev
                return ev | self._process()
            filled = self.fill + n == self.cap  # the read took all the room it was offered
            self.fill += n
            if filled and self.cap < self.max_cap and not self.exact:
                self._grow(min(self.max_cap, self.cap * 4))
        if self.parked:
            return EV_PARKED
        return self._process()

    def feed(self, data: memoryview | bytes) -> tuple[int, int]:
        """Bytes that arrived in a buffer of the driver's (e.g. an io_uring provided buffer),
        copied into ``next_buffer()`` piece by piece. Returns (events OR'ed, bytes taken):
        fewer than given only when the session parked with a full buffer."""
        view = memoryview(data)
        total = view.nbytes
        ev = 0
        while view.nbytes:
            buf = self.next_buffer()
            k = min(buf.nbytes, view.nbytes)
            if not k:
                break  # parked and full: the driver keeps the rest until ``resume``
            buf[:k] = view[:k]
            view = view[k:]
            ev |= self.advance(k)
        return ev, total - view.nbytes

    def resume(self) -> int:
        """Parked: try again (the driver calls this when consumers may have made room)."""
        if not self.parked:
            return 0
        return self._process()

    # ------------------------------------------------------------------ state

    @property
    def in_batch(self) -> bool:
        """Bytes of a batch (or of the handshake) are held and not yet committed."""
        return self.fill > self.pos or self.phase == PHASE_DIRECT or self.parked

    @property
    def at_boundary(self) -> bool:
        """Nothing held: the connection may be handed over or closed without losing bytes."""
        return self.phase == PHASE_STREAM and self.fill == self.pos and not self.parked

    @property
    def in_handshake(self) -> bool:
        return self.phase == PHASE_HANDSHAKE

    def want_lowat(self, cap: int) -> int:
        """The SO_RCVLOWAT worth arming before waiting: the bytes still owed by the batch in
        hand (never more, so the publisher's idle wait for acks cannot stall it), capped."""
        if self.phase == PHASE_DIRECT:
            need = self.left
        elif self.phase == PHASE_STREAM and self.fill - self.pos >= BATCH_HEADER_SIZE:
            need = self._unit_need() - (self.fill - self.pos)
        else:
            return 1
        if need < LOWAT_MIN:
            return 1
        return need if need < cap else cap

    def to_state(self) -> dict[str, object]:
        """What another receiver needs to continue this connection (at a batch boundary)."""
        if not self.at_boundary:
            raise ValueError("a connection is handed over only at a batch boundary")
        hs = self.handshake
        return {
            "acked": self.acked, "batches": self.batches, "dedupe_below": self.dedupe_below,
            "handshake": None if hs is None else {
                "client_id": hs.client_id, "ack": hs.ack, "port": hs.port, "topic": hs.topic,
                "client_req": hs.client_req, "num_msg": hs.num_msg, "last_addr": hs.last_addr,
            },
        }

    def restore(self, st: dict[str, object]) -> None:
        self.acked = int(st["acked"])  # type: ignore[call-overload]
        self.batches = int(st["batches"])  # type: ignore[call-overload]
        hs = st["handshake"]
        if hs is not None:
            self._accept_handshake(Handshake(**hs), dedupe=False)  # type: ignore[arg-type]
        below = int(st.get("dedupe_below", 0))  # type: ignore[call-overload]
        if below:  # the segment as it is now: it also holds what the first receiver took
            self._load_dedupe(below)

    # ------------------------------------------------------------------ parsing

    def _unit_need(self) -> int:
        """Bytes of the unit (handshake, or header + payload) starting at ``pos``."""
        if self.phase == PHASE_HANDSHAKE:
            return HANDSHAKE_SIZE
        if self.fill - self.pos < BATCH_HEADER_SIZE:
            return BATCH_HEADER_SIZE
        size: int = HEADER_FIELDS.unpack_from(self.hot, self.pos)[5]
        # a large batch goes direct once its header is in: the header is the unit here
        return BATCH_HEADER_SIZE + (size if size < self.direct_min else 0)

    def _process(self) -> int:
        if self.phase == PHASE_HANDSHAKE:
            if self.fill - self.pos < HANDSHAKE_SIZE:
                self._compact()
                return 0
            hs = parse_handshake(self.hv[self.pos: self.pos + HANDSHAKE_SIZE])
            self.pos += HANDSHAKE_SIZE
            self._accept_handshake(hs, dedupe=True)
            # batches behind the handshake are carved now; the driver starts the ack stream
            # (broker id) before it sends any count
            return EV_HANDSHAKE | self._carve()
        return self._carve()

    def _accept_handshake(self, hs: Handshake, dedupe: bool) -> None:
        c = self.c
        try:
            self.topic_idx = c.writer.topic_index(hs.topic)
        except SegmentError as exc:
            raise ProtocolError(Reason.TOPIC_TABLE_FULL, exc.message) from exc
        if dedupe:
            # A reconnecting publisher resends what was not acked: batches already committed
            # (in any shard) are received and acked but not committed twice.
            self._load_dedupe(None, hs.client_id)
        self.handshake = hs
        self.client_id = hs.client_id
        self.acks = hs.ack >= 1
        self.phase = PHASE_STREAM

    def _load_dedupe(self, below: int | None, client_id: int | None = None) -> None:
        """Which of this client's batch_seqs the segment holds; ``below``: the mark to keep
        (None: one past the highest held)."""
        w = self.c.writer
        seqs = committed_batch_seqs(w.buf, w.geometry,
                                    self.client_id if client_id is None else client_id)
        self.dedupe_seqs = seqs
        self.dedupe_below = (int(seqs[-1]) + 1 if len(seqs) else 0) if below is None else below

    def _already_committed(self, seq: int) -> bool:
        """A batch_seq below the dedupe mark: is this exact batch in the segment already?"""
        if seq in self.resent:
            return True
        seqs = self.dedupe_seqs
        i = int(seqs.searchsorted(seq))
        return i < len(seqs) and int(seqs[i]) == seq

    def _carve(self) -> int:
        """Commit every complete batch in hot[pos:fill]; start a direct payload when a large
        batch's header is in. The hot loop of the receiver: locals, no objects per batch."""
        c = self.c
        w = c.writer
        seg = c.seg
        hot = self.hot
        hv = self.hv
        pos = self.pos
        fill = self.fill
        lim = self.limits
        max_bytes = lim.max_batch_bytes
        max_msgs = lim.max_messages_per_batch
        cid = self.client_id
        topic = self.topic_idx
        dedupe_below = self.dedupe_below
        blocking = c.blocking
        validate = c.validate_payload
        blog_off = w.blog_off
        blog_bytes = w.blog_bytes
        unpack = HEADER_FIELDS.unpack_from
        reserve = w.reserve_abs
        commit = w.commit_slot
        append = w.append
        in_flight = c.in_flight  # direct reservations a new one may lap
        committed = 0
        messages = 0
        nbytes = 0
        ev = 0
        if not (blocking or validate or in_flight or self.parked):
            # The common case: walk the whole small batches in hand, then commit them as one
            # run (one copy, slots stored together). Whatever stops the walk (a batch not yet
            # whole, a large one, a bad header, a resent duplicate) is left to the loop below.
            run: list[tuple[int, int, int, int, int, int]] = []
            # small enough for the run and within limits.max_batch_bytes, which may be lower
            small_end = min(self.direct_min, max_bytes + 1)
            p = pos
            while fill - p >= BATCH_HEADER_SIZE:
                h = unpack(hot, p)
                seq, orig, client, num_msg, epoch, size = h
                end = p + BATCH_HEADER_SIZE + size
                if (end > fill or not (0 < size < small_end and 0 < num_msg <= max_msgs)
                        or size < num_msg * MESSAGE_HEADER_SIZE or client != cid
                        or seq < dedupe_below):
                    break
                run.append(h)
                messages += num_msg
                nbytes += size
                p = end
            if run:
                w.append_run(hv, pos, p, run, topic)
                committed = len(run)
                pos = p
        while fill - pos >= BATCH_HEADER_SIZE:
            seq, orig, client, num_msg, epoch, size = unpack(hot, pos)
            if not (0 < size <= max_bytes and 0 < num_msg <= max_msgs
                    and size >= num_msg * MESSAGE_HEADER_SIZE and client == cid):
                self.pos = pos
                self._publish(committed, messages, nbytes)
                check_batch_header(seq, client, num_msg, size, cid, lim)  # raises the reason
            end = pos + BATCH_HEADER_SIZE + size
            if end > fill and size < self.direct_min:
                break  # the rest of a small batch is still to come
            if blocking and not c.may_reserve(self, size):
                self._park()
                ev = EV_PARKED
                break
            if self.parked:
                self._unpark()
            if end > fill:  # a large payload: the rest goes straight into the BLog
                self.pos = pos
                self._start_direct(seq, orig, num_msg, epoch, size)
                pos = self.pos
                break
            if seq < dedupe_below and self._already_committed(seq):
                c.duplicates_skipped += 1  # already committed before a reconnect: ack only
            elif not (in_flight or validate):
                append(hv[pos + BATCH_HEADER_SIZE: end], seq, orig, cid, num_msg, epoch, topic)
            else:  # another connection's direct receive may be lapped; or check the framing
                blog_abs = reserve(size)
                c.check_laps()  # (a driver stops a lapped kernel receive before we copy)
                at = blog_off + blog_abs % blog_bytes
                seg[at: at + size] = hv[pos + BATCH_HEADER_SIZE: end]
                if validate:
                    self.pos = pos
                    self._publish(committed, messages, nbytes)
                    committed = messages = nbytes = 0
                    c.check_payload(blog_abs, size, num_msg)
                commit(blog_abs, size, seq, orig, cid, num_msg, epoch, topic)
            if seq < dedupe_below:
                self.resent.add(seq)  # in the segment now, if it was not before
            committed += 1
            messages += num_msg
            nbytes += size
            pos = end
        self.pos = pos
        if committed:
            self._publish(committed, messages, nbytes)
            ev |= EV_ACK if self.acks else 0
        if self.phase == PHASE_STREAM:
            self._compact()
        return ev

    def _publish(self, committed: int, messages: int, nbytes: int) -> None:
        """Counters and the shard header for the batches one read completed."""
        if not committed:
            return
        c = self.c
        c.writer.publish()
        c.batches += committed
        c.messages += messages
        c.bytes += nbytes
        self.batches += committed
        if self.acks:
            self.acked += messages
        # recv calls per batch: the first batch may have begun in an earlier read; the others
        # arrived whole in this one
        first = self.reads - self.batch_first_read + 1
        hist = c.recv_hist
        hist[hist_bucket(first)] += 1
        hist[0] += committed - 1
        if first > 1 and self.waiting_since_ns:
            c.note_latency(c.clock_ns() - self.waiting_since_ns)
        self.batch_first_read = self.reads

    def _compact(self) -> None:
        """Keep the held bytes at the front of the hot buffer, so the next read has room."""
        pos = self.pos
        fill = self.fill
        if pos == fill:
            self.pos = self.fill = 0
            self.batch_first_read = self.reads + 1  # the next batch starts with the next read
            self.waiting_since_ns = 0
            return
        if not self.waiting_since_ns:
            self.waiting_since_ns = self.c.clock_ns()  # a batch straddles reads from here
        if pos:
            self.hot[: fill - pos] = self.hv[pos:fill]
            self.pos = 0
            self.fill = fill - pos
        if self.phase == PHASE_STREAM:
            need = self._unit_need()
            if need > self.cap:  # the batch in hand must fit whole
                self._grow(min(self.max_cap, 1 << (need - 1).bit_length()))

    def _grow(self, cap: int) -> None:
        """A larger read-ahead buffer, holding the unprocessed bytes at its front. Only between
        reads: no driver holds the old buffer or its address then."""
        hot = bytearray(cap)
        held = self.fill - self.pos
        hot[:held] = self.hv[self.pos: self.fill]
        self.hot = hot
        self.hv = memoryview(hot)
        self.cap = cap
        self.pos = 0
        self.fill = held

    def _start_direct(self, seq: int, orig: int, num_msg: int, epoch: int, size: int) -> None:
        """A large batch: reserve its BLog space, move the payload bytes already here into it
        and receive the rest straight there."""
        c = self.c
        self.batch_seq = seq
        self.orig_seq = orig
        self.num_msg = num_msg
        self.epoch = epoch
        self.size = size
        self.duplicate = seq < self.dedupe_below and self._already_committed(seq)
        blog_abs = c.writer.reserve_abs(size)
        c.check_laps()
        c.writer.publish_head()  # it shows at once: this payload may take a while
        self.res_abs = blog_abs
        w = c.writer
        at = w.blog_off + blog_abs % w.blog_bytes
        start = self.pos + BATCH_HEADER_SIZE
        have = self.fill - start
        c.seg[at: at + have] = self.hv[start: self.fill]
        self.target = c.seg[at + have: at + size]
        self.left = size - have
        self.pos = self.fill = 0
        self.phase = PHASE_DIRECT
        if not self.waiting_since_ns:
            self.waiting_since_ns = c.clock_ns()
        c.in_flight[self] = blog_abs

    def _finish_direct(self) -> int:
        """The direct payload is complete: commit it (unless it is a resent duplicate)."""
        c = self.c
        c.in_flight.pop(self, None)
        self.target = None
        self.phase = PHASE_STREAM
        self.pos = 0
        if self.duplicate:
            c.duplicates_skipped += 1
        else:
            if c.validate_payload:
                c.check_payload(self.res_abs, self.size, self.num_msg)
            c.writer.commit_slot(self.res_abs, self.size, self.batch_seq, self.orig_seq,
                                 self.client_id, self.num_msg, self.epoch, self.topic_idx)
            if self.batch_seq < self.dedupe_below:
                self.resent.add(self.batch_seq)
        # the next batch begins in this read (spilled bytes) or the next
        self._publish(1, self.num_msg, self.size)
        self.waiting_since_ns = 0
        return EV_ACK if self.acks else 0

    def _park(self) -> None:
        if not self.parked:
            self.parked = True
            self.c.park(self)

    def _unpark(self) -> None:
        self.parked = False
        self.c.unpark(self)
