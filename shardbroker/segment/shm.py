"""POSIX shared-memory segment lifecycle: create (supervisor only), attach, prefault, unlink.

posix_ipc is used rather than multiprocessing.shared_memory because on Python 3.11 the stdlib
registers *attachers* with the resource tracker, which may unlink the segment when an attacher
exits (CPython issue 82300). Here only the supervisor that created a segment unlinks it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import posix_ipc

from shardbroker.errors import SegmentError
from shardbroker.platform import linux
from shardbroker.segment.layout import (
    FLAG_CLOSED_CLEANLY,
    FLAG_SERVING,
    SEGMENT_HEADER,
    SEGMENT_HEADER_SIZE,
    U32,
    U64,
    Geometry,
    SegmentHeader,
    read_segment_header,
    write_segment_header,
)

_FLAGS_OFFSET = 60
_PID_OFFSET = 72
_GENERATION_OFFSET = 80

SHM_DIR = "/dev/shm"
# Memory left free beside a new segment: the supervisor, its receivers and the rest of the
# host need some. A segment that takes the last byte of /dev/shm or of MemAvailable gets the
# broker OOM-killed during the prefault (a 24 GB segment on a 24 GiB host did).
HEADROOM_BYTES = 256 << 20
# Prefault this much per madvise call. MADV_POPULATE_WRITE is interrupted only by fatal
# signals; a handled SIGTERM waits for the call to end, so chunks bound how long a stop
# request waits (32 MiB: ~20 ms at the ~1.7 GB/s first-touch rate measured here, ~100 ms
# on a busy host).
PREFAULT_CHUNK = 32 << 20


def shm_name(name: str) -> str:
    """posix_ipc wants a leading slash; operators type names without one."""
    bare = name.lstrip("/")
    if not bare or "/" in bare or len(bare) > 200:
        raise SegmentError(
            f"invalid segment name {name!r}", hint="use letters, digits, '-', '_' (no '/')"
        )
    return "/" + bare


@dataclass
class Mapped:
    """A mapped segment. ``buf`` is a memoryview of the whole mapping."""

    name: str
    mm: mmap.mmap
    buf: memoryview
    header: SegmentHeader

    @property
    def geometry(self) -> Geometry:
        return self.header.geometry

    def close(self) -> None:
        self.buf.release()
        # A caller may still hold a payload view; the mapping then goes with the last view.
        with contextlib.suppress(BufferError):
            self.mm.close()


def is_file_segment(name: str) -> bool:
    """A name with a directory (``/dev/hugepages/x``) is a file, e.g. on hugetlbfs; a bare
    name is a POSIX shm object in /dev/shm."""
    return "/" in name.strip("/")


HUGE_PAGE = 2 << 20


def binary_size(n: int) -> str:
    """Bytes for people, in binary units: 512.0 MiB, 23.4 GiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


@dataclass(frozen=True)
class MemoryRoom:
    """Room for a new segment's pages, in bytes: free space in the filesystem that will hold
    them (``fs_path``: /dev/shm) and the kernel's MemAvailable. None: unknown, not checked.
    Passed in rather than read inside ``create`` so tests can ask with made-up numbers."""

    fs_path: str
    fs_free: int | None
    mem_available: int | None


def read_room(fs_path: str = SHM_DIR) -> MemoryRoom:
    return MemoryRoom(fs_path, linux.fs_free_bytes(fs_path), linux.mem_available_bytes())


def check_room(name: str, g: Geometry, room: MemoryRoom,
               headroom: int = HEADROOM_BYTES) -> None:
    """Refuse a segment that would not fit in ``room``. Both limits count: a tmpfs larger than
    RAM still runs out of memory, a smaller one of space. ``headroom`` must stay available in
    memory (the receivers and the rest of the host need it); the tmpfs only has to hold the
    segment (a container's /dev/shm is often sized to it exactly)."""
    size = g.total_bytes
    fs_short = room.fs_free is not None and size > room.fs_free
    mem_short = room.mem_available is not None and size + headroom > room.mem_available
    if not (fs_short or mem_short):
        return
    raise SegmentError(
        f"segment {name!r} needs {binary_size(size)} ({g.shard_count} shards x "
        f"{binary_size(g.blog_bytes)} BLog + {binary_size(g.pbr_bytes)} PBR) but "
        f"{room.fs_path} has {_known_size(room.fs_free)} free and MemAvailable is "
        f"{_known_size(room.mem_available)}, of which {binary_size(headroom)} must stay free",
        hint="lower --blog-size (BLog per shard) or the shard count (the larger of --threads "
             "and broker.max_threads, which defaults to one per CPU) until it fits, or free "
             f"memory and space in {room.fs_path} (containers: --shm-size)",
    )


