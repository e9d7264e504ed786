"""The supervisor: owns the segment and the listening socket, spawns and reaps receivers.

Gunicorn-arbiter style: signal handlers only queue (through ``signal.set_wakeup_fd``); the main
loop reaps every child; a receiver that fails at boot halts the supervisor instead of starting
a respawn loop; a receiver that dies after it was ready is restarted on the same shard and CPU.
Accepted connections go to the receiver with the fewest open connections, handed over as file
descriptors (SCM_RIGHTS) on a SOCK_SEQPACKET pair, so with N receivers and C connections the
busiest one holds at most ceil(C/N).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from shardbroker import config as config_mod
from shardbroker.config import Config, parse_hostport
from shardbroker.errors import BrokerStartError
from shardbroker.platform import linux
from shardbroker.receiver.spec import ReceiverSpec
from shardbroker.segment import shm
from shardbroker.segment.layout import Geometry

BOOT_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 8.0


@dataclass
class ReceiverSlot:
    shard: int
    cpu: int | None
    proc: subprocess.Popen[bytes] | None = None
    control: socket.socket | None = None
    ready: bool = False
    open_connections: int = 0
    restarts: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    restart_at: float = 0.0


class Supervisor:
    def __init__(self, cfg: Config, log: Any, out: TextIO = sys.stdout) -> None:
        self.cfg = cfg
        self.log = log
        self.out = out
        self.segment_name = cfg.segment.name or f"shardbroker-{os.getpid()}"
        self.sel = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self.mapped: shm.Mapped | None = None
        self.slots: list[ReceiverSlot] = []
        self.stopping = False
        self.accepted = 0
        self._sig_r, self._sig_w = socket.socketpair()
        self._signals: list[int] = []

    # ------------------------------------------------------------------ start

    def plan_cpus(self) -> list[int | None]:
        cpus = linux.allowed_cpus()
        n = self.cfg.broker.threads or len(cpus)
        if n > len(cpus):
            self.log.warning("supervisor.more_receivers_than_cpus", receivers=n,
                             cpus=len(cpus), hint="receivers will share CPUs")
        if not self.cfg.broker.pin_cpus:
            return [None] * n
        return [cpus[i % len(cpus)] for i in range(n)]

    def start(self) -> dict[str, Any]:
        cpus = self.plan_cpus()
        seg = self.cfg.segment
        geometry = Geometry(len(cpus), seg.pbr_slots, seg.blog_bytes_per_shard)
        self.mapped = shm.create(self.segment_name, geometry, self.cfg.broker.broker_id, seg.mode)
        prefault_s = shm.prefault(self.mapped) if seg.prefault else 0.0
        self.log.info("supervisor.segment.created", segment=self.segment_name,
                      bytes=geometry.total_bytes, shards=geometry.shard_count,
                      prefault_s=round(prefault_s, 3))
        host, port = parse_hostport(self.cfg.broker.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind((host, port))
        except OSError as exc:
            raise BrokerStartError(f"cannot listen on {host}:{port}: {exc.strerror}",
                                   hint="pick another --listen address or port") from exc
        self.listener.listen(1024)
        self.listener.setblocking(False)
        self.slots = [ReceiverSlot(shard=i, cpu=c) for i, c in enumerate(cpus)]
        for slot in self.slots:
            self._spawn(slot)
        self._wait_ready()
        shm.mark_serving(self.mapped)
        self.sel.register(self.listener, selectors.EVENT_READ, "accept")
        self.sel.register(self._sig_r, selectors.EVENT_READ, "signal")
        bound = self.listener.getsockname()
        ready = {
            "event": "ready",
            "listen": f"{'[' + bound[0] + ']' if family == socket.AF_INET6 else bound[0]}:"
                      f"{bound[1]}",
            "segment": self.segment_name,
            "threads": len(self.slots),
            "backend": self.cfg.broker.backend,
            "pid": os.getpid(),
            "segment_bytes": geometry.total_bytes,
            "prefault_s": round(prefault_s, 3),
            "receivers": [dict(s.info, pid=s.proc.pid if s.proc else None) for s in self.slots],
        }
        self.out.write(json.dumps(ready) + "\n")
        self.out.flush()
        return ready

    def _spawn(self, slot: ReceiverSlot) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        spec = ReceiverSpec(
            shard=slot.shard, cpu=slot.cpu, segment=self.segment_name,
            broker_id=self.cfg.broker.broker_id, control_fd=child_end.fileno(),
            config=config_mod.to_dict(self.cfg),
        )
        slot.proc = subprocess.Popen(
            [sys.executable, "-m", "shardbroker.receiver", spec.to_json()],
            pass_fds=(child_end.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        )
        child_end.close()
        slot.control = parent_end
        slot.ready = False
        slot.open_connections = 0

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        for slot in self.slots:
            assert slot.control is not None and slot.proc is not None
            slot.control.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                msg = slot.control.recv(4096)
            except TimeoutError:
                msg = b""
            if not msg.startswith(b"ready "):
                detail = msg[5:].decode(errors="replace") if msg.startswith(b"fail ") else (
                    f"exit code {slot.proc.poll()}" if slot.proc.poll() is not None
                    else "no ready message in time")
                raise BrokerStartError(f"receiver {slot.shard} failed at boot: {detail}",
                                       hint="see its log lines above on stderr")
            slot.info = json.loads(msg[6:])
            slot.ready = True
            slot.control.setblocking(False)
            self.sel.register(slot.control, selectors.EVENT_READ, slot)

    # ------------------------------------------------------------------ main loop

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals.append(signum)
        with contextlib.suppress(OSError):
            self._sig_w.send(b"\0")

    def install_signals(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)

    def serve(self) -> int:
        """Run until a stop signal; returns the process exit code."""
        while not self.stopping:
            for key, _ev in self.sel.select(timeout=0.5):
                if key.data == "accept":
                    self._accept()
                elif key.data == "signal":
                    self._drain_signals()
                else:
                    self._on_receiver_message(key.data)
            self._reap()
        return self.shutdown()

    def _drain_signals(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._sig_r.recv(4096)
        while self._signals:
            sig = self._signals.pop(0)
            if sig in (signal.SIGINT, signal.SIGTERM):
                self.log.info("supervisor.signal", signal=signal.Signals(sig).name)
                self.stopping = True

    def _accept(self) -> None:
        assert self.listener is not None
        for _ in range(64):  # bounded per wakeup
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.warning("supervisor.accept_failed", error=str(exc))
                return
            self.accepted += 1
            target = self._least_loaded()
            if target is None:
                sock.close()
                self.log.warning("supervisor.no_receiver_ready", hint="a receiver is restarting")
                continue
            assert target.control is not None
            try:
                socket.send_fds(target.control, [b"conn"], [sock.fileno()])
                target.open_connections += 1
            except OSError as exc:
                self.log.warning("supervisor.handoff_failed", shard=target.shard, error=str(exc))
            finally:
                sock.close()  # the receiver holds its own copy now

    def _least_loaded(self) -> ReceiverSlot | None:
        ready = [s for s in self.slots if s.ready]
        return min(ready, key=lambda s: (s.open_connections, s.shard)) if ready else None

    def _on_receiver_message(self, slot: ReceiverSlot) -> None:
        assert slot.control is not None
        for _ in range(1024):
            try:
                msg = slot.control.recv(4096)
            except BlockingIOError:
                return
            except OSError:
                msg = b""
            if not msg:
                self._receiver_gone(slot)
                return
            if msg == b"closed":
                slot.open_connections = max(0, slot.open_connections - 1)

    def _receiver_gone(self, slot: ReceiverSlot) -> None:
        if slot.control is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(slot.control)
            slot.control.close()
            slot.control = None
        slot.ready = False
        slot.restart_at = time.monotonic() + self.cfg.broker.restart_backoff_s

    def _reap(self) -> None:
        for slot in self.slots:
            proc = slot.proc
            if proc is None:
                continue
            code = proc.poll()
            if code is None:
                continue
            if slot.control is not None:
                self._receiver_gone(slot)
            if self.stopping:
                continue
            if time.monotonic() < slot.restart_at:
                continue
            self.log.warning("supervisor.receiver.died", shard=slot.shard, pid=proc.pid,
                             exit_code=code, restarts=slot.restarts + 1)
            slot.restarts += 1
            self._spawn(slot)
            assert slot.control is not None
            slot.control.settimeout(BOOT_TIMEOUT_S)
            try:
                msg = slot.control.recv(4096)
            except (TimeoutError, OSError):
                msg = b""
            if not msg.startswith(b"ready "):
                # A receiver that cannot boot now will not boot on the next try either.
                self.log.error("supervisor.receiver.boot_failed", shard=slot.shard,
                               message=msg.decode(errors="replace")[:200])
                self.stopping = True
                self.exit_code = 3
                return
            slot.info = json.loads(msg[6:])
            slot.ready = True
            slot.control.setblocking(False)
            self.sel.register(slot.control, selectors.EVENT_READ, slot)
            self.log.info("supervisor.receiver.restarted", shard=slot.shard, pid=slot.proc.pid
                          if slot.proc else None, resumed_at_batch=slot.info.get(
                              "resumed_at_batch"))

    exit_code = 0

    # ------------------------------------------------------------------ stop

    def shutdown(self) -> int:
        """Stop accepting, let receivers finish batches in flight, stop them, drop the segment."""
        if self.listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(self.listener)
            self.listener.close()
            self.listener = None
        for slot in self.slots:
            if slot.control is not None:
                with contextlib.suppress(OSError):
                    slot.control.send(b"stop")
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for slot in self.slots:
            if slot.proc is None:
                continue
            try:
                slot.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log.warning("supervisor.receiver.kill", shard=slot.shard, pid=slot.proc.pid)
                slot.proc.kill()
                slot.proc.wait()
        for slot in self.slots:
            if slot.control is not None:
                slot.control.close()
                slot.control = None
        self.release_segment()
        self.log.info("supervisor.stopped", accepted=self.accepted)
        return self.exit_code

    def release_segment(self) -> None:
        if self.mapped is None:
            return
        shm.mark_closed(self.mapped)
        self.mapped.close()
        self.mapped = None
        if self.cfg.segment.keep:
            self.log.info("supervisor.segment.kept", segment=self.segment_name)
        else:
            shm.unlink(self.segment_name)

    def abort(self) -> None:
        """Start failed: kill whatever was spawned and drop the segment."""
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.kill()
                slot.proc.wait()
            if slot.control is not None:
                slot.control.close()
        if self.listener is not None:
            self.listener.close()
        self.release_segment()
