"""Shared fixtures. A guard fails any test that leaks child processes, fds or shm segments."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest


def _children() -> set[int]:
    me = str(os.getpid())
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z" and not _is_mp_helper(entry):
            out.add(int(entry))
    return out


def _is_mp_helper(pid: str) -> bool:
    """multiprocessing's resource tracker lives as long as the test process, by design."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"multiprocessing.resource_tracker" in f.read()
    except OSError:
        return False


def _shm_segments() -> set[str]:
    try:
        # our segments, and the named semaphores multiprocessing makes for the publishers
        return {n for n in os.listdir("/dev/shm") if n.startswith(("shardbroker", "sem.mp-"))}
    except OSError:
        return set()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def leak_guard() -> Iterator[None]:
    children, shm, fds = _children(), _shm_segments(), _fds()
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        leaked_children = _children() - children
        leaked_shm = _shm_segments() - shm
        if not leaked_children and not leaked_shm:
            break
        time.sleep(0.1)
    assert not leaked_children, f"test leaked child processes {leaked_children}"
    assert not leaked_shm, f"test leaked shm segments {leaked_shm}"
    # multiprocessing keeps a few fds of its own alive across tests; allow a small slack
    assert _fds() <= fds + 4, f"test leaked file descriptors ({fds} -> {_fds()})"
