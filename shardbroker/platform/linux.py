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
from shardbroker.platform import syscalls

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


def pid_alive(pid: int) -> bool:
    """Does process ``pid`` exist (another user's counts)?"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


# --------------------------------------------------------------------------- socket options


def apply_socket_options(sock: socket.socket, opts: dict[str, int]) -> dict[str, AppliedOption]:
    """Set each option and read back what the kernel applied (or record its refusal).

    ``opts`` keys: rcvbuf, rcvbuf_force, busy_poll_us, prefer_busy_poll, incoming_cpu,
    quickack, nodelay. Zero/absent values are left alone.
    """
    out: dict[str, AppliedOption] = {}
    if opts.get("rcvbuf"):
        out["SO_RCVBUF"] = set_rcvbuf(sock, opts["rcvbuf"], force=bool(opts.get("rcvbuf_force")))
    table = (
        ("busy_poll_us", "SO_BUSY_POLL", socket.SOL_SOCKET, SO_BUSY_POLL),
        ("prefer_busy_poll", "SO_PREFER_BUSY_POLL", socket.SOL_SOCKET, SO_PREFER_BUSY_POLL),
        ("incoming_cpu", "SO_INCOMING_CPU", socket.SOL_SOCKET, SO_INCOMING_CPU),
        ("nodelay", "TCP_NODELAY", socket.IPPROTO_TCP, socket.TCP_NODELAY),
        ("quickack", "TCP_QUICKACK", socket.IPPROTO_TCP, TCP_QUICKACK),
    )
    for key, name, level, opt in table:
        value = opts.get(key)
        if value is None or (value == 0 and key != "incoming_cpu"):
            continue
        try:
            out[name] = AppliedOption(name, value, set_int_option(sock, level, opt, value))
        except OSError as exc:
            out[name] = AppliedOption(name, value, None, exc.strerror or str(exc))
    return out


# --------------------------------------------------------------------------- NUMA memory

MPOL_BIND = 2
MPOL_MF_STRICT = 1
MPOL_MF_MOVE = 2


def mbind(mm: mmap.mmap, length: int, node: int) -> None:
    """Bind a mapping's pages to one NUMA node (before prefaulting, so they land there)."""
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    mask = ctypes.c_ulong(1 << node)
    maxnode = ctypes.sizeof(ctypes.c_ulong) * 8 + 1
    res = _libc.syscall(syscalls.require("mbind"), ctypes.c_void_p(addr),
                        ctypes.c_size_t(length), MPOL_BIND, ctypes.byref(mask),
                        ctypes.c_ulong(maxnode), MPOL_MF_MOVE)
    if res != 0:
        err = ctypes.get_errno()
        raise PlatformError("mbind", err, f"cannot bind the segment to node {node}: "
                            f"{os.strerror(err)}",
                            hint="check the node exists (`shardbroker topology`) and has memory")


def numa_maps_pages(pid: int, path_fragment: str) -> dict[int, int] | None:
    """Pages per NUMA node of the mapping whose path contains ``path_fragment``, read back
    from /proc/PID/numa_maps (None: the process or mapping is not there)."""
    try:
        with open(f"/proc/{pid}/numa_maps") as f:
            lines = [ln for ln in f if path_fragment in ln]
    except OSError:
        return None
    if not lines:
        return None
    pages: dict[int, int] = {}
    for ln in lines:
        for field in ln.split():
            if field.startswith("N") and "=" in field:
                node, count = field[1:].split("=", 1)
                if node.isdigit():
                    pages[int(node)] = pages.get(int(node), 0) + int(count)
    return pages


# --------------------------------------------------------------------------- huge pages

MADV_HUGEPAGE = 14


def hugepages_free(size_kb: int = 2048, root: str = "/") -> int:
    path = os.path.join(root, f"sys/kernel/mm/hugepages/hugepages-{size_kb}kB/free_hugepages")
    try:
        with open(path) as f:
            return int(f.read())
    except OSError:
        return 0


