"""The supervisor: composes the segment owner, the receiver pool, admission and the control
server around one event loop, and answers the control commands.

Gunicorn-arbiter style: signal handlers only queue (a self-pipe); the loop polls the
listener, the control and metrics endpoints, every receiver's control channel and the signal
pipe, and after each poll lets the pool reap, restart and watch its receivers. Nothing in it
blocks on a receiver: readiness is a message like any other. Accepted connections go to the
receiver with the fewest open connections, handed over as file descriptors (SCM_RIGHTS), so
with N receivers and C connections the busiest one holds at most ceil(C/N). ``scale`` moves
connections between receivers at batch boundaries, so publishers never see a disconnect.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from typing import Any, TextIO

import zmq

from shardbroker.config import Config
from shardbroker.errors import BrokerStartError
from shardbroker.platform.placement import placement_for
from shardbroker.platform.topology import PlacementPlan
from shardbroker.supervisor import admission
from shardbroker.supervisor.admission import Admission, Listening
from shardbroker.supervisor.control import ControlServer
from shardbroker.supervisor.created import Created
from shardbroker.supervisor.guards import check_receivers_fit_cpus
from shardbroker.supervisor.launcher import ReceiverLauncher
from shardbroker.supervisor.pool import ReceiverPool
from shardbroker.supervisor.segment_owner import SegmentOwner
from shardbroker.supervisor.slot import ACTIVE, INACTIVE, ReceiverSlot

STOP_TIMEOUT_S = 8.0
POLL_MS = 500
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StartInterrupted(BrokerStartError):
    """SIGTERM or SIGINT arrived while the broker was starting (creating or prefaulting the
    segment, waiting for receivers): the start stops there and removes what it made."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"start interrupted by {signal.Signals(signum).name}",
                         hint="nothing of this start was left behind; run it again to start")


