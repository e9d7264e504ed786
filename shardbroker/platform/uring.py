"""A small io_uring over the raw syscalls (ctypes), and the probe that decides if it can run.

Why in-tree: the PyPI bindings cannot do what the receive path needs (``liburing`` receives only
into a ``bytearray``, ``pyuring`` is synchronous, ``uring-api`` keeps provided buffers in private
memory). A RECV here can target any address, in particular the space reserved in the shard's
BLog inside the shared-memory mapping, so the kernel copies payload bytes straight into the log.

Syscalls (the generic numbers; x86_64 and arm64 alike)::

    425 io_uring_setup(u32 entries, struct io_uring_params *p) -> ring fd
    426 io_uring_enter(int fd, u32 to_submit, u32 min_complete, u32 flags, void *arg, size_t sz)
    427 io_uring_register(int fd, u32 opcode, void *arg, u32 nr_args)

struct io_uring_params (120 bytes, filled by the kernel except entries/flags/cq_entries)::

    off  size  field                      off  size  field
      0     4  sq_entries                  40    40  sq_off (struct io_sqring_offsets)
      4     4  cq_entries                  80    40  cq_off (struct io_cqring_offsets)
      8     4  flags (IORING_SETUP_*)
     12     4  sq_thread_cpu
     16     4  sq_thread_idle
     20     4  features (IORING_FEAT_*)
     24     4  wq_fd
     28    12  resv

struct io_sqring_offsets / io_cqring_offsets (40 bytes each; byte offsets into the ring mmap)::

    sq: head, tail, ring_mask, ring_entries, flags, dropped, array, resv1  (u32 each), user_addr u64
    cq: head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1  (u32 each), user_addr u64

mmaps of the ring fd: the SQ ring at offset 0 (with IORING_FEAT_SINGLE_MMAP the CQ ring shares
it), the CQ ring at 0x8000000, the SQE array at 0x10000000. The SQ ring's ``array`` maps ring
positions to SQE indexes; it is filled once with the identity (position i -> SQE i), so
submitting is: write SQE ``tail & mask``, then store ``tail + 1``.

struct io_uring_sqe (64 bytes)::

    off  size  field                         off  size  field
      0     1  opcode (IORING_OP_*)           28     4  op flags: msg_flags (RECV/SEND),
      1     1  flags (IOSQE_*)                            poll32_events (POLL_ADD),
      2     2  ioprio                                     cancel_flags (ASYNC_CANCEL)
      4     4  fd                             32     8  user_data (comes back in the CQE)
      8     8  off / addr2 / cmd_op (u32)     40     2  buf_index / buf_group
     16     8  addr (buffer; cancel: target   42     2  personality
                user_data; socket command:    44     4  splice_fd_in / file_index /
                u32 level, u32 optname)                  optlen (socket command)
     24     4  len                            48    16  addr3 / optval pointer, pad

struct io_uring_cqe (16 bytes, no IORING_SETUP_CQE32)::

      0     8  user_data
      8     4  res (bytes, or -errno)
     12     4  flags (IORING_CQE_F_*)

struct io_uring_getevents_arg (24 bytes, IORING_ENTER_EXT_ARG; a wait timeout without a
TIMEOUT SQE)::

      0     8  sigmask (0)         12     4  min_wait_usec (0) / pad
      8     4  sigmask_sz (0)      16     8  ts -> struct __kernel_timespec {i64 sec, i64 nsec}

Memory ordering. The rings are shared with the kernel without locks. The kernel side uses
``smp_load_acquire`` for the SQ tail and CQ head it reads, and ``smp_store_release`` for the
SQ head and CQ tail it writes. On x86-64 (TSO) ordinary loads and stores are enough on our
side: stores are not reordered with other stores (the SQE bytes are visible before the new SQ
tail; CQE copies are done before the new CQ head), and loads are not reordered with other loads
(after reading the CQ tail, the CQEs up to it are visible). CPython writes a memoryview item
of format ``I`` with one aligned 32-bit store and reads it with one load, and the
``io_uring_enter`` syscall is itself a full barrier. A weakly ordered CPU (arm64) would need a
store-release of the SQ tail (``stlr``) after writing SQEs, a load-acquire of the CQ tail
(``ldar``) before reading CQEs, and a store-release of the CQ head after copying them out,
which plain Python stores cannot express; ``probe`` therefore reports io_uring unavailable on
anything but x86-64, and the receiver falls back to epoll there.

Nothing here logs or knows about connections: the io_uring driver (receiver/uring.py) owns
the meaning of ``user_data``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import platform
import struct
from dataclasses import dataclass

from shardbroker.errors import PlatformError
from shardbroker.platform import linux, syscalls

SYS_IO_URING_SETUP = syscalls.UNIFIED["io_uring_setup"]
SYS_IO_URING_ENTER = syscalls.UNIFIED["io_uring_enter"]
SYS_IO_URING_REGISTER = syscalls.UNIFIED["io_uring_register"]

# io_uring_setup flags
IORING_SETUP_CQSIZE = 1 << 3
IORING_SETUP_CLAMP = 1 << 4
IORING_SETUP_SUBMIT_ALL = 1 << 7
IORING_SETUP_COOP_TASKRUN = 1 << 8
IORING_SETUP_SINGLE_ISSUER = 1 << 12
IORING_SETUP_DEFER_TASKRUN = 1 << 13

# features reported by the kernel
IORING_FEAT_SINGLE_MMAP = 1 << 0
IORING_FEAT_NODROP = 1 << 1
IORING_FEAT_FAST_POLL = 1 << 5
IORING_FEAT_POLL_32BITS = 1 << 6
IORING_FEAT_EXT_ARG = 1 << 8
IORING_FEAT_CQE_SKIP = 1 << 11
IORING_FEAT_MIN_TIMEOUT = 1 << 15

# SQE flags
IOSQE_IO_LINK = 1 << 2  # the next SQE starts when this one succeeds (else it is cancelled)
IOSQE_CQE_SKIP_SUCCESS = 1 << 6  # no CQE unless it fails; a failure also silences the
#                                  CQEs of the links it cancels (REQ_F_SKIP_LINK_CQES)

# ASYNC_CANCEL flags
IORING_ASYNC_CANCEL_ALL = 1 << 0
IORING_ASYNC_CANCEL_FD = 1 << 1

# io_uring_enter flags
IORING_ENTER_GETEVENTS = 1 << 0
IORING_ENTER_EXT_ARG = 1 << 3

# io_uring_register opcodes
IORING_REGISTER_PROBE = 8
IO_URING_OP_SUPPORTED = 1

# mmap offsets
IORING_OFF_SQ_RING = 0
IORING_OFF_CQ_RING = 0x8000000
IORING_OFF_SQES = 0x10000000

# opcodes
IORING_OP_NOP = 0
IORING_OP_POLL_ADD = 6
IORING_OP_RECVMSG = 10
IORING_OP_ASYNC_CANCEL = 14
IORING_OP_SEND = 26
IORING_OP_RECV = 27
IORING_OP_URING_CMD = 46
OPCODE_NAMES = {IORING_OP_NOP: "NOP", IORING_OP_POLL_ADD: "POLL_ADD",
                IORING_OP_ASYNC_CANCEL: "ASYNC_CANCEL", IORING_OP_SEND: "SEND",
                IORING_OP_RECVMSG: "RECVMSG",
                IORING_OP_RECV: "RECV", IORING_OP_URING_CMD: "URING_CMD"}
REQUIRED_OPS = (IORING_OP_NOP, IORING_OP_POLL_ADD, IORING_OP_ASYNC_CANCEL, IORING_OP_RECV,
                IORING_OP_RECVMSG)
# RECV/RECVMSG ioprio flag (5.19): arm the poll before the first try, so the receive runs
# once the socket polls readable, i.e. once SO_RCVLOWAT bytes are queued. An older kernel
# answers EINVAL (the driver then stops asking for it).
IORING_RECVSEND_POLL_FIRST = 1 << 0
REQUIRED_FEATURES = {
    IORING_FEAT_SINGLE_MMAP: "SINGLE_MMAP",
    IORING_FEAT_NODROP: "NODROP",  # completions are never dropped when the CQ ring is full
    IORING_FEAT_FAST_POLL: "FAST_POLL",  # socket ops wait by poll, not in io-wq threads
    IORING_FEAT_POLL_32BITS: "POLL_32BITS",
    IORING_FEAT_EXT_ARG: "EXT_ARG",  # wait with a timeout in io_uring_enter itself
    IORING_FEAT_CQE_SKIP: "CQE_SKIP",
}

MSG_WAITALL = 0x100
MSGHDR = struct.Struct("<QI4xQQQQi4x")  # name, namelen, iov, iovlen, control, controllen, flags
IOVEC = struct.Struct("<QQ")  # base, len
assert MSGHDR.size == 56
POLLIN = 0x001
POLLOUT = 0x004

SQE = struct.Struct("<BBHiQQIIQHHiQQ")
CQE = struct.Struct("<QiI")
PARAMS = struct.Struct("<IIIIIII12x" + "IIIIIIIIQ" + "IIIIIIIIQ")
assert SQE.size == 64 and CQE.size == 16 and PARAMS.size == 120

# The flag sets tried in order: the fastest the kernel accepts wins.
SETUP_PREFERENCES = (
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL,
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL,
    0,
)
SETUP_FLAG_NAMES = {IORING_SETUP_SINGLE_ISSUER: "SINGLE_ISSUER",
                    IORING_SETUP_DEFER_TASKRUN: "DEFER_TASKRUN",
                    IORING_SETUP_COOP_TASKRUN: "COOP_TASKRUN",
                    IORING_SETUP_SUBMIT_ALL: "SUBMIT_ALL"}

DISABLE_ENV = "SHARDBROKER_URING_DISABLE"  # test knob: probe acts as if io_uring_disabled = 2

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = [ctypes.c_long] * 7  # glibc's syscall() only moves registers: fixed is fine


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_int64)]


class _GeteventsArg(ctypes.Structure):
    _fields_ = [("sigmask", ctypes.c_uint64), ("sigmask_sz", ctypes.c_uint32),
                ("min_wait_usec", ctypes.c_uint32), ("ts", ctypes.c_uint64)]


def flag_names(flags: int, names: dict[int, str]) -> list[str]:
    return [n for bit, n in names.items() if flags & bit]


def buffer_address(buf: mmap.mmap | bytearray | memoryview, offset: int = 0) -> int:
    """Address of ``buf[offset]``. The ctypes object that exports the buffer is dropped before
    returning, so the caller must keep ``buf`` alive (and mapped) while the kernel may still
    write there, i.e. until every SQE that targets it has completed."""
    c = ctypes.c_char.from_buffer(buf, offset)
    try:
        return ctypes.addressof(c)
    finally:
        del c


class Ring:
    """One io_uring: queue SQEs with ``prep_*``, then ``enter`` (submit + wait) and ``reap``.

    Single-threaded by design (IORING_SETUP_SINGLE_ISSUER when the kernel has it). ``pending``
    counts SQEs queued but not yet submitted."""

    def __init__(self, entries: int = 256, flags: int | None = None,
                 cq_entries: int = 0) -> None:
        self.fd = -1
        self._maps: list[mmap.mmap] = []
        self._views: list[memoryview] = []
        last: OSError | None = None
        for want in (SETUP_PREFERENCES if flags is None else (flags,)):
            try:
                self._setup(entries, want, cq_entries)
                break
            except OSError as exc:
                last = exc
                if exc.errno != errno.EINVAL:
                    raise
        else:
            assert last is not None
            raise last

    # ------------------------------------------------------------------ setup

    def _setup(self, entries: int, flags: int, cq_entries: int) -> None:
        if cq_entries:
            flags |= IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP
        params = ctypes.create_string_buffer(PARAMS.size)
        PARAMS.pack_into(params, 0, 0, cq_entries, flags, *([0] * 22))
        fd = _syscall(SYS_IO_URING_SETUP, entries, ctypes.addressof(params), 0, 0, 0, 0)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"io_uring_setup: {os.strerror(err)}")
        self.fd = fd
        f = PARAMS.unpack_from(params)
        self.sq_entries, self.cq_entries, self.flags = f[0], f[1], f[2] & ~(
            IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP)
        self.features = f[5]
        (sq_head, sq_tail, sq_mask, _sq_n, _sq_flags, _sq_dropped, sq_array) = f[7:14]
        (cq_head, cq_tail, cq_mask, _cq_n, cq_overflow, cq_cqes) = f[16:22]
        try:
            sq_size = sq_array + self.sq_entries * 4
            cq_size = cq_cqes + self.cq_entries * CQE.size
            rw = mmap.PROT_READ | mmap.PROT_WRITE
            if self.features & IORING_FEAT_SINGLE_MMAP:
                sq_mm = mmap.mmap(fd, max(sq_size, cq_size), mmap.MAP_SHARED, rw,
                                  offset=IORING_OFF_SQ_RING)
                cq_mm = sq_mm
                self._maps.append(sq_mm)
            else:
                sq_mm = mmap.mmap(fd, sq_size, mmap.MAP_SHARED, rw, offset=IORING_OFF_SQ_RING)
                self._maps.append(sq_mm)
                cq_mm = mmap.mmap(fd, cq_size, mmap.MAP_SHARED, rw, offset=IORING_OFF_CQ_RING)
                self._maps.append(cq_mm)
            self.sqes = mmap.mmap(fd, self.sq_entries * SQE.size, mmap.MAP_SHARED, rw,
                                  offset=IORING_OFF_SQES)
            self._maps.append(self.sqes)
        except OSError:
            self.close()
            raise
        sq32 = memoryview(sq_mm).cast("I")
        cq32 = sq32 if cq_mm is sq_mm else memoryview(cq_mm).cast("I")
        self._views += [sq32] if cq32 is sq32 else [sq32, cq32]
        self.sq32, self.cq32 = sq32, cq32
        self.cq_mm = cq_mm
        self.sq_head_i, self.sq_tail_i = sq_head // 4, sq_tail // 4
        self.cq_head_i, self.cq_tail_i = cq_head // 4, cq_tail // 4
        self.cq_overflow_i = cq_overflow // 4
        self.sq_mask = sq32[sq_mask // 4]
        self.cq_mask = cq32[cq_mask // 4]
        self.cqes_off = cq_cqes
        for i in range(self.sq_entries):  # identity: ring position i -> SQE i
            sq32[sq_array // 4 + i] = i
        self.tail = sq32[self.sq_tail_i]  # our copy of the SQ tail (only we write it)
        self.pending = 0
        self.enters = 0
        self._arg = _GeteventsArg()
        self._ts = _Timespec()
        self._arg.ts = ctypes.addressof(self._ts)
        self._argp = ctypes.addressof(self._arg)

    def close(self) -> None:
        for v in self._views:
            v.release()
        self._views.clear()
        for m in self._maps:
            with contextlib.suppress(BufferError):
                m.close()
        self._maps.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------ submission

    def prep(self, opcode: int, fd: int, addr: int, length: int, op_flags: int,
             user_data: int, off: int = 0, sqe_flags: int = 0, splice_fd_in: int = 0,
             addr3: int = 0, ioprio: int = 0) -> None:
        """Queue one SQE. A full SQ ring is submitted first (without waiting), unless the
        previous SQE links to this one: a link chain must go in whole, so callers reserve room
        for a chain with ``reserve`` first."""
        if self.pending >= self.sq_entries:
            self.submit()
        tail = self.tail
        SQE.pack_into(self.sqes, (tail & self.sq_mask) * 64, opcode, sqe_flags, ioprio, fd, off,
                      addr, length, op_flags, user_data, 0, 0, splice_fd_in, addr3, 0)
        self.tail = tail = (tail + 1) & 0xFFFFFFFF
        # x86 TSO: the SQE stores above are visible before this tail store (see the top).
        self.sq32[self.sq_tail_i] = tail
        self.pending += 1

    def reserve(self, n: int) -> None:
        """Make room for ``n`` SQEs that must be submitted together (a link chain)."""
        if self.pending + n > self.sq_entries:
            self.submit()

    def prep_recv(self, fd: int, addr: int, length: int, user_data: int,
                  msg_flags: int = MSG_WAITALL, sqe_flags: int = 0, ioprio: int = 0) -> None:
        self.prep(IORING_OP_RECV, fd, addr, length, msg_flags, user_data, sqe_flags=sqe_flags,
                  ioprio=ioprio)

    def prep_recvmsg(self, fd: int, msghdr_addr: int, user_data: int, msg_flags: int = 0,
                     ioprio: int = 0) -> None:
        """RECVMSG into the iovecs a ``struct msghdr`` (``MSGHDR``) at ``msghdr_addr`` names;
        the caller keeps the msghdr and its iovecs alive until the completion."""
        self.prep(IORING_OP_RECVMSG, fd, msghdr_addr, 1, msg_flags, user_data, ioprio=ioprio)

    def prep_poll_add(self, fd: int, events: int, user_data: int) -> None:
        self.prep(IORING_OP_POLL_ADD, fd, 0, 0, events, user_data)

    def prep_cancel(self, target_user_data: int, user_data: int) -> None:
        self.prep(IORING_OP_ASYNC_CANCEL, -1, target_user_data, 0, 0, user_data)

    def prep_cancel_fd(self, fd: int, user_data: int) -> None:
        """Cancel every request armed on ``fd`` (and with it the rest of its link chain)."""
        self.prep(IORING_OP_ASYNC_CANCEL, fd, 0, 0,
                  IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL, user_data)

    def prep_nop(self, user_data: int) -> None:
        self.prep(IORING_OP_NOP, -1, 0, 0, 0, user_data)

    # ------------------------------------------------------------------ enter / reap

    def _enter(self, to_submit: int, min_complete: int, flags: int, arg: int, argsz: int) -> int:
        self.enters += 1
        ret: int = _syscall(SYS_IO_URING_ENTER, self.fd, to_submit, min_complete, flags, arg,
                            argsz)
        if ret < 0:
            err = ctypes.get_errno()
            if err in (errno.ETIME, errno.EINTR, errno.EAGAIN, errno.EBUSY):
                ret = 0  # a timeout, a signal, or a full CQ ring: reap what is there
            else:
                raise OSError(err, f"io_uring_enter: {os.strerror(err)}")
        self.pending = (self.tail - self.sq32[self.sq_head_i]) & 0xFFFFFFFF
        return ret

    def submit(self) -> int:
        """Submit what is queued, without waiting. Returns SQEs the kernel took."""
        if not self.pending:
            return 0
        return self._enter(self.pending, 0, 0, 0, 0)

    def enter(self, timeout_s: float | None, min_complete: int = 1,
              min_wait_us: int = 0) -> int:
        """One io_uring_enter: submit what is queued and wait until ``min_complete``
        completions are ready or ``timeout_s`` passes (None: no timeout, 0: do not wait).
        ``min_wait_us`` (IORING_FEAT_MIN_TIMEOUT): once that long has passed, return as soon
        as at least one completion is ready, even if fewer than ``min_complete``."""
        if timeout_s is None:
            return self._enter(self.pending, min_complete, IORING_ENTER_GETEVENTS, 0, 0)
        if timeout_s <= 0:
            if self.cq_ready():
                return self.submit()
            min_complete = 0
        ns = int(timeout_s * 1e9)
        ts = self._ts
        ts.tv_sec, ts.tv_nsec = divmod(ns, 1_000_000_000)
        arg = self._arg
        if arg.min_wait_usec != min_wait_us:
            arg.min_wait_usec = min_wait_us
        return self._enter(self.pending, min_complete,
                           IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, self._argp, 24)

    def cq_ready(self) -> int:
        cq = self.cq32
        return int(cq[self.cq_tail_i] - cq[self.cq_head_i]) & 0xFFFFFFFF

    def reap(self) -> list[tuple[int, int, int]]:
        """Copy out every ready completion as (user_data, res, flags) and free their slots."""
        cq = self.cq32
        head = cq[self.cq_head_i]
        tail = cq[self.cq_tail_i]  # x86: later CQE loads are not reordered before this one
        if head == tail:
            return []
        mask, mm, base, unpack = self.cq_mask, self.cq_mm, self.cqes_off, CQE.unpack_from
        out = []
        while head != tail:
            out.append(unpack(mm, base + (head & mask) * 16))
            head = (head + 1) & 0xFFFFFFFF
        cq[self.cq_head_i] = head  # after the copies: the kernel may reuse the slots now
        return out

    @property
    def cq_overflow(self) -> int:
        return int(self.cq32[self.cq_overflow_i])

    # ------------------------------------------------------------------ probe

    def supported_ops(self) -> set[int]:
        n = 256
        buf = ctypes.create_string_buffer(16 + n * 8)
        ret = _syscall(SYS_IO_URING_REGISTER, self.fd, IORING_REGISTER_PROBE,
                       ctypes.addressof(buf), n, 0, 0)
        if ret < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"io_uring_register(PROBE): {os.strerror(err)}")
        ops_len = buf.raw[1]
        raw = buf.raw
        return {raw[16 + i * 8] for i in range(ops_len)
                if struct.unpack_from("<H", raw, 16 + i * 8 + 2)[0] & IO_URING_OP_SUPPORTED}


@dataclass(frozen=True, slots=True)
class Probe:
    """What the kernel allows. ``ok``: the uring backend can run; else ``reason`` says why."""

    ok: bool
    reason: str
    setup_flags: int = 0
    features: int = 0

    @property
    def min_timeout(self) -> bool:
        return bool(self.features & IORING_FEAT_MIN_TIMEOUT)

    @property
    def setup_flag_names(self) -> list[str]:
        return flag_names(self.setup_flags, SETUP_FLAG_NAMES)


def _disabled_sysctl() -> str | None:
    if os.environ.get(DISABLE_ENV, "0") not in ("", "0"):
        return "2"  # the test knob: the same path as the real sysctl
    return linux.read_sysctl("kernel.io_uring_disabled")  # None: kernels before 6.6 lack it


def probe_ring(entries: int = 8) -> Probe:
    """Can this process run the io_uring receive path? Checks, in order: the CPU's memory
    model, kernel.io_uring_disabled, io_uring_setup (EPERM/ENOSYS under seccomp, e.g. Docker's
    default profile), the features and opcodes the loop needs, and one NOP round trip."""
    machine = platform.machine()
    if machine not in ("x86_64", "AMD64"):
        return Probe(False, f"CPU {machine}: the ring needs acquire/release ordering that "
                            "plain Python stores do not give (x86-64 only)")
    disabled = _disabled_sysctl()
    if disabled == "2":
        why = (f"{DISABLE_ENV} is set" if os.environ.get(DISABLE_ENV, "0") not in ("", "0")
               else "kernel.io_uring_disabled = 2")
        return Probe(False, f"{why}: io_uring is switched off for every process "
                            "(sysctl -w kernel.io_uring_disabled=0 enables it)")
    try:
        ring = Ring(entries)
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        if exc.errno == errno.ENOSYS:
            why = ("io_uring_setup: ENOSYS (a seccomp filter, e.g. Docker's or the container "
                   "runtime's default profile, or a kernel built without CONFIG_IO_URING)")
        elif exc.errno == errno.EPERM:
            why = ("io_uring_setup: EPERM (" + ("kernel.io_uring_disabled = 1 and this process "
                   "is not in kernel.io_uring_group" if disabled == "1" else
                   "blocked by a seccomp filter or LSM, e.g. Docker's default seccomp profile")
                   + ")")
        else:
            why = f"io_uring_setup: {name} ({exc.strerror})"
        return Probe(False, why)
    try:
        missing = [n for bit, n in REQUIRED_FEATURES.items() if not ring.features & bit]
        if missing:
            return Probe(False, f"kernel lacks io_uring features {', '.join(missing)}",
                         ring.flags, ring.features)
        try:
            ops = ring.supported_ops()
        except OSError as exc:
            return Probe(False, f"IORING_REGISTER_PROBE failed: {exc.strerror}",
                         ring.flags, ring.features)
        lacking = [OPCODE_NAMES[o] for o in REQUIRED_OPS if o not in ops]
        if lacking:
            return Probe(False, f"kernel lacks io_uring opcodes {', '.join(lacking)}",
                         ring.flags, ring.features)
        try:
            ring.prep_nop(0x5B)
            ring.enter(1.0)
            cqes = ring.reap()
        except OSError as exc:
            return Probe(False, f"io_uring_enter: {exc.strerror}", ring.flags, ring.features)
        if cqes != [(0x5B, 0, 0)]:
            return Probe(False, f"NOP round trip returned {cqes}", ring.flags, ring.features)
        return Probe(True, "", ring.flags, ring.features)
    finally:
        ring.close()


def probe() -> tuple[bool, str]:
    """(available, a one-line explanation), for `doctor` and logs."""
    p = probe_ring()
    if p.ok:
        return True, ("io_uring available (setup " + ("|".join(p.setup_flag_names) or "plain")
                      + f", kernel {platform.release()})")
    return False, p.reason


def unavailable_error(p: Probe) -> PlatformError:
    return PlatformError(
        "io_uring", 0, f"backend 'uring' cannot start: {p.reason}",
        hint="use --backend auto (falls back to epoll) or --backend epoll",
    )
