"""Linux-specific calls behind small functions that turn errno into clear errors.

Everything that is a raw number (socket options Python has no name for, madvise advice values,
prctl options) is defined here and only here.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
import socket
from dataclasses import dataclass

from shardbroker.errors import PlatformError

MADV_POPULATE_WRITE = 23  # Linux 5.14; Python 3.11's mmap has no name for it
SO_BUSY_POLL = 46
SO_INCOMING_CPU = 49
SO_PREFER_BUSY_POLL = 69
SO_RCVBUFFORCE = 33
TCP_QUICKACK = 12
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


def populate_write(mm: mmap.mmap, length: int, start: int = 0) -> None:
    """Prefault ``length`` bytes of a shared mapping for writing (MADV_POPULATE_WRITE).

    Each process maps the segment anew, so each one that writes should populate its own page
    tables too (cheap once the supervisor has allocated the pages)."""
    try:
        mm.madvise(MADV_POPULATE_WRITE, start, length)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            # Kernels before 5.14: touch one byte per page instead (slower, same effect).
            view = memoryview(mm)
            try:
                for off in range(start, start + length, mmap.PAGESIZE):
                    view[off] = view[off]
            finally:
                view.release()
            return
        raise PlatformError(
            "madvise(MADV_POPULATE_WRITE)", exc.errno or 0, str(exc),
            hint="check free memory in /dev/shm and the memory cgroup limit",
        ) from exc


def pin_to_cpu(cpu: int) -> None:
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:
        raise PlatformError(
            "sched_setaffinity", exc.errno or 0, f"cannot pin to CPU {cpu}: {exc.strerror}",
            hint=f"CPU {cpu} must be in this process's cpuset (allowed: "
                 f"{sorted(os.sched_getaffinity(0))})",
        ) from exc


def allowed_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to signal this process when its parent exits (no orphan receivers)."""
    if _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise PlatformError("prctl(PR_SET_PDEATHSIG)", err, os.strerror(err))


@dataclass(frozen=True, slots=True)
class AppliedOption:
    """A socket option as requested and as the kernel applied it (None: refused)."""

    name: str
    requested: int
    applied: int | None
    error: str = ""


def set_int_option(sock: socket.socket, level: int, opt: int, value: int) -> int:
    sock.setsockopt(level, opt, value)
    return int(sock.getsockopt(level, opt))


def set_rcvbuf(sock: socket.socket, size: int, force: bool = False) -> AppliedOption:
    """SO_RCVBUF (or SO_RCVBUFFORCE as root). The kernel doubles the request, capped by
    net.core.rmem_max unless forced; setting it also switches receive autotuning off."""
    try:
        opt = SO_RCVBUFFORCE if force else socket.SO_RCVBUF
        sock.setsockopt(socket.SOL_SOCKET, opt, size)
    except OSError as exc:
        return AppliedOption("SO_RCVBUF", size, None, exc.strerror or str(exc))
    return AppliedOption("SO_RCVBUF", size, sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


def rcvbuf(sock: socket.socket) -> int:
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


def set_rcvlowat(sock: socket.socket, nbytes: int) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, nbytes)


def set_quickack(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)


def read_sysctl(path: str) -> str | None:
    try:
        with open(os.path.join("/proc/sys", path.replace(".", "/"))) as f:
            return f.read().strip()
    except OSError:
        return None


def read_allowed_cpus(pid: int) -> list[int] | None:
    """The CPUs a process may run on, read back from /proc/PID/status (None: gone)."""
    from shardbroker.platform.topology import parse_cpulist

    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Cpus_allowed_list:"):
                    return list(parse_cpulist(line.split(":", 1)[1].strip()))
    except OSError:
        return None
    return None
