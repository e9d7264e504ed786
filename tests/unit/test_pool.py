"""The receiver pool without processes: readiness is a message, never a wait; a boot failure
stops the broker; a stale heartbeat gets the receiver killed. A fake launcher hands the pool
one end of a real SOCK_SEQPACKET pair and keeps the other, playing the receiver."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import zmq

from shardbroker.config import Config
from shardbroker.platform.topology import PlacementPlan
from shardbroker.receiver import messages
from shardbroker.segment.layout import ShardState
from shardbroker.supervisor import pool as pool_mod
from shardbroker.supervisor.pool import ReceiverPool


@dataclass
class FakeProc:
    pid: int
    returncode: int | None = None
    signals: list[int] = field(default_factory=list)

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        self.returncode = -sig


class FakeLauncher:
    placement = PlacementPlan((0, 1), None, None, None, None, (), ())

    def __init__(self) -> None:
        self.children: list[tuple[FakeProc, socket.socket]] = []

    def launch(self, shard: int, cpu: int | None, reuseport_listen: str
               ) -> tuple[FakeProc, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        proc = FakeProc(pid=1000 + len(self.children))
        self.children.append((proc, theirs))
        return proc, ours


class Log:
    def __init__(self) -> None:
        self.events: list[str] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **_kw: self.events.append(event)


@pytest.fixture
def rig() -> Iterator[tuple[ReceiverPool, FakeLauncher, dict[int, ShardState], Log]]:
    cfg = Config()
    cfg.broker.heartbeat_timeout_s = 1.0
    launcher = FakeLauncher()
    states: dict[int, ShardState] = {}
    log = Log()
    pool = ReceiverPool(cfg, log, launcher, zmq.Poller(), [0, 1],  # type: ignore[arg-type]
                        states.__getitem__, lambda _source: None)
    try:
        yield pool, launcher, states, log
    finally:
        pool.close()
        for _proc, theirs in launcher.children:
            theirs.close()


def _state(pid: int, age_s: float) -> ShardState:
    return ShardState(0, pid, 0, 0, 0, 0, 0, time.monotonic_ns() - int(age_s * 1e9), 0, 0)


def _one_ready_receiver(pool: ReceiverPool, launcher: FakeLauncher) -> FakeProc:
    pool.activate(1)
    proc, theirs = launcher.children[0]
    theirs.send(messages.encode(messages.Ready({"shard": 0})))
    pool.on_message(pool.slots[0])
    return proc


def test_readiness_is_a_message_not_a_wait(rig: Any) -> None:
    pool, launcher, _states, _log = rig
    t0 = time.monotonic()
    pool.activate(2)
    assert time.monotonic() - t0 < 1.0  # nothing waited for the receivers
    assert not pool.all_ready() and pool.least_loaded() is None
    for i, (_proc, theirs) in enumerate(launcher.children):
        theirs.send(messages.encode(messages.Ready({"shard": i, "backend": "epoll"})))
        pool.on_message(pool.slots[i])
    assert pool.all_ready() and pool.least_loaded() is pool.slots[0]


def test_a_receiver_that_fails_at_boot_stops_the_broker(rig: Any) -> None:
    pool, launcher, _states, _log = rig
    pool.activate(1)
    launcher.children[0][1].send(messages.encode(messages.Fail("no /dev/shm")))
    pool.on_message(pool.slots[0])
    assert pool.boot_failure == "receiver 0 failed at boot: no /dev/shm"


def test_no_ready_in_time_is_a_boot_failure(rig: Any) -> None:
    pool, _launcher, _states, _log = rig
    pool.activate(1)
    pool.tick(time.monotonic() + pool_mod.BOOT_TIMEOUT_S + 1)
    assert pool.boot_failure is not None and "no ready message" in pool.boot_failure


def test_a_stale_heartbeat_is_killed_and_restarted(rig: Any) -> None:
    pool, launcher, states, log = rig
    proc = _one_ready_receiver(pool, launcher)
    pool.slots[0].ready_ns -= 10**10  # ready 10 s ago
    states[0] = _state(proc.pid, age_s=0.5)
    pool.tick(time.monotonic())
    assert proc.signals == []  # younger than the timeout
    states[0] = _state(proc.pid, age_s=1.5)
    pool.next_watch = 0.0
    pool.tick(time.monotonic())
    assert proc.signals == [signal.SIGKILL] and pool.watchdog_kills == 1
    assert "supervisor.receiver.unresponsive" in log.events
    pool.tick(time.monotonic() + 1)  # reaped; after the restart backoff, spawned again
    assert len(launcher.children) == 2 and pool.slots[0].proc is launcher.children[1][0]
    assert pool.slots[0].restarts == 1 and pool.slots[0].watchdog_kills == 1
    assert pool.boot_failure is None


def test_no_watchdog_when_the_timeout_is_zero(rig: Any) -> None:
    pool, launcher, states, _log = rig
    pool.cfg.broker.heartbeat_timeout_s = 0.0
    proc = _one_ready_receiver(pool, launcher)
    states[0] = _state(proc.pid, age_s=3600)
    pool.tick(time.monotonic())
    assert proc.signals == []


def test_a_scale_up_receiver_that_fails_at_boot_leaves_the_broker_serving(rig: Any) -> None:
    pool, launcher, states, log = rig
    states[0] = _state(_one_ready_receiver(pool, launcher).pid, age_s=0.0)
    pool.scale(2)
    new_proc, theirs = launcher.children[1]
    theirs.send(messages.encode(messages.Fail("CPU 1 is not allowed")))
    pool.on_message(pool.slots[1])
    assert pool.boot_failure is None  # the broker does not stop for it
    assert pool.scale_failure == "receiver 1 failed at boot: CPU 1 is not allowed"
    assert "supervisor.scale.boot_failed" in log.events
    assert pool.slots[1].state == "inactive" and new_proc.signals == [signal.SIGKILL]
    pool.tick(time.monotonic() + 1)
    assert pool.slots[1].proc is None and len(launcher.children) == 2  # not respawned
    assert [s.shard for s in pool.active()] == [0] and pool.all_ready()
    pool.scale(2)  # a later scale-up tries again, and clears the old reason
    assert pool.scale_failure == "" and len(launcher.children) == 3


def test_the_watchdog_counts_from_ready_not_from_a_slow_boot(rig: Any) -> None:
    """The last heartbeat before `ready` may be old (populating a large segment): the
    receiver is not killed until the timeout has passed since it became ready."""
    pool, launcher, states, _log = rig
    proc = _one_ready_receiver(pool, launcher)
    states[0] = _state(proc.pid, age_s=30.0)  # written at boot, 30 s ago
    pool.tick(time.monotonic())
    assert proc.signals == [] and pool.watchdog_kills == 0


def test_sockets_attached_to_a_message_that_is_not_a_move_are_closed(rig: Any) -> None:
    pool, launcher, _states, _log = rig
    _one_ready_receiver(pool, launcher)
    theirs = launcher.children[0][1]
    r, w = os.pipe()
    try:
        before = len(os.listdir("/proc/self/fd"))
        socket.send_fds(theirs, [messages.encode(messages.Closed("10.0.0.1"))], [r])
        pool.on_message(pool.slots[0])
        assert len(os.listdir("/proc/self/fd")) == before  # the received copy was closed
    finally:
        os.close(r)
        os.close(w)