def _known_size(n: int | None) -> str:
    return "unknown" if n is None else binary_size(n)


def _create_file(path: str, g: Geometry, mode: int) -> mmap.mmap:
    size = (g.total_bytes + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE
    need = size // HUGE_PAGE
    free = linux.hugepages_free()
    if free < need:
        raise SegmentError(
            f"hugetlbfs segment needs {need} free 2 MiB huge pages, the kernel has {free}",
            hint=f"reserve them: tools/reserve_hugepages.sh {need} (vm.nr_hugepages)")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode)
    except FileExistsError as exc:
        raise SegmentError(f"segment {path} already exists",
                           hint="remove it if no broker uses it") from exc
    except OSError as exc:
        raise SegmentError(f"cannot create {path}: {exc.strerror}",
                           hint="is segment.hugetlbfs_mount a hugetlbfs mount? "
                                "(mount -t hugetlbfs none /dev/hugepages)") from exc
    try:
        os.ftruncate(fd, size)
        return mmap.mmap(fd, size)
    except OSError as exc:
        os.unlink(path)
        raise SegmentError(f"cannot size or map {path}: {exc.strerror}",
                           hint="reserve more huge pages (tools/reserve_hugepages.sh)") from exc
    finally:
        os.close(fd)


def create(name: str, g: Geometry, broker_id: int = 0, mode: int = 0o600,
           room: MemoryRoom | None = None) -> Mapped:
    """Create a new segment exclusively, lay it out. The caller owns (and must unlink) it.

    A segment larger than the memory room (``room``, default: read now) is refused before
    anything is created. Huge-page files are checked against free huge pages instead."""
    if is_file_segment(name):
        mm = _create_file(name, g, mode)
        return _lay_out(name, mm, g, broker_id)
    check_room(name, g, room if room is not None else read_room())
    try:
        shm = posix_ipc.SharedMemory(shm_name(name), posix_ipc.O_CREX, mode=mode,
                                     size=g.total_bytes)
    except posix_ipc.ExistentialError as exc:
        raise SegmentError(
            f"segment {name!r} already exists",
            hint=f"pick another --segment, or remove a stale one with `rm /dev/shm/{name}` "
                 "after checking no broker uses it (or `shardbroker run --recover` it)",
        ) from exc
    except (OSError, ValueError) as exc:
        raise SegmentError(
            f"cannot create segment {name!r} of {g.total_bytes} bytes: {exc}",
            hint="check free space in /dev/shm (`df -h /dev/shm`; containers need --shm-size)",
        ) from exc
    try:
        mm = mmap.mmap(shm.fd, g.total_bytes)
    except OSError as exc:
        unlink(name)  # created above, unusable: leave nothing behind
        raise SegmentError(f"cannot map segment {name!r} of {binary_size(g.total_bytes)}: "
                           f"{exc.strerror}", hint="check free memory (`free -h`)") from exc
    finally:
        shm.close_fd()
    return _lay_out(name, mm, g, broker_id)


def _lay_out(name: str, mm: mmap.mmap, g: Geometry, broker_id: int) -> Mapped:
    """Write the header of a segment this process just created."""
    buf = memoryview(mm)
    write_segment_header(buf, g, broker_id, time.time_ns(), os.getpid())
    return Mapped(name, mm, buf, read_segment_header(buf))


def attach(name: str, writable: bool = True) -> Mapped:
    """Map an existing segment (receivers read-write, consumers read-only)."""
    if is_file_segment(name):
        return _attach_file(name, writable)
    try:
        shm = posix_ipc.SharedMemory(shm_name(name), 0, read_only=not writable)
    except posix_ipc.ExistentialError as exc:
        raise SegmentError(
            f"segment {name!r} does not exist",
            hint="check the name in the broker's ready line or `ls /dev/shm`",
        ) from exc
    except posix_ipc.PermissionsError as exc:
        raise SegmentError(f"no permission to open segment {name!r}",
                           hint="run as the broker's user or group") from exc
    try:
        size = shm.size
        if size < SEGMENT_HEADER.size:
            raise SegmentError(f"segment {name!r} is only {size} bytes", hint="not a segment")
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        mm = mmap.mmap(shm.fd, size, prot=prot)
    finally:
        shm.close_fd()
    buf = memoryview(mm)
    try:
        header = read_segment_header(buf)
    except ValueError as exc:
        buf.release()
        mm.close()
        raise SegmentError(f"segment {name!r}: {exc}", hint="is this a shardbroker segment?") \
            from exc
    return Mapped(name, mm, buf, header)


