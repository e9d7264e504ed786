"""How a caught-up reader waits for the next commit without spinning a core.

It lives in segment/ because both the read-only ``SegmentReader`` and the named ``Consumer``
(consumer/) wait with it. Two ways, measured side by side (issue #9 note;
``python -m shardbroker.bench.consumers``):

``FutexWait`` (the default of ``Consumer`` and ``shardbroker tail --follow``): sleep in the
kernel on the segment's ``commit_wake`` word; a writer that sees the ``sleepers`` flag bumps the
word and calls FUTEX_WAKE (one byte load per commit when no one sleeps). The word is read and
the flag set *before* one more poll, so a commit after that poll either changes the word (the
wait returns at once) or finds the flag and wakes us; the one race x86 allows (the writer's
load of the flag passing our store) costs at most ``max_s``. Wakes ~30 us after a commit.
Needs write access to the segment's header page.

``Backoff`` (the fallback, and ``SegmentReader.follow``'s default: it needs only a read-only
mapping): poll the shard headers, sleeping 20 us, 40 us, ... up to 2 ms between empty polls,
back to the start as soon as something arrives. Wakes ~1 ms after a commit (p99 ~2 ms) and an
idle reader costs ~5 % of a core.
"""

from __future__ import annotations

import os
import time
from typing import Protocol

from shardbroker.errors import SegmentError
from shardbroker.platform import linux
from shardbroker.segment import shm
from shardbroker.segment.layout import SEG_COMMIT_WAKE, SEG_SLEEPERS, U32


class Waiter(Protocol):
    """How a caught-up follower waits (``SegmentReader.follow(wait=...)``). A waiter that
    also has ``arm()`` is armed before the follower's last poll (see FutexWait)."""

    def wait(self, limit_s: float | None = None) -> None: ...

    def reset(self) -> None: ...


BACKOFF_MIN_S = 20e-6
BACKOFF_MAX_S = 0.002


class Backoff:
    """Adaptive sleep between empty polls, doubling from ``min_s`` to ``max_s``."""

    def __init__(self, min_s: float = BACKOFF_MIN_S, max_s: float = BACKOFF_MAX_S) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError("backoff needs 0 < min_s <= max_s")
        self.min_s = min_s
        self.max_s = max_s
        self.delay = min_s
        self.sleeps = 0  # empty polls that slept (wake-ups while idle)

    def reset(self) -> None:
        self.delay = self.min_s

    def wait(self, limit_s: float | None = None) -> None:
        d = self.delay if limit_s is None else max(0.0, min(self.delay, limit_s))
        time.sleep(d)
        self.sleeps += 1
        self.delay = min(self.max_s, self.delay * 2)


FUTEX_MAX_S = 0.05


class FutexWait:
    """Kernel sleep until a writer commits (any shard), bounded by ``max_s``. Needs write
    access to the segment (the ``sleepers`` flag); ``arm()`` comes before the last poll."""

    def __init__(self, segment: str, max_s: float = FUTEX_MAX_S) -> None:
        if not linux.futex_supported():
            raise OSError(f"no futex syscall number for this machine ({os.uname().machine})")
        self._page = shm.map_header_page(segment)
        self.buf = memoryview(self._page)
        self.max_s = max_s
        self.addr = linux.shared_address(self.buf, SEG_COMMIT_WAKE)
        self.word = 0
        self.sleeps = 0

    def arm(self) -> None:
        """Remember the wake word, then ask writers for a wake-up; the caller polls once more
        before ``wait``, so a commit in between is never slept through."""
        self.word = U32.unpack_from(self.buf, SEG_COMMIT_WAKE)[0]
        self.buf[SEG_SLEEPERS] = 1

    def reset(self) -> None:
        """Data came: nothing to undo (the writers clear the flag when they wake someone)."""

    def wait(self, limit_s: float | None = None) -> None:
        d = self.max_s if limit_s is None else max(0.0, min(self.max_s, limit_s))
        linux.futex_wait(self.addr, self.word, d)
        self.sleeps += 1

    def close(self) -> None:
        self.buf.release()
        self._page.close()


def make_waiter(kind: str, segment: str) -> Backoff | FutexWait:
    """``backoff`` or ``futex`` (falls back to backoff, saying why, where futex cannot work)."""
    if kind == "backoff":
        return Backoff()
    if kind != "futex":
        raise ValueError(f"wait {kind!r}: use backoff or futex")
    try:
        return FutexWait(segment)
    except (OSError, SegmentError) as exc:
        import sys

        print(f"shardbroker: futex wake-ups unavailable ({exc}); polling with backoff",
              file=sys.stderr)
        return Backoff()
