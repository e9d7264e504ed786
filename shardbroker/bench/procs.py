"""Child processes for a run: spawn-context workers with a common start, tool subprocesses,
and private shared-memory rings. Everything started here is killed and reaped by ``close``.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing as mp
import os
import queue
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import posix_ipc

from shardbroker.bench.result import RunFailed
from shardbroker.platform import linux

# A worker body: (index, params, arm) -> summary. It calls ``arm()`` once it is connected
# and ready; ``arm`` returns when every worker is ready and the run starts.
WorkerFn = Callable[[int, Any, Callable[[], None]], dict[str, Any]]

START_TIMEOUT_S = 60.0


def _entry(fn: WorkerFn, index: int, params: Any, ready: Any, go: Any, results: Any) -> None:
    armed = False

    def arm() -> None:
        nonlocal armed
        armed = True
        ready.release()
        if not go.wait(START_TIMEOUT_S * 2):
            raise RunFailed("no start signal from the bench")

    try:
        out = fn(index, params, arm)
        out["index"] = index
        results.put(out)
    except BaseException as exc:  # report anything, the parent decides
        if not armed:
            ready.release()
        results.put({"index": index, "error": f"{type(exc).__name__}: {exc}"})


class WorkerSet:
    """Processes started with the spawn method that connect, wait for one start signal, run,
    and report a dict. ``close`` kills and joins any still alive."""

    def __init__(self) -> None:
        self.ctx = mp.get_context("spawn")
        self._ready = self.ctx.Semaphore(0)
        self._go = self.ctx.Event()
        self._results = self.ctx.Queue()
        self.procs: list[Any] = []

    def start(self, fn: WorkerFn, params: Sequence[Any]) -> None:
        base = len(self.procs)
        for i, p in enumerate(params):
            proc = self.ctx.Process(target=_entry, daemon=True,
                                    args=(fn, base + i, p, self._ready, self._go,
                                          self._results))
            proc.start()
            self.procs.append(proc)

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        ready = 0
        while ready < len(self.procs):
            if self._ready.acquire(timeout=0.2):
                ready += 1
                continue
            dead = [p.exitcode for p in self.procs if p.exitcode not in (None, 0)]
            if dead:
                raise RunFailed(f"a worker process exited at start (exit code {dead[0]})")
            if time.monotonic() > deadline:
                raise RunFailed(f"workers not ready within {timeout_s:.0f} s")

    def go(self) -> None:
        self._go.set()

    def collect(self, timeout_s: float, count: int | None = None) -> list[dict[str, Any]]:
        """Summaries of ``count`` workers (default: all) sorted by index; a worker that died
        without reporting gets an error entry. Raises RunFailed on timeout."""
        want = len(self.procs) if count is None else count
        got: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        while len(got) < want:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RunFailed(f"workers still running after {timeout_s:.0f} s")
            try:
                r = self._results.get(timeout=min(left, 0.5))
                got[int(r["index"])] = r
            except queue.Empty:
                dead = [i for i, p in enumerate(self.procs)
                        if i not in got and not p.is_alive()]
                if dead and self._results.empty():
                    time.sleep(0.3)
                    if self._results.empty():
                        for i in dead:
                            got[i] = {"index": i, "error": "worker process died (exit code "
                                                           f"{self.procs[i].exitcode})"}
        return [got[i] for i in sorted(got)]

    def close(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
        for p in self.procs:
            p.join(timeout=10)
        self._results.close()
        self._results.join_thread()


class Children:
    """Tool subprocesses (iperf3, nats-server): SIGTERM then SIGKILL, always reaped."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def popen(self, cmd: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        kw.setdefault("stdin", subprocess.DEVNULL)
        p: subprocess.Popen[bytes] = subprocess.Popen(list(cmd), **kw)
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 3
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()


def pinned(cmd: Sequence[str], cpus: Sequence[int] | None) -> list[str]:
    """``cmd`` under ``taskset -c`` when CPUs are given and taskset exists (a process pinned
    from its start, threads included)."""
    if not cpus or shutil.which("taskset") is None:
        return list(cmd)
    return ["taskset", "-c", ",".join(str(c) for c in sorted(set(cpus))), *cmd]


def pin_self(cpu: int | None) -> None:
    if cpu is not None:
        linux.pin_to_cpu(cpu)


@contextlib.contextmanager
def announced_listener(ports: Any, index: int) -> Iterator[socket.socket]:
    """A loopback listener on a free port, announced on ``ports`` as (index, port) so the
    parent can point senders at it; closed on exit."""
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(64)
        ports.put((index, lsock.getsockname()[1]))
        yield lsock


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, for tools that cannot be told to use port 0."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout_s: float = 10.0,
                   alive: Callable[[], bool] = lambda: True) -> None:
    from shardbroker.bench.measure import listening_ports

    deadline = time.monotonic() + timeout_s
    while port not in listening_ports():
        if not alive():
            raise RunFailed(f"the server for port {port} exited at start")
        if time.monotonic() > deadline:
            raise RunFailed(f"nothing listens on port {port} after {timeout_s:.0f} s")
        time.sleep(0.02)


class Ring:
    """A private, prefaulted POSIX shm region that a baseline receiver copies batches into
    (the stand-in for the broker's segment). Unlinked at once: nothing is left in /dev/shm."""

    def __init__(self, size: int) -> None:
        name = f"/shardbroker-bench-{os.getpid()}-{os.urandom(4).hex()}"
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        try:
            self.mm = mmap.mmap(shm.fd, size)
        finally:
            shm.close_fd()
            posix_ipc.unlink_shared_memory(name)
        linux.populate_write(self.mm, size)
        self.size = size
        self.view = memoryview(self.mm)
        self.pos = 0

    def reserve(self, n: int) -> int:
        """Offset of ``n`` contiguous bytes (wrapping to the start like the BLog ring)."""
        if n > self.size:
            raise ValueError(f"a {n}-byte batch does not fit a {self.size}-byte ring")
        if self.pos + n > self.size:
            self.pos = 0
        off = self.pos
        self.pos += n
        return off

    def close(self) -> None:
        self.view.release()
        self.mm.close()