def _attach_file(path: str, writable: bool) -> Mapped:
    try:
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    except FileNotFoundError as exc:
        raise SegmentError(f"segment {path} does not exist",
                           hint="check the name in the broker's ready line") from exc
    try:
        size = os.fstat(fd).st_size
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        mm = mmap.mmap(fd, size, prot=prot)
    finally:
        os.close(fd)
    buf = memoryview(mm)
    return Mapped(path, mm, buf, read_segment_header(buf))


def map_header_page(name: str) -> mmap.mmap:
    """Map only the segment header page, writable (followers set the futex ``sleepers``
    flag there; their view of the rest of the segment stays read-only)."""
    try:
        if is_file_segment(name):
            fd = os.open(name, os.O_RDWR)
        else:
            fd = os.open(segment_path(name), os.O_RDWR)
    except FileNotFoundError as exc:
        raise SegmentError(f"segment {name!r} does not exist") from exc
    except PermissionError as exc:
        raise SegmentError(f"no write access to segment {name!r}",
                           hint="run as the broker's user") from exc
    try:
        return mmap.mmap(fd, SEGMENT_HEADER_SIZE)
    finally:
        os.close(fd)


def unlink(name: str) -> bool:
    """Remove the segment's name; mappings stay valid until unmapped. False if already gone."""
    if is_file_segment(name):
        try:
            os.unlink(name)
        except FileNotFoundError:
            return False
        return True
    try:
        posix_ipc.unlink_shared_memory(shm_name(name))
    except posix_ipc.ExistentialError:
        return False
    return True


def prefault(m: Mapped, between_chunks: Callable[[], None] | None = None,
             chunk: int = PREFAULT_CHUNK) -> float:
    """Touch every page before traffic (first-touch faults cost ~1.7 GB/s here). Seconds taken.

    ``between_chunks`` runs after every ``chunk`` bytes; it raises to stop (the supervisor's
    raises when SIGTERM or SIGINT arrived, which would otherwise wait for the whole segment)."""
    t0 = time.perf_counter()
    total = m.geometry.total_bytes
    for start in range(0, total, chunk):
        linux.populate_write(m.mm, min(chunk, total - start), start)
        if between_chunks is not None:
            between_chunks()
    return time.perf_counter() - t0


def set_flags(m: Mapped, set_bits: int = 0, clear_bits: int = 0) -> None:
    (flags,) = U32.unpack_from(m.buf, _FLAGS_OFFSET)
    U32.pack_into(m.buf, _FLAGS_OFFSET, (flags | set_bits) & ~clear_bits)


def mark_serving(m: Mapped) -> None:
    set_flags(m, FLAG_SERVING, FLAG_CLOSED_CLEANLY)


def mark_closed(m: Mapped) -> None:
    set_flags(m, FLAG_CLOSED_CLEANLY, FLAG_SERVING)



def take_over(m: Mapped) -> int:
    """Re-attach a segment whose supervisor died: refuse one a live process still serves,
    then record this supervisor as its owner and bump the generation. Returns it."""
    h = m.header
    if h.flags & FLAG_SERVING and h.supervisor_pid and linux.pid_alive(h.supervisor_pid):
        raise SegmentError(f"segment {m.name!r} is served by a running broker (pid "
                           f"{h.supervisor_pid})", hint="stop that broker first")
    U64.pack_into(m.buf, _PID_OFFSET, os.getpid())
    U64.pack_into(m.buf, _GENERATION_OFFSET, h.generation + 1)
    return h.generation + 1


def segment_path(name: str) -> str:
    return name if is_file_segment(name) else f"/dev/shm/{name.lstrip('/')}"


def share_with_group(name: str, group: str) -> None:
    """Let ``group`` read the segment (consumers in that group map it read-only)."""
    import grp

    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError as exc:
        raise SegmentError(f"group {group!r} does not exist",
                           hint="create it (groupadd) or clear segment.group") from exc
    path = segment_path(name)
    try:
        os.chown(path, -1, gid)
        os.chmod(path, 0o640)
    except OSError as exc:
        raise SegmentError(f"cannot give group {group!r} access to {path}: {exc.strerror}",
                           hint="the broker's user must be a member of that group, or root") \
            from exc
