"""The receiver pool: spawn, readiness, reaping, restarts, the heartbeat watchdog, hand-offs
and live scaling. It never waits: the supervisor's loop hands it each control message
(``on_message``) and calls ``tick`` after every poll.

Gunicorn-arbiter rules: a receiver that fails at boot (a ``fail`` message, an exit before
``ready``, or no ``ready`` within BOOT_TIMEOUT_S) sets ``boot_failure`` and the supervisor
stops instead of starting a respawn loop, except a receiver that ``scale`` added: the broker
serves on with the receivers it had, and ``scale_failure`` says why. A receiver that dies
after it was ready is restarted on the same shard and CPU after ``broker.restart_backoff_s``.
A ready receiver whose shard heartbeat (written every 0.5 s by its loop) is older than
``broker.heartbeat_timeout_s`` is wedged (stopped, or stuck in a call that never returns):
it is killed, and so restarted.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import zmq

from shardbroker.config import Config
from shardbroker.receiver import messages
from shardbroker.segment.layout import ShardState
from shardbroker.supervisor.guards import check_receivers_fit_cpus
from shardbroker.supervisor.launcher import ReceiverLauncher
from shardbroker.supervisor.slot import ACTIVE, INACTIVE, RETIRING, ReceiverSlot

BOOT_TIMEOUT_S = 15.0
WATCH_EVERY_S = 0.1  # how often tick() reads the shard heartbeats


class ReceiverPool:
    def __init__(self, cfg: Config, log: Any, launcher: ReceiverLauncher, poller: zmq.Poller,
                 cpus: list[int | None], shard_state: Callable[[int], ShardState],
                 on_closed: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.log = log
        self.launcher = launcher
        self.poller = poller
        self.shard_state = shard_state  # the segment's shard header (heartbeat, writer pid)
        self.on_closed = on_closed  # a receiver closed a connection from this source address
        self.slots = [ReceiverSlot(shard=i, cpu=c) for i, c in enumerate(cpus)]
        self.reuseport_listen = ""  # HOST:PORT receivers listen on themselves ("" = no)
        self.restarting = True  # False once the broker stops: the dead stay dead
        self.boot_failure: str | None = None
        self.scale_failure = ""  # why the last scale-up's receiver did not boot ("" = none)
        self.watchdog_kills = 0
        self.rebalance_pending = False  # after a scale-up, once the new receivers are ready
        self.next_watch = 0.0

    # ------------------------------------------------------------------ spawn and ready

    def activate(self, n: int) -> None:
        for slot in self.slots[:n]:
            slot.state = ACTIVE
            self.spawn(slot)

    def spawn(self, slot: ReceiverSlot) -> None:
        slot.proc, slot.control = self.launcher.launch(slot.shard, slot.cpu,
                                                       self.reuseport_listen)
        slot.ready = slot.booted = slot.killed = False
        slot.open_connections = 0
        slot.boot_deadline = time.monotonic() + BOOT_TIMEOUT_S
        self.poller.register(slot.control, zmq.POLLIN)

    def active(self) -> list[ReceiverSlot]:
        return [s for s in self.slots if s.state == ACTIVE]

    def all_ready(self) -> bool:
        return all(s.ready for s in self.active())

    def slot_of(self, fd: int) -> ReceiverSlot | None:
        return next((s for s in self.slots
                     if s.control is not None and s.control.fileno() == fd), None)

    def _boot_failed(self, slot: ReceiverSlot, detail: str) -> None:
        why = f"receiver {slot.shard} failed at boot: {detail}"
        if slot.scaling_up:
            self._give_up_scaling(slot, why)
        elif self.boot_failure is None:
            self.boot_failure = why

    def _give_up_scaling(self, slot: ReceiverSlot, why: str) -> None:
        """A receiver ``scale`` added cannot boot: the broker keeps serving with the receivers
        it had (stopping it would drop every publisher for one new shard), the shard goes back
        to inactive and ``scale_failure`` (status) says why."""
        self.scale_failure = why
        self.log.error("supervisor.scale.boot_failed", shard=slot.shard, error=why,
                       action="shard left inactive; the broker serves on")
        slot.scaling_up = False
        slot.state = INACTIVE
        proc = slot.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
        if slot.control is not None:
            self._channel_closed(slot)
        if self.rebalance_pending and self.all_ready():
            self.rebalance_pending = False
            self.rebalance()

    # ------------------------------------------------------------------ messages

    def on_message(self, slot: ReceiverSlot) -> None:
        for _ in range(1024):  # bounded per wakeup
            if slot.control is None:
                return
            try:
                raw, fds, _flags, _addr = socket.recv_fds(slot.control, 65536, 4)
            except BlockingIOError:
                return
            except OSError:
                raw, fds = b"", []
            if not raw:
                self._channel_closed(slot)
                return
            try:
                self._handle(slot, messages.decode(raw), fds)
            except messages.BadMessage as exc:
                self.log.warning("supervisor.receiver.bad_message", shard=slot.shard,
                                 error=str(exc))
                for fd in fds:
                    os.close(fd)

    def _handle(self, slot: ReceiverSlot, msg: messages.Message, fds: list[int]) -> None:
        if fds and not (isinstance(msg, messages.Handover) and msg.verb is messages.Verb.MOVE):
            for fd in fds:  # only a move carries sockets: anything else would leak them
                os.close(fd)
            fds = []
        match msg:
            case messages.Ready(info=info):
                slot.info, slot.ready, slot.booted = info, True, True
                slot.ready_ns = time.monotonic_ns()
                slot.scaling_up = False
                if slot.restarts:
                    self.log.info("supervisor.receiver.restarted", shard=slot.shard,
                                  pid=slot.proc.pid if slot.proc else None,
                                  resumed_at_batch=info.get("resumed_at_batch"))
                if self.rebalance_pending and self.all_ready():
                    self.rebalance_pending = False
                    self.rebalance()
            case messages.Fail(error=error):
                self._boot_failed(slot, error)
            case messages.Closed(source=source):
                slot.open_connections = max(0, slot.open_connections - 1)
                self.on_closed(source)
            case messages.OPENED:
                slot.open_connections += 1
            case messages.Handover(verb=messages.Verb.MOVE, state=state):
                self._forward_move(slot, state, fds)
            case messages.RETIRED:
                self.log.info("supervisor.receiver.retired", shard=slot.shard)
                self._send(slot, messages.STOP)
            case _:
                raise messages.BadMessage(f"{msg.verb.value} is not for the supervisor")

    def _forward_move(self, source: ReceiverSlot, state: dict[str, Any], fds: list[int]) -> None:
        source.open_connections = max(0, source.open_connections - 1)
        target = self.least_loaded(exclude=source)
        adopt = messages.Handover(messages.Verb.ADOPT, state)
        try:
            if target is None or not self.hand(target, adopt, fds):
                self.log.error("supervisor.move_failed", shard=source.shard,
                               hint="no receiver could take the connection; it is closed")
        finally:
            for fd in fds:
                os.close(fd)

    def _channel_closed(self, slot: ReceiverSlot) -> None:
        if slot.control is not None:
            with contextlib.suppress(KeyError, ValueError, zmq.ZMQError):
                self.poller.unregister(slot.control)
            slot.control.close()
            slot.control = None
        slot.ready = False
        slot.restart_at = time.monotonic() + self.cfg.broker.restart_backoff_s

    def _send(self, slot: ReceiverSlot, msg: messages.Message) -> None:
        if slot.control is not None:
            with contextlib.suppress(OSError):
                slot.control.send(messages.encode(msg))

    # ------------------------------------------------------------------ connections

    def least_loaded(self, exclude: ReceiverSlot | None = None) -> ReceiverSlot | None:
        ready = [s for s in self.slots if s.takes_connections and s is not exclude]
        return min(ready, key=lambda s: (s.open_connections, s.shard)) if ready else None

    def hand(self, target: ReceiverSlot, msg: messages.Message, fds: list[int]) -> bool:
        """Send ``msg`` with the sockets ``fds`` (the caller closes its copies)."""
        assert target.control is not None
        try:
            socket.send_fds(target.control, [messages.encode(msg)], fds)
        except OSError as exc:
            self.log.warning("supervisor.handoff_failed", shard=target.shard, error=str(exc))
            return False
        target.open_connections += 1
        return True

    # ------------------------------------------------------------------ reap, restart, watch

    def tick(self, now: float) -> None:
        """After every poll: reap the dead, restart those due, enforce boot deadlines and the
        heartbeat watchdog."""
        self._reap(now)
        for slot in self.slots:
            if slot.booting and now > slot.boot_deadline:
                self._boot_failed(slot, f"no ready message within {BOOT_TIMEOUT_S:g} s")
        if now >= self.next_watch:
            self.next_watch = now + WATCH_EVERY_S
            self._watch_heartbeats()

    def _reap(self, now: float) -> None:
        for slot in self.slots:
            proc = slot.proc
            if proc is None or proc.poll() is None:
                continue
            if slot.control is not None:
                self._channel_closed(slot)
            if slot.state in (RETIRING, INACTIVE):  # retired, or a scale-up given up
                slot.state, slot.proc = INACTIVE, None
                self.log.info("supervisor.receiver.stopped", shard=slot.shard, pid=proc.pid)
                continue
            if slot.booting:
                self._boot_failed(slot, f"exit code {proc.returncode}")
                continue
            if not self.restarting or slot.state != ACTIVE or now < slot.restart_at:
                continue
            self.log.warning("supervisor.receiver.died", shard=slot.shard, pid=proc.pid,
                             exit_code=proc.returncode, restarts=slot.restarts + 1,
                             killed_by_watchdog=slot.killed)
            slot.restarts += 1
            self.spawn(slot)

    def _watch_heartbeats(self) -> None:
        timeout_s = self.cfg.broker.heartbeat_timeout_s
        if timeout_s <= 0 or not self.restarting:
            return
        now_ns = time.monotonic_ns()  # CLOCK_MONOTONIC, the clock receivers write
        for slot in self.slots:
            proc = slot.proc
            if not slot.ready or slot.killed or proc is None or proc.poll() is not None:
                continue
            state = self.shard_state(slot.shard)
            # a receiver is as fresh as its `ready`: a long boot is not a stopped heartbeat
            age_s = (now_ns - max(state.heartbeat_ns, slot.ready_ns)) / 1e9
            if state.writer_pid != proc.pid or age_s <= timeout_s:
                continue
            self.log.warning("supervisor.receiver.unresponsive", shard=slot.shard, pid=proc.pid,
                             heartbeat_age_s=round(age_s, 2), timeout_s=timeout_s,
                             action="killed; it is restarted like a receiver that died")
            slot.killed = True
            slot.watchdog_kills += 1
            self.watchdog_kills += 1
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)  # SIGKILL ends a stopped process too

    # ------------------------------------------------------------------ scale and drain

    def scale(self, n: int) -> None:
        """Run ``n`` receivers. New ones start now and take their share of the connections
        once every active receiver is ready; extra ones hand theirs over and retire."""
        if not 1 <= n <= len(self.slots):
            raise ValueError(f"threads must be within 1..{len(self.slots)} (the segment has "
                             f"{len(self.slots)} shards; raise broker.max_threads to allow more)")
        check_receivers_fit_cpus(f"scale {n}", n, self.launcher.placement.receiver_cpus,
                                 self.cfg.broker.oversubscribe)
        if any(s.state == RETIRING for s in self.slots):
            raise ValueError("a scale-down is still in progress; try again in a moment")
        active = self.active()
        if n > len(active):
            for slot in [s for s in self.slots if s.state == INACTIVE][:n - len(active)]:
                slot.state = ACTIVE
                slot.scaling_up = True
                self.scale_failure = ""
                self.spawn(slot)
            self.rebalance_pending = True
        for slot in active[n:]:
            slot.state = RETIRING
            self._send(slot, messages.Handoff(None))

    def rebalance(self) -> None:
        """Ask receivers above the even share (ceil of the mean) to hand the excess over."""
        ready = [s for s in self.slots if s.takes_connections]
        total = sum(s.open_connections for s in ready)
        target = math.ceil(total / len(ready)) if ready else 0
        for s in ready:
            if s.open_connections > target:
                self._send(s, messages.Handoff(s.open_connections - target))

    def drain(self) -> None:
        """Receivers with their own (SO_REUSEPORT) listeners close them."""
        if not self.reuseport_listen:
            return  # supervisor accept mode: the supervisor's listener was the only one
        self.reuseport_listen = ""
        for slot in self.slots:
            self._send(slot, messages.DRAIN)

    # ------------------------------------------------------------------ stop

    def stop(self, timeout_s: float) -> None:
        """Tell every receiver to finish its batches in flight and exit; kill the late."""
        self.restarting = False
        for slot in self.slots:
            self._send(slot, messages.STOP)
        deadline = time.monotonic() + timeout_s
        for slot in self.slots:
            if slot.proc is None:
                continue
            try:
                slot.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log.warning("supervisor.receiver.kill", shard=slot.shard, pid=slot.proc.pid)
                slot.proc.kill()
                slot.proc.wait()

    def kill(self) -> None:
        """Start failed: kill and reap every receiver at once."""
        self.restarting = False
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.kill()
            if slot.proc is not None:
                slot.proc.wait()

    def close(self) -> None:
        for slot in self.slots:
            if slot.control is not None:
                with contextlib.suppress(KeyError, ValueError, zmq.ZMQError):
                    self.poller.unregister(slot.control)
                slot.control.close()
                slot.control = None