def madvise_hugepage(mm: mmap.mmap, length: int) -> str:
    """Ask for transparent huge pages; returns the kernel's shmem THP mode (it decides)."""
    try:
        mm.madvise(MADV_HUGEPAGE, 0, length)
    except OSError as exc:
        return f"refused: {exc.strerror}"
    try:
        with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
            mode = f.read().strip()
    except OSError:
        return "unknown"
    return mode


def reuseport_listener(host: str, port: int, incoming_cpu: int | None, listen: bool
                       ) -> socket.socket:
    """A TCP socket in a SO_REUSEPORT group. With ``incoming_cpu`` the kernel prefers this
    listener for connections whose packets that CPU processed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if incoming_cpu is not None:
            s.setsockopt(socket.SOL_SOCKET, SO_INCOMING_CPU, incoming_cpu)
        s.bind((host, port))
        if listen:
            s.listen(1024)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


# --------------------------------------------------------------------------- futex

FUTEX_WAIT = 0  # shared (not FUTEX_PRIVATE_FLAG): the word lives in a shared mapping
FUTEX_WAKE = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def futex_supported() -> bool:
    return syscalls.number("futex") is not None


def futex_wait(addr: int, expected: int, timeout_s: float) -> bool:
    """Sleep while the u32 at ``addr`` equals ``expected``, at most ``timeout_s``.
    False on timeout; True when woken, interrupted or the value had already changed."""
    ts = _Timespec(int(timeout_s), int((timeout_s % 1) * 1e9))
    r = _libc.syscall(syscalls.require("futex"), ctypes.c_void_p(addr), FUTEX_WAIT,
                      ctypes.c_uint32(expected), ctypes.byref(ts), None, 0)
    if r == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.ETIMEDOUT:
        return False
    if err in (errno.EAGAIN, errno.EINTR):
        return True
    raise PlatformError("futex(FUTEX_WAIT)", err, os.strerror(err))


def futex_wake(addr: int, count: int = 0x7FFF_FFFF) -> int:
    """Wake up to ``count`` waiters on the u32 at ``addr``; returns how many woke."""
    r = _libc.syscall(syscalls.require("futex"), ctypes.c_void_p(addr), FUTEX_WAKE,
                      ctypes.c_int(count), None, None, 0)
    if r < 0:
        err = ctypes.get_errno()
        raise PlatformError("futex(FUTEX_WAKE)", err, os.strerror(err))
    return int(r)


def shared_address(buf: memoryview, offset: int) -> int:
    """Address of ``buf[offset]`` in this process, for a read-only mapping too (numpy's view
    needs no writable export, unlike ctypes.from_buffer)."""
    import numpy as np

    return int(np.frombuffer(buf, dtype=np.uint8, count=1, offset=offset).ctypes.data)


# --------------------------------------------------------------------------- memory and processes


def fs_free_bytes(path: str) -> int | None:
    """Bytes an unprivileged writer may still allocate in the filesystem holding ``path``
    (statvfs f_bavail x f_frsize); None when ``path`` cannot be examined."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def mem_available_bytes(meminfo: str = "/proc/meminfo") -> int | None:
    """The kernel's estimate of memory available without swapping (MemAvailable), in bytes;
    None when the file or the line is missing (kernels before 3.14, odd containers)."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    fields = line.split()
                    return int(fields[1]) * (1024 if fields[2:3] == ["kB"] else 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_start_ticks(pid: int, proc_root: str = "/proc") -> int | None:
    """When process ``pid`` started, in clock ticks since boot (/proc/PID/stat field 22).
    With the pid it names one process for good: a reused pid has another start time.
    None: no such process."""
    try:
        with open(f"{proc_root}/{pid}/stat") as f:
            # the command name (field 2) may hold spaces and parentheses: split after it
            after_name = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    try:
        return int(after_name[19])  # field 22 overall; fields 1-2 are before the split
    except (IndexError, ValueError):
        return None


def rss_bytes() -> int:
    """This process's resident set size (/proc/self/statm), 0 where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0
