"""The supervisor: owns the segment and the listening socket, spawns and reaps receivers,
serves the control endpoint and aggregates metrics.

Gunicorn-arbiter style: signal handlers only queue (a self-pipe); the main loop reaps every
child; a receiver that fails at boot halts the supervisor instead of starting a respawn loop;
a receiver that dies after it was ready is restarted on the same shard and CPU.
Accepted connections go to the receiver with the fewest open connections, handed over as file
descriptors (SCM_RIGHTS) on a SOCK_SEQPACKET pair, so with N receivers and C connections the
busiest one holds at most ceil(C/N). ``scale`` moves connections between receivers at batch
boundaries (the receiver sends socket + protocol state here, we forward it), so publishers
never see a disconnect.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import zmq

from shardbroker import config as config_mod
from shardbroker.config import Config, parse_hostport
from shardbroker.consumer.registry import ConsumerTable
from shardbroker.control import endpoints, envelope
from shardbroker.control.metrics import MetricsAggregator
from shardbroker.errors import BrokerStartError, ShardbrokerError
from shardbroker.platform import linux
from shardbroker.platform.topology import PlacementPlan, plan_placement, read_topology
from shardbroker.receiver.spec import ReceiverSpec
from shardbroker.segment import shm
from shardbroker.segment.layout import RETENTION_NAMES, Geometry, write_retention
from shardbroker.supervisor.created import Created
from shardbroker.supervisor.guards import check_receivers_fit_cpus
from shardbroker.wire.protocol import encode_control_frame

BOOT_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 8.0

ACTIVE, RETIRING, INACTIVE = "active", "retiring", "inactive"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StartInterrupted(BrokerStartError):
    """SIGTERM or SIGINT arrived while the broker was starting (creating or prefaulting the
    segment, waiting for receivers): the start stops there and removes what it made."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"start interrupted by {signal.Signals(signum).name}",
                         hint="nothing of this start was left behind; run it again to start")


def placement_for(cfg: Config, root: str = "/") -> PlacementPlan:
    """The NUMA plan for this config on this machine (sysfs under ``root``)."""
    from shardbroker.platform.topology import default_nic

    nic = cfg.broker.nic or default_nic(root)
    topo = read_topology(root, nic=nic)
    mem = cfg.segment.memory_node if cfg.segment.memory_node >= 0 else None
    return plan_placement(topo, receivers=None, reserve_cpus=cfg.broker.reserve_cpus,
                          memory_node=mem)


