"""What the bench reads from the OS: process and whole-machine CPU time, context switches,
resident memory, listening ports, and a description of the machine.

All of it comes from a ``/proc``-style tree whose root is a parameter, so the parsers are tested
on fake trees. A process that has gone away reads as zero rather than raising.
"""

from __future__ import annotations

import os
import platform
import resource
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC = "/proc"


def clk_tck() -> int:
    return os.sysconf("SC_CLK_TCK")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def process_cpu_s(pid: int, root: str = PROC, tck: int | None = None) -> float:
    """utime + stime of a whole process (all its threads), in seconds; 0 if it is gone."""
    text = _read(Path(root, str(pid), "stat"))
    if text is None:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / (tck or clk_tck())


def status_fields(pid: int | str, root: str = PROC, task: str | None = None) -> dict[str, str]:
    """``/proc/PID/status`` (or ``/proc/PID/task/TID/status``) as a dict of raw values."""
    path = Path(root, str(pid), "status") if task is None else Path(root, str(pid), "task",
                                                                     task, "status")
    text = _read(path)
    out: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _kib(value: str | None) -> int:
    return int(value.split()[0]) if value else 0


def voluntary_switches(pid: int, root: str = PROC) -> int:
    """Voluntary context switches summed over the process's threads: each one is a sleep the
    thread was later woken from, so the delta over a run counts wakeups."""
    task_dir = Path(root, str(pid), "task")
    try:
        tids = [t.name for t in task_dir.iterdir()]
    except OSError:
        return 0
    total = 0
    for tid in tids:
        value = status_fields(pid, root, task=tid).get("voluntary_ctxt_switches")
        total += int(value) if value else 0
    return total


def private_rss_mib(pid: int, root: str = PROC) -> float:
    """Resident memory of a process that is its own (anonymous + file), MiB. Shared-memory
    pages (the segment it writes into) are counted separately: see ``shmem_rss_mib``."""
    st = status_fields(pid, root)
    return (_kib(st.get("RssAnon")) + _kib(st.get("RssFile"))) / 1024


def shmem_rss_mib(pid: int, root: str = PROC) -> float:
    return _kib(status_fields(pid, root).get("RssShmem")) / 1024


@dataclass(frozen=True, slots=True)
class MachineCpu:
    busy_s: float
    total_s: float


def machine_cpu(root: str = PROC, tck: int | None = None) -> MachineCpu:
    """Whole-machine CPU time from the ``cpu`` line of /proc/stat (busy = all but idle and
    iowait; guest time is already inside user)."""
    text = _read(Path(root, "stat")) or ""
    for line in text.splitlines():
        if line.startswith("cpu "):
            v = [int(x) for x in line.split()[1:]]
            v += [0] * (8 - len(v))
            user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
            busy = user + nice + system + irq + softirq + steal
            hz = tck or clk_tck()
            return MachineCpu(busy / hz, (busy + idle + iowait) / hz)
    return MachineCpu(0.0, 0.0)


@dataclass(frozen=True, slots=True)
class Snapshot:
    cpu_s: float  # receiver processes
    switches: int  # receiver threads' voluntary context switches
    machine_busy_s: float


def snapshot(pids: Iterable[int], root: str = PROC) -> Snapshot:
    pids = list(pids)
    return Snapshot(sum(process_cpu_s(p, root) for p in pids),
                    sum(voluntary_switches(p, root) for p in pids),
                    machine_cpu(root).busy_s)


@dataclass(frozen=True, slots=True)
class Usage:
    receiver_cpu_s: float
    receiver_switches: int
    machine_cpu_s: float


def usage(before: Snapshot, after: Snapshot) -> Usage:
    return Usage(after.cpu_s - before.cpu_s, after.switches - before.switches,
                 after.machine_busy_s - before.machine_busy_s)


@dataclass(frozen=True, slots=True)
class SelfUsage:
    """A process's own CPU seconds and voluntary context switches, threads that have already
    exited included (getrusage), for receivers that report on themselves."""

    cpu_s: float
    switches: int

    @classmethod
    def now(cls) -> SelfUsage:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return cls(r.ru_utime + r.ru_stime, r.ru_nvcsw)

    def since(self, before: SelfUsage) -> dict[str, float]:
        return {"cpu_s": self.cpu_s - before.cpu_s,
                "switches": float(self.switches - before.switches)}


class RssSampler:
    """Samples the private RSS of some processes in a thread; ``peak_mib`` is the largest
    single-process value seen. Use as a context manager around a run."""

    def __init__(self, pids: Sequence[int], interval_s: float = 0.2, root: str = PROC) -> None:
        self.pids = list(pids)
        self.interval_s = interval_s
        self.root = root
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def sample(self) -> None:
        for p in self.pids:
            self.peak_mib = max(self.peak_mib, private_rss_mib(p, self.root))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def listening_ports(root: str = PROC) -> set[int]:
    """TCP ports in LISTEN state (IPv4 and IPv6), from /proc/net/tcp{,6}."""
    ports: set[int] = set()
    for name in ("tcp", "tcp6"):
        text = _read(Path(root, "net", name)) or ""
        for line in text.splitlines()[1:]:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "0A":
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def machine_info(root: str = PROC) -> dict[str, Any]:
    """What the README's Performance section states about the machine."""
    model = ""
    for line in (_read(Path(root, "cpuinfo")) or "").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in (_read(Path(root, "meminfo")) or "").splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
            break
    u = os.uname()
    return {
        "cpu_model": model,
        "cpus_online": os.cpu_count(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kib / (1 << 20), 1),
        "kernel": u.release,
        "machine": u.machine,
        "python": platform.python_version(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