class Supervisor:
    def __init__(self, cfg: Config, log: Any, out: TextIO = sys.stdout) -> None:
        self.cfg = cfg
        self.log = log
        self.out = out
        self.created = Created()
        self.segment = SegmentOwner(cfg, log, self.created,
                                    cfg.segment.name or f"shardbroker-{os.getpid()}")
        self.control = ControlServer(cfg.control, self.created)
        self.admission = Admission(cfg.limits, log)
        self.listening = Listening(None, None, "")
        self.pool: ReceiverPool | None = None
        self.placement = PlacementPlan((), None, None, None, None, (), ())
        self.poller = zmq.Poller()
        self.stopping = False
        self.draining = False
        self.exit_code = 0
        self.started_at = time.time()
        self._sig_r, self._sig_w = socket.socketpair()
        self._sig_r.setblocking(False)
        self._signals: list[int] = []
        self.poller.register(self._sig_r, zmq.POLLIN)

    @property
    def slots(self) -> list[ReceiverSlot]:
        return [] if self.pool is None else self.pool.slots

    # ------------------------------------------------------------------ start

    def plan(self) -> tuple[int, list[int | None]]:
        """(receivers to start, CPU of every shard the segment will have), from the NUMA
        placement plan: one receiver per allowed CPU of the NIC's node."""
        b = self.cfg.broker
        self.placement = placement_for(self.cfg)
        cpus = list(self.placement.receiver_cpus)
        n = b.threads or len(cpus)
        # before anything is logged or made, so that a refusal is the one line printed
        check_receivers_fit_cpus(f"--threads {n}", n, cpus, b.oversubscribe)
        shards = max(n, b.max_threads or len(cpus))
        if n > len(cpus):
            self.log.warning("supervisor.more_receivers_than_cpus", receivers=n,
                             cpus=len(cpus), hint="receivers will share CPUs")
        self.log.info("supervisor.placement", **self.placement.to_dict())
        if not b.pin_cpus:
            return n, [None] * shards
        return n, [cpus[i % len(cpus)] for i in range(shards)]

    def start(self) -> dict[str, Any]:
        """Create (or recover) the segment, bind, spawn receivers, wait (in the event loop)
        until every one is ready, print the ready line. Raises StartInterrupted on
        SIGTERM/SIGINT and BrokerStartError when a receiver cannot boot; the caller then
        calls ``abort``."""
        n, cpus = self.plan()
        cpus, prefault_s = self.segment.open(cpus, self.placement, self._raise_if_stop_requested)
        n = min(n, len(cpus))  # a recovered segment's geometry wins
        self.control.bind(self.segment.name)
        self.listening = admission.listen(self.cfg.broker)
        launcher = ReceiverLauncher(self.cfg, self.log, self.segment.name, self.placement,
                                    self.control.metrics_endpoint)
        self.pool = ReceiverPool(self.cfg, self.log, launcher, self.poller, cpus,
                                 self.segment.shard_state, self.admission.closed)
        if self.listening.port_holder is not None:
            self.pool.reuseport_listen = self.listening.address
        self.pool.activate(n)
        while not self.pool.all_ready():
            self._step(starting=True)
        self.segment.mark_serving()
        if self.cfg.metrics.prometheus:
            from shardbroker.control.prometheus import serve_metrics

            serve_metrics(self.cfg.metrics.prometheus, self.metrics_report)
        self.control.publish_record(self.segment.name, self.listening.address)
        ready = {
            "event": "ready", "listen": self.listening.address, "segment": self.segment.name,
            "threads": n, "max_threads": len(self.slots), "backend": self.running_backend(),
            "control": self.control.control_endpoint, "pid": os.getpid(),
            "segment_bytes": self.segment.geometry.total_bytes,
            "prefault_s": round(prefault_s, 3),
            "receivers": [s.status() for s in self.slots[:n]],
        }
        if self.cfg.metrics.prometheus:
            ready["prometheus"] = self.cfg.metrics.prometheus
        self.out.write(json.dumps(ready) + "\n")
        self.out.flush()
        return ready

    def _raise_if_stop_requested(self) -> None:
        """Between the steps of a start: end it if SIGTERM or SIGINT arrived (the handler only
        queued it; a start can take tens of seconds and must not make the operator wait)."""
        signum = next((s for s in self._signals if s in STOP_SIGNALS), None)
        if signum is not None:
            self.log.info("supervisor.start_interrupted", signal=signal.Signals(signum).name)
            raise StartInterrupted(signum)

    def running_backend(self) -> str:
        """The backend the receivers actually run (each chose it at start, see
        receiver/backend.py): "uring", "epoll", or "mixed"."""
        seen = {s.info.get("backend") for s in self.slots if s.state != INACTIVE and s.info}
        seen.discard(None)
        if not seen:
            return self.cfg.broker.backend
        return str(seen.pop()) if len(seen) == 1 else "mixed"

    # ------------------------------------------------------------------ the loop

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals.append(signum)
        with contextlib.suppress(OSError):
            self._sig_w.send(b"\0")

    def install_signals(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)

    def serve(self) -> int:
        """Run until a stop signal or command; returns the process exit code."""
        assert self.control.control_sock is not None and self.control.metrics_sock is not None
        if self.listening.listener is not None:
            self.poller.register(self.listening.listener, zmq.POLLIN)
        self.poller.register(self.control.control_sock, zmq.POLLIN)
        self.poller.register(self.control.metrics_sock, zmq.POLLIN)
        while not self.stopping:
            self._step(starting=False)
        return self.shutdown()

    def _step(self, starting: bool) -> None:
        """One poll and what it found, then the pool's housekeeping. While starting, a stop
        signal raises StartInterrupted and a receiver that cannot boot BrokerStartError."""
        assert self.pool is not None
        listener = self.listening.listener
        # zmq.Poller hands back zmq sockets as themselves and plain sockets as their fd
        for item, _ev in self.poller.poll(POLL_MS):
            if item is self.control.control_sock:
                self.control.on_request(self._command)
            elif item is self.control.metrics_sock:
                self.control.on_metrics()
            elif listener is not None and item == listener.fileno():
                self.admission.accept(listener, self.pool)
            elif item == self._sig_r.fileno():
                self._drain_signals(starting)
            elif (slot := self.pool.slot_of(item)) is not None:
                self.pool.on_message(slot)
        now = time.monotonic()
        self.pool.tick(now)
        if self.pool.boot_failure is not None:
            if starting:
                raise BrokerStartError(self.pool.boot_failure,
                                       hint="see its log lines above on stderr")
            # A receiver that cannot boot now will not boot on the next try either.
            self.log.error("supervisor.receiver.boot_failed", error=self.pool.boot_failure)
            self.stopping = True
            self.exit_code = 3
        self.segment.expire_consumers(now)

    def _drain_signals(self, starting: bool) -> None:
        with contextlib.suppress(BlockingIOError):
            self._sig_r.recv(4096)
        if starting:
            self._raise_if_stop_requested()  # SIGCHLD stays queued: harmless
            return
        while self._signals:
            sig = self._signals.pop(0)
            if sig in STOP_SIGNALS:
                self.log.info("supervisor.signal", signal=signal.Signals(sig).name)
                self.stopping = True

    # ------------------------------------------------------------------ commands

    def _command(self, cmd: str, args: dict[str, Any]) -> Any:
        if cmd == "status":
            return self.status()
        if cmd == "stats":
            return self.metrics_report()
        if cmd == "scale":
            threads = args.get("threads")
            if not isinstance(threads, int) or isinstance(threads, bool):
                raise ValueError(f"scale: threads must be a whole number, not {threads!r}")
            return self.scale(threads)
        if cmd == "drain":
            self.drain()
            return {"draining": True}
        if cmd == "stop":
            self.log.info("supervisor.stop_requested")
            self.stopping = True
            return {"stopping": True}
        raise ValueError(f"unknown command {cmd}")

    def metrics_report(self) -> dict[str, Any]:
        active = [s.shard for s in self.slots if s.state == ACTIVE]
        report = self.control.report(active)
        report["total"]["receivers"] = len(active)
        report["total"]["accept_rejected"] = dict(self.admission.rejected)
        report["total"]["watchdog_kills"] = self.pool.watchdog_kills if self.pool else 0
        return report

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(), "listen": self.listening.address,
            "segment": self.segment.name, "control": self.control.control_endpoint,
            "backend": self.running_backend(),
            "threads": sum(1 for s in self.slots if s.state == ACTIVE),
            "max_threads": len(self.slots), "draining": self.draining,
            "accepted": self.admission.accepted,
            "uptime_s": round(time.time() - self.started_at, 1),
            "accept_rejected": dict(self.admission.rejected),
            "watchdog_kills": self.pool.watchdog_kills if self.pool else 0,
            "scale_failure": self.pool.scale_failure if self.pool else "",
            "receivers": [s.status() for s in self.slots if s.state != INACTIVE],
            "placement": self.placement.to_dict(),
            "segment_placement": self.segment.placement_report(),
            "retention": self.cfg.segment.retention,
            "consumers": self.segment.consumers_status(),
        }

    def drain(self) -> None:
        """Stop taking new connections; the ones open keep streaming."""
        listener = self.listening.listener
        if listener is not None:
            with contextlib.suppress(KeyError, ValueError, zmq.ZMQError):
                self.poller.unregister(listener)
            listener.close()
            self.listening.listener = None
        if self.pool is not None:
            self.pool.drain()
        self.draining = True
        self.log.info("supervisor.draining")

    def scale(self, n: int) -> dict[str, Any]:
        """Run ``n`` receivers. Returns at once: new receivers show ``ready: false`` in the
        reply and take connections when they report ready."""
        assert self.pool is not None
        self.pool.scale(n)
        self.log.info("supervisor.scaled", threads=n)
        return {"threads": n, "receivers": [s.status() for s in self.slots
                                            if s.state != INACTIVE]}

    # ------------------------------------------------------------------ stop

    def shutdown(self) -> int:
        """Stop accepting, let receivers finish batches in flight, stop them, drop the segment."""
        self.listening.close()
        if self.pool is not None:
            self.pool.stop(STOP_TIMEOUT_S)
            self.control.on_metrics()  # the receivers' final snapshots
            self.pool.close()
        self.control.close()
        self.segment.release()
        self.log.info("supervisor.stopped", accepted=self.admission.accepted)
        return self.exit_code

    def abort(self) -> None:
        """Start failed or was interrupted: remove what this start made and only that. The
        segment goes first (it holds the memory; nothing else matters if we are killed next);
        a recovered segment stays as it was, for another --recover."""
        self.segment.abort()
        if self.pool is not None:
            self.pool.kill()
            self.pool.close()
        self.listening.close()
        with contextlib.suppress(Exception):
            self.control.close()