def _fail_detail(raw: bytes) -> str:
    """The error text of a receiver's ``fail {"error": ...}`` message."""
    try:
        return str(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace")


@dataclass
class ReceiverSlot:
    shard: int
    cpu: int | None
    state: str = INACTIVE
    proc: subprocess.Popen[bytes] | None = None
    control: socket.socket | None = None
    ready: bool = False
    open_connections: int = 0
    restarts: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    restart_at: float = 0.0

    @property
    def takes_connections(self) -> bool:
        return self.state == ACTIVE and self.ready and self.control is not None


class Supervisor:
    def __init__(self, cfg: Config, log: Any, out: TextIO = sys.stdout) -> None:
        self.cfg = cfg
        self.log = log
        self.out = out
        self.segment_name = cfg.segment.name or f"shardbroker-{os.getpid()}"
        self.listener: socket.socket | None = None
        self.mapped: shm.Mapped | None = None  # created or taken over: ours to close
        self.created = Created()
        self.starting = False
        self.consumers: ConsumerTable | None = None  # the segment's consumer table
        self.next_consumer_sweep = 0.0
        self.slots: list[ReceiverSlot] = []
        self.stopping = False
        self.draining = False
        self.exit_code = 0
        self.accepted = 0
        self.started_at = time.time()
        self._sig_r, self._sig_w = socket.socketpair()
        self._sig_r.setblocking(False)
        self._signals: list[int] = []
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.control_sock: zmq.Socket[bytes] | None = None
        self.metrics_sock: zmq.Socket[bytes] | None = None
        self.control_endpoint = ""
        self.metrics_endpoint = ""
        self.metrics = MetricsAggregator()
        self.metrics_lock = threading.Lock()
        self.poller = zmq.Poller()
        self.listen_addr = ""
        self.placement = PlacementPlan((), None, None, None, None, (), ())
        self.thp_mode = ""
        self.numactl_warned = False
        self.port_holder: socket.socket | None = None  # reuseport mode
        self.allowed_networks = [ipaddress.ip_network(c, strict=False)
                                 for c in cfg.limits.allow_cidrs]
        self.by_source: dict[str, int] = {}  # open connections per source address
        self.accept_rejected: Counter[str] = Counter()

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
        """Create (or recover) the segment, bind, spawn receivers, print the ready line.
        Raises StartInterrupted on SIGTERM/SIGINT; the caller then calls ``abort``."""
        self.starting = True
        try:
            return self._start()
        finally:
            self.starting = False

    def _start(self) -> dict[str, Any]:
        n, cpus = self.plan()
        seg = self.cfg.segment
        geometry = Geometry(len(cpus), seg.pbr_slots, seg.blog_bytes_per_shard)
        if seg.hugepages == "hugetlbfs" and "/" not in self.segment_name:
            self.segment_name = os.path.join(seg.hugetlbfs_mount, self.segment_name)
        if seg.recover:
            n, cpus = self._recover(n, cpus)
        else:
            self._create_segment(geometry)
        assert self.mapped is not None
        self._raise_if_stop_requested()
        geometry = self.mapped.geometry
        # before any receiver starts: their writers read the policy once, at attach
        write_retention(self.mapped.buf, RETENTION_NAMES.index(seg.retention),
                        int(seg.consumer_timeout_s * 1000))
        self.consumers = ConsumerTable(self.mapped)
        prefault_s = (shm.prefault(self.mapped, between_chunks=self._raise_if_stop_requested)
                      if seg.prefault else 0.0)
        self.log.info("supervisor.segment.created", segment=self.segment_name,
                      bytes=geometry.total_bytes, shards=geometry.shard_count,
                      prefault_s=round(prefault_s, 3), hugepages=seg.hugepages,
                      memory_node=self.placement.memory_node)
        self._bind_zmq()
        self._listen()
        self.slots = [ReceiverSlot(shard=i, cpu=c) for i, c in enumerate(cpus)]
        for slot in self.slots[:n]:
            slot.state = ACTIVE
            self._spawn(slot)
        for slot in self.slots[:n]:
            self._await_ready(slot)
        shm.mark_serving(self.mapped)
        if self.cfg.metrics.prometheus:
            from shardbroker.control.prometheus import serve_metrics

            serve_metrics(self.cfg.metrics.prometheus, self.metrics_report)
        self._publish_record()
        ready = {
            "event": "ready",
            "listen": self.listen_addr,
            "segment": self.segment_name,
            "threads": n,
            "max_threads": len(self.slots),
            "backend": self.running_backend(),
            "control": self.control_endpoint,
            "pid": os.getpid(),
            "segment_bytes": geometry.total_bytes,
            "prefault_s": round(prefault_s, 3),
            "receivers": [self._slot_status(s) for s in self.slots[:n]],
        }
        if self.cfg.metrics.prometheus:
            ready["prometheus"] = self.cfg.metrics.prometheus
        self.out.write(json.dumps(ready) + "\n")
        self.out.flush()
        return ready

    def _create_segment(self, geometry: Geometry) -> None:
        """A new segment (shm.create refuses one larger than /dev/shm and memory allow)."""
        seg = self.cfg.segment
        self.mapped = shm.create(self.segment_name, geometry, self.cfg.broker.broker_id,
                                 seg.mode)
        self.created.segment = self.segment_name
        if seg.group:
            shm.share_with_group(self.segment_name, seg.group)
        self._place_memory()

    def _recover(self, n: int, cpus: list[int | None]) -> tuple[int, list[int | None]]:
        """Re-attach a crashed broker's segment: its geometry wins; each receiver continues
        its shard after the last committed batch (ShardWriter reads the shard header).
        A segment a live broker serves is refused and left exactly as it was."""
        mapped = shm.attach(self.segment_name, writable=True)
        try:
            generation = shm.take_over(mapped)
        except BaseException:
            mapped.close()
            raise
        self.mapped = mapped
        shards = self.mapped.geometry.shard_count
        plan_cpus: list[int | None] = [c for c in cpus if c is not None] or [None]
        cpus = [plan_cpus[i % len(plan_cpus)] for i in range(shards)]
        self.log.info("supervisor.segment.recovered", segment=self.segment_name,
                      shards=shards, generation=generation)
        return min(n, shards), cpus

    def _raise_if_stop_requested(self) -> None:
        """Between the steps of a start: end it if SIGTERM or SIGINT arrived (the handler only
        queued it; a start can take tens of seconds and must not make the operator wait)."""
        signum = next((s for s in self._signals if s in STOP_SIGNALS), None)
        if signum is not None:
            self.log.info("supervisor.start_interrupted", signal=signal.Signals(signum).name)
            raise StartInterrupted(signum)

    def _publish_record(self) -> None:
        """Let local commands find this broker (``shardbroker status`` and friends)."""
        rec = endpoints.record_for_this_process(self.segment_name, self.control_endpoint,
                                                self.listen_addr)
        self.created.files.append(endpoints.broker_dir_path(self.segment_name)
                                  / endpoints.RECORD_NAME)
        endpoints.write_record(rec)

    def _place_memory(self) -> None:
        """Bind the segment's pages to the planned node and apply the huge-page mode, before
        the prefault touches (and so allocates) them."""
        assert self.mapped is not None
        seg = self.cfg.segment
        node = self.placement.memory_node
        if node is not None:
            try:
                linux.mbind(self.mapped.mm, len(self.mapped.mm), node)
            except ShardbrokerError as exc:
                if seg.memory_node >= 0:
                    raise
                self.log.warning("supervisor.segment.mbind_failed", error=str(exc))
        if seg.hugepages == "thp":
            mode = linux.madvise_hugepage(self.mapped.mm, len(self.mapped.mm))
            self.thp_mode = mode
            if "[never]" in mode or "[deny]" in mode:
                self.log.warning("supervisor.segment.thp_off", shmem_enabled=mode,
                                 hint="echo advise > /sys/kernel/mm/transparent_hugepage/"
                                      "shmem_enabled, or use segment.hugepages = hugetlbfs")

    def segment_placement(self) -> dict[str, Any]:
        """Pages per NUMA node of the segment, read back from /proc/self/numa_maps."""
        path = (self.segment_name if "/" in self.segment_name.strip("/")
                else f"/dev/shm/{self.segment_name}")
        pages = linux.numa_maps_pages(os.getpid(), path)
        return {"planned_memory_node": self.placement.memory_node,
                "pages_by_node": pages, "hugepages": self.cfg.segment.hugepages,
                "thp_mode": self.thp_mode}

    def running_backend(self) -> str:
        """The backend the receivers actually run (each chose it at start, see
        receiver/backend.py): "uring", "epoll", or "mixed"."""
        seen = {s.info.get("backend") for s in self.slots if s.state != INACTIVE and s.info}
        seen.discard(None)
        if not seen:
            return self.cfg.broker.backend
        return str(seen.pop()) if len(seen) == 1 else "mixed"

    def _bind_zmq(self) -> None:
        c = self.cfg.control
        endpoints.check_tcp_bind(c.endpoint, bool(c.curve_secret_key_file))
        existed = endpoints.broker_dir_path(self.segment_name).exists()
        rundir = endpoints.broker_dir(self.segment_name)
        if not existed:
            self.created.dirs.append(rundir)
        self.control_endpoint = c.endpoint or f"ipc://{rundir}/control.sock"
        self.metrics_endpoint = f"ipc://{rundir}/metrics.sock"
        self._refuse_endpoints_in_use()
        if existed:  # a dead broker's (same segment, e.g. --recover): nobody listens in it
            self.created.dirs.append(rundir)
        self.control_sock = self.ctx.socket(zmq.ROUTER)
        self.control_sock.setsockopt(zmq.LINGER, 0)
        if c.curve_secret_key_file:
            from zmq import auth as zmq_auth

            public, secret = zmq_auth.load_certificate(c.curve_secret_key_file)
            if secret is None:
                raise BrokerStartError(f"{c.curve_secret_key_file} holds no secret key",
                                       hint="point control.curve_secret_key_file at *.key_secret")
            self.control_sock.curve_secretkey = secret
            self.control_sock.curve_publickey = public
            self.control_sock.curve_server = True
        try:
            self.control_sock.bind(self.control_endpoint)
        except zmq.ZMQError as exc:
            raise BrokerStartError(f"cannot bind control endpoint {self.control_endpoint}: {exc}",
                                   hint="is another broker using it? set control.endpoint") \
                from exc
        self._track_ipc_file(self.control_endpoint)
        if self.control_endpoint.startswith("ipc://"):
            os.chmod(self.control_endpoint[len("ipc://"):], 0o600)
        self.metrics_sock = self.ctx.socket(zmq.PULL)
        self.metrics_sock.setsockopt(zmq.LINGER, 0)
        self.metrics_sock.bind(self.metrics_endpoint)
        self._track_ipc_file(self.metrics_endpoint)

    def _refuse_endpoints_in_use(self) -> None:
        """ZeroMQ binds an ipc:// path another process listens on by taking it over: that
        broker could no longer be reached. Refuse instead."""
        for endpoint in (self.control_endpoint, self.metrics_endpoint):
            if endpoints.ipc_in_use(endpoint):
                raise BrokerStartError(
                    f"{endpoint} is in use by a running broker",
                    hint="pick another --segment (or control.endpoint); `shardbroker status` "
                         "lists the brokers running here")

    def _track_ipc_file(self, endpoint: str) -> None:
        if endpoint.startswith("ipc://"):
            self.created.files.append(Path(endpoint[len("ipc://"):]))

    def _listen(self) -> None:
        host, port = parse_hostport(self.cfg.broker.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if self.cfg.broker.accept == "reuseport":
            # Bound but never listening: it holds the port (and picks it when 0) while each
            # receiver's own SO_REUSEPORT listener takes the connections.
            try:
                self.port_holder = linux.reuseport_listener(host, port, None, listen=False)
            except OSError as exc:
                raise BrokerStartError(f"cannot bind {host}:{port}: {exc.strerror}",
                                       hint="pick another --listen address or port") from exc
            h, p = self.port_holder.getsockname()[:2]
            self.listen_addr = f"[{h}]:{p}" if family == socket.AF_INET6 else f"{h}:{p}"
            return
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind((host, port))
        except OSError as exc:
            raise BrokerStartError(f"cannot listen on {host}:{port}: {exc.strerror}",
                                   hint="pick another --listen address or port") from exc
        self.listener.listen(1024)
        self.listener.setblocking(False)
        h, p = self.listener.getsockname()[:2]
        self.listen_addr = f"[{h}]:{p}" if family == socket.AF_INET6 else f"{h}:{p}"

    def _spawn(self, slot: ReceiverSlot) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        spec = ReceiverSpec(
            shard=slot.shard, cpu=slot.cpu, segment=self.segment_name,
            broker_id=self.cfg.broker.broker_id, control_fd=child_end.fileno(),
            config=config_mod.to_dict(self.cfg),
            metrics_endpoint=self.metrics_endpoint if self.cfg.metrics.interval_s > 0 else "",
            reuseport_listen=self.listen_addr if self.port_holder is not None
            and not self.draining else "",
        )
        slot.proc = subprocess.Popen(
            [*self._numactl_prefix(), sys.executable, "-m", "shardbroker.receiver",
             spec.to_json()],
            pass_fds=(child_end.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        )
        child_end.close()
        slot.control = parent_end
        slot.ready = False
        slot.open_connections = 0

    def _numactl_prefix(self) -> list[str]:
        if not self.cfg.broker.numactl:
            return []
        exe = shutil.which("numactl")
        if exe is None:
            if not self.numactl_warned:
                self.log.warning("supervisor.numactl_missing",
                                 hint="apt-get install numactl, or set broker.numactl = false")
                self.numactl_warned = True
            return []
        p = self.placement
        mem = p.memory_node if p.memory_node is not None else p.cpu_node
        return [exe, f"--cpunodebind={p.cpu_node}", f"--membind={mem}"]

    def _await_ready(self, slot: ReceiverSlot) -> None:
        """Block until the receiver reports ready; BrokerStartError if it cannot boot."""
        assert slot.control is not None and slot.proc is not None
        msg = self._first_message(slot.control)
        if not msg.startswith(b"ready "):
            detail = _fail_detail(msg[5:]) if msg.startswith(b"fail ") else (
                f"exit code {slot.proc.poll()}" if slot.proc.poll() is not None
                else "no ready message in time")
            raise BrokerStartError(f"receiver {slot.shard} failed at boot: {detail}",
                                   hint="see its log lines above on stderr")
        slot.info = json.loads(msg[6:])
        slot.ready = True
        slot.control.setblocking(False)
        self.poller.register(slot.control, zmq.POLLIN)

    def _first_message(self, control: socket.socket) -> bytes:
        """A new receiver's first message; b"" if none comes within BOOT_TIMEOUT_S. While the
        broker starts, SIGTERM/SIGINT ends the wait at once (StartInterrupted)."""
        waiting = select.poll()
        waiting.register(control, select.POLLIN)
        if self.starting:
            waiting.register(self._sig_r, select.POLLIN)
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            ready_fds = {fd for fd, _ev in waiting.poll(left * 1000)}
            if self._sig_r.fileno() in ready_fds:
                with contextlib.suppress(BlockingIOError):
                    self._sig_r.recv(4096)  # the queue is in self._signals
                self._raise_if_stop_requested()
            if control.fileno() in ready_fds:
                try:
                    return control.recv(4096)
                except OSError:
                    return b""
        return b""

    # ------------------------------------------------------------------ main loop

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals.append(signum)
        with contextlib.suppress(OSError):
            self._sig_w.send(b"\0")

    def install_signals(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)

    def serve(self) -> int:
        """Run until a stop signal or command; returns the process exit code."""
        assert self.control_sock is not None and self.metrics_sock is not None
        if self.listener is not None:
            self.poller.register(self.listener, zmq.POLLIN)
        self.poller.register(self._sig_r, zmq.POLLIN)
        self.poller.register(self.control_sock, zmq.POLLIN)
        self.poller.register(self.metrics_sock, zmq.POLLIN)
        sig_fd = self._sig_r.fileno()
        while not self.stopping:
            # zmq.Poller hands back zmq sockets as themselves and plain sockets as their fd
            for item, _ev in self.poller.poll(500):
                if item is self.control_sock:
                    self._on_control_request()
                elif item is self.metrics_sock:
                    self._on_metrics()
                elif self.listener is not None and item == self.listener.fileno():
                    self._accept()
                elif item == sig_fd:
                    self._drain_signals()
                else:
                    slot = next((s for s in self.slots if s.control is not None
                                 and s.control.fileno() == item), None)
                    if slot is not None:
                        self._on_receiver_message(slot)
            self._reap()
            self._expire_consumers()
        return self.shutdown()

    def _expire_consumers(self) -> None:
        """Tell consumers silent for longer than the timeout that they were expired (the
        receivers already stopped counting them: they check heartbeats themselves)."""
        now = time.monotonic()
        if self.consumers is None or now < self.next_consumer_sweep:
            return
        self.next_consumer_sweep = now + 0.25
        for e in self.consumers.expire_stale():
            self.log.warning("supervisor.consumer.expired", consumer=e.name, pid=e.pid,
                             timeout_s=self.cfg.segment.consumer_timeout_s)

    def _drain_signals(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._sig_r.recv(4096)
        while self._signals:
            sig = self._signals.pop(0)
            if sig in (signal.SIGINT, signal.SIGTERM):
                self.log.info("supervisor.signal", signal=signal.Signals(sig).name)
                self.stopping = True

    def _accept(self) -> None:
        if self.listener is None:
            return
        for _ in range(64):  # bounded per wakeup
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.warning("supervisor.accept_failed", error=str(exc))
                return
            self.accepted += 1
            source = str(_addr[0])
            target = self._least_loaded()
            refusal = self._refusal(source, target)
            if refusal is not None:
                self._refuse(sock, source, *refusal)
                continue
            assert target is not None
            if self._hand(target, [b"conn"], [sock.fileno()]):
                self.by_source[source] = self.by_source.get(source, 0) + 1
            sock.close()  # the receiver holds its own copy now

    def _refusal(self, source: str, target: ReceiverSlot | None) -> tuple[str, str] | None:
        """Why a new connection from ``source`` may not be served (None: it may)."""
        lim = self.cfg.limits
        try:
            addr = ipaddress.ip_address(source)
        except ValueError:
            return "accept.bad_address", f"unparseable peer address {source!r}"
        if not any(addr in net for net in self.allowed_networks):
            return "accept.not_allowed", f"{source} is not in limits.allow_cidrs"
        if self.by_source.get(source, 0) >= lim.max_connections_per_source:
            return ("accept.too_many_from_source",
                    f"{source} already has {lim.max_connections_per_source} connections")
        if target is None:
            return "accept.no_receiver", "no receiver is ready (one is restarting)"
        if target.open_connections >= lim.max_connections_per_receiver:
            return ("accept.receivers_full",
                    f"every receiver has {lim.max_connections_per_receiver} connections")
        return None

    def _refuse(self, sock: socket.socket, source: str, reason: str, detail: str) -> None:
        """Tell the publisher why (an SESF control frame), count it, close."""
        self.accept_rejected[reason] += 1
        self.log.warning("supervisor.connection.refused", peer=source, reason=reason,
                         detail=detail)
        with contextlib.suppress(OSError):
            sock.setblocking(False)
            sock.send(encode_control_frame(f"{reason}: {detail}"))
        sock.close()

    def _hand(self, target: ReceiverSlot, msg: list[bytes], fds: list[int]) -> bool:
        assert target.control is not None
        try:
            socket.send_fds(target.control, msg, fds)
        except OSError as exc:
            self.log.warning("supervisor.handoff_failed", shard=target.shard, error=str(exc))
            return False
        target.open_connections += 1
        return True

    def _least_loaded(self, exclude: ReceiverSlot | None = None) -> ReceiverSlot | None:
        ready = [s for s in self.slots if s.takes_connections and s is not exclude]
        return min(ready, key=lambda s: (s.open_connections, s.shard)) if ready else None

    def _on_receiver_message(self, slot: ReceiverSlot) -> None:
        for _ in range(1024):
            if slot.control is None:
                return
            try:
                msg, fds, _flags, _addr = socket.recv_fds(slot.control, 65536, 4)
            except BlockingIOError:
                return
            except OSError:
                msg, fds = b"", []
            if not msg:
                self._receiver_gone(slot)
                return
            if msg.startswith(b"closed"):
                slot.open_connections = max(0, slot.open_connections - 1)
                source = msg[7:].decode(errors="replace")
                if source in self.by_source:
                    self.by_source[source] -= 1
                    if self.by_source[source] <= 0:
                        del self.by_source[source]
            elif msg == b"opened":
                slot.open_connections += 1
            elif msg.startswith(b"move "):
                self._forward_move(slot, msg[5:], fds)
            elif msg == b"retired":
                self.log.info("supervisor.receiver.retired", shard=slot.shard)
                with contextlib.suppress(OSError):
                    slot.control.send(b"stop")
            else:
                for fd in fds:
                    os.close(fd)

    def _forward_move(self, source: ReceiverSlot, state: bytes, fds: list[int]) -> None:
        source.open_connections = max(0, source.open_connections - 1)
        target = self._least_loaded(exclude=source)
        try:
            if target is None or not self._hand(target, [b"adopt " + state], fds):
                self.log.error("supervisor.move_failed", shard=source.shard,
                               hint="no receiver could take the connection; it is closed")
        finally:
            for fd in fds:
                os.close(fd)

    def _receiver_gone(self, slot: ReceiverSlot) -> None:
        if slot.control is not None:
            with contextlib.suppress(KeyError, ValueError, zmq.ZMQError):
                self.poller.unregister(slot.control)
            slot.control.close()
            slot.control = None
        slot.ready = False
        slot.restart_at = time.monotonic() + self.cfg.broker.restart_backoff_s

    def _reap(self) -> None:
        for slot in self.slots:
            proc = slot.proc
            if proc is None or proc.poll() is None:
                continue
            if slot.control is not None:
                self._receiver_gone(slot)
            if slot.state == RETIRING:
                slot.state = INACTIVE
                slot.proc = None
                self.log.info("supervisor.receiver.stopped", shard=slot.shard, pid=proc.pid)
                continue
            if self.stopping or slot.state != ACTIVE or time.monotonic() < slot.restart_at:
                continue
            self.log.warning("supervisor.receiver.died", shard=slot.shard, pid=proc.pid,
                             exit_code=proc.returncode, restarts=slot.restarts + 1)
            slot.restarts += 1
            self._spawn(slot)
            try:
                self._await_ready(slot)
            except BrokerStartError as exc:
                # A receiver that cannot boot now will not boot on the next try either.
                self.log.error("supervisor.receiver.boot_failed", shard=slot.shard,
                               error=str(exc))
                self.stopping = True
                self.exit_code = 3
                return
            self.log.info("supervisor.receiver.restarted", shard=slot.shard,
                          pid=slot.proc.pid if slot.proc else None,
                          resumed_at_batch=slot.info.get("resumed_at_batch"))

    # ------------------------------------------------------------------ metrics

    def _on_metrics(self) -> None:
        assert self.metrics_sock is not None
        for _ in range(256):
            try:
                raw = self.metrics_sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                snap = json.loads(raw)
            except ValueError:
                continue
            with self.metrics_lock:
                self.metrics.update(snap)

    def metrics_report(self) -> dict[str, Any]:
        active = [s.shard for s in self.slots if s.state == ACTIVE]
        with self.metrics_lock:
            report = self.metrics.report(active)
        report["total"]["receivers"] = len(active)
        report["total"]["accept_rejected"] = dict(self.accept_rejected)
        return report

    # ------------------------------------------------------------------ control

    def _on_control_request(self) -> None:
        assert self.control_sock is not None
        for _ in range(64):
            try:
                frames = self.control_sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            ident, body = frames[0], frames[-1]
            try:
                cmd, args = envelope.parse_request(body)
                reply = envelope.reply_ok(self._command(cmd, args))
            except (envelope.EnvelopeError, ShardbrokerError, ValueError) as exc:
                reply = envelope.reply_error(str(exc))
            self.control_sock.send_multipart([ident, b"", reply])

    def _command(self, cmd: str, args: dict[str, Any]) -> Any:
        if cmd == "status":
            return self.status()
        if cmd == "stats":
            return self.metrics_report()
        if cmd == "scale":
            return self.scale(int(args.get("threads", 0)))
        if cmd == "drain":
            self.drain()
            return {"draining": True}
        if cmd == "stop":
            self.log.info("supervisor.stop_requested")
            self.stopping = True
            return {"stopping": True}
        raise ValueError(f"unknown command {cmd}")

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(), "listen": self.listen_addr, "segment": self.segment_name,
            "control": self.control_endpoint, "backend": self.running_backend(),
            "threads": sum(1 for s in self.slots if s.state == ACTIVE),
            "max_threads": len(self.slots), "draining": self.draining,
            "accepted": self.accepted, "uptime_s": round(time.time() - self.started_at, 1),
            "accept_rejected": dict(self.accept_rejected),
            "receivers": [self._slot_status(s) for s in self.slots if s.state != INACTIVE],
            "placement": self.placement.to_dict(),
            "segment_placement": self.segment_placement(),
            "retention": self.cfg.segment.retention,
            "consumers": [] if self.consumers is None else [
                {"name": c.entry.name, "state": c.entry.state_name, "pid": c.entry.pid,
                 "live": c.live, "lag": c.lag} for c in self.consumers.describe()],
        }

    def _slot_status(self, s: ReceiverSlot) -> dict[str, Any]:
        pid = s.proc.pid if s.proc else None
        return {
            "shard": s.shard, "pid": pid, "cpu": s.cpu, "state": s.state, "ready": s.ready,
            "backend": s.info.get("backend"), "open_connections": s.open_connections,
            "backend_fallback": s.info.get("backend_fallback", ""),
            "restarts": s.restarts,
            "allowed_cpus": linux.read_allowed_cpus(pid) if pid else None,
        }

    def drain(self) -> None:
        """Stop taking new connections; the ones open keep streaming."""
        if self.listener is not None:
            with contextlib.suppress(KeyError, ValueError, zmq.ZMQError):
                self.poller.unregister(self.listener)
            self.listener.close()
            self.listener = None
        for slot in self.slots:
            if slot.control is not None and self.port_holder is not None:
                with contextlib.suppress(OSError):
                    slot.control.send(b"drain")
        self.draining = True
        self.log.info("supervisor.draining")

    def scale(self, n: int) -> dict[str, Any]:
        active = [s for s in self.slots if s.state == ACTIVE]
        if not 1 <= n <= len(self.slots):
            raise ValueError(f"threads must be within 1..{len(self.slots)} (the segment has "
                             f"{len(self.slots)} shards; raise broker.max_threads to allow more)")
        check_receivers_fit_cpus(f"scale {n}", n, self.placement.receiver_cpus,
                                 self.cfg.broker.oversubscribe)
        if any(s.state == RETIRING for s in self.slots):
            raise ValueError("a scale-down is still in progress; try again in a moment")
        if n > len(active):
            for slot in self.slots:
                if len([s for s in self.slots if s.state == ACTIVE]) >= n:
                    break
                if slot.state == INACTIVE:
                    slot.state = ACTIVE
                    self._spawn(slot)
                    self._await_ready(slot)
            self._rebalance()
        elif n < len(active):
            for slot in active[n:]:
                slot.state = RETIRING
                assert slot.control is not None
                slot.control.send(b"handoff all")
        self.log.info("supervisor.scaled", threads=n)
        return {"threads": n, "receivers": [self._slot_status(s) for s in self.slots
                                            if s.state != INACTIVE]}

    def _rebalance(self) -> None:
        ready = [s for s in self.slots if s.takes_connections]
        total = sum(s.open_connections for s in ready)
        target = math.ceil(total / len(ready)) if ready else 0
        for s in ready:
            if s.open_connections > target and s.control is not None:
                s.control.send(f"handoff {s.open_connections - target}".encode())

    # ------------------------------------------------------------------ stop

    def shutdown(self) -> int:
        """Stop accepting, let receivers finish batches in flight, stop them, drop the segment."""
        for sock in (self.listener, self.port_holder):
            if sock is not None:
                sock.close()
        self.listener = self.port_holder = None
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
        self._on_metrics()  # the receivers' final snapshots
        for slot in self.slots:
            if slot.control is not None:
                slot.control.close()
                slot.control = None
        self._close_zmq()
        self.release_segment()
        self.log.info("supervisor.stopped", accepted=self.accepted)
        return self.exit_code

    def _close_zmq(self) -> None:
        try:
            for s in (self.control_sock, self.metrics_sock):
                if s is not None:
                    s.close(linger=0)
            self.ctx.term()
        finally:
            self.created.remove_files()  # this broker's sockets and record, nobody else's

    def release_segment(self) -> None:
        """At a clean stop: mark the segment closed, unmap it, unlink it unless kept."""
        if self.mapped is None:
            return
        shm.mark_closed(self.mapped)
        self._unmap()
        if self.cfg.segment.keep:
            self.log.info("supervisor.segment.kept", segment=self.segment_name)
        else:
            shm.unlink(self.segment_name)
        self.created.segment = None

    def _unmap(self) -> None:
        if self.mapped is not None:
            self.mapped.close()
        self.mapped = None
        self.consumers = None

    def abort(self) -> None:
        """Start failed or was interrupted: remove what this start made and only that. The
        segment goes first (it holds the memory; nothing else matters if we are killed next);
        a recovered segment stays as it was, for another --recover."""
        if self.created.segment is not None:
            shm.unlink(self.created.segment)
            self.created.segment = None
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.kill()
                slot.proc.wait()
            if slot.control is not None:
                slot.control.close()
        for sock in (self.listener, self.port_holder):
            if sock is not None:
                sock.close()
        with contextlib.suppress(Exception):
            self._close_zmq()
        self._unmap()
