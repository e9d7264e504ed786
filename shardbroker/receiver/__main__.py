"""Entry point of a receiver process: ``python -m shardbroker.receiver SPEC_JSON``."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sys
import time

import zmq

from shardbroker import config as config_mod
from shardbroker import log as logmod
from shardbroker.errors import ShardbrokerError
from shardbroker.platform import linux
from shardbroker.receiver import messages
from shardbroker.receiver.backend import create_backend
from shardbroker.receiver.receiver import Receiver
from shardbroker.receiver.spec import ReceiverSpec
from shardbroker.segment import shm
from shardbroker.segment.writer import ShardWriter


class MetricsPublisher:
    """Sends the loop's snapshot to the supervisor every interval (PUSH, never blocks: a
    snapshot the supervisor is too slow to take is dropped, the next one supersedes it)."""

    def __init__(self, endpoint: str, interval_s: float) -> None:
        self.interval_s = interval_s
        self.next_at = 0.0
        self.ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self.sock: zmq.Socket[bytes] | None = None
        if endpoint and interval_s > 0:
            self.ctx = zmq.Context()
            self.sock = self.ctx.socket(zmq.PUSH)
            self.sock.setsockopt(zmq.SNDHWM, 4)
            self.sock.setsockopt(zmq.LINGER, 200)
            self.sock.connect(endpoint)

    def tick(self, loop: Receiver) -> None:
        now = time.monotonic()
        if self.sock is None or now < self.next_at:
            return
        self.next_at = now + self.interval_s
        self.send(loop)

    def send(self, loop: Receiver) -> None:
        if self.sock is None:
            return
        with contextlib.suppress(zmq.Again):
            self.sock.send(json.dumps(loop.snapshot()).encode(), zmq.NOBLOCK)

    def close(self, loop: Receiver | None) -> None:
        if self.sock is not None and self.ctx is not None:
            if loop is not None:
                self.send(loop)  # final figures
            self.sock.close()
            self.ctx.term()


def _config(spec: ReceiverSpec) -> config_mod.Config:
    return config_mod.load(None, overrides=spec.config)


def main(argv: list[str]) -> int:
    spec = ReceiverSpec.from_json(argv[1])
    cfg = _config(spec)
    logmod.configure(cfg.log.level, cfg.log.format, shard=spec.shard)
    log = logmod.get("shardbroker.receiver")
    # The supervisor owns shutdown: SIGINT from a terminal goes to the whole process group,
    # and a receiver must not die mid-batch because of it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control = socket.socket(fileno=spec.control_fd)
    try:
        linux.die_with_parent()
        if spec.cpu is not None and cfg.broker.pin_cpus:
            linux.pin_to_cpu(spec.cpu)
        mapped = shm.attach(spec.segment, writable=True)
        writer = ShardWriter(mapped, spec.shard, spec.broker_id)
        g = mapped.geometry
        t0 = time.perf_counter()
        # Map this shard's pages into this process now, not by faults on the receive path.
        linux.populate_write(mapped.mm, g.shard_stride, g.shard_base(spec.shard))
        populate_s = time.perf_counter() - t0
    except ShardbrokerError as exc:
        log.error("receiver.boot_failed", error=str(exc))
        control.send(messages.encode(messages.Fail(str(exc))))
        return 3
    publisher = MetricsPublisher(spec.metrics_endpoint, cfg.metrics.interval_s)
    listener = None
    if spec.reuseport_listen:
        host, port = config_mod.parse_hostport(spec.reuseport_listen)
        incoming = spec.cpu if cfg.socket.incoming_cpu or cfg.broker.accept == "reuseport" \
            else None
        listener = linux.reuseport_listener(host, port, incoming, listen=True)
    try:
        backend, fallback = create_backend(cfg, log)
    except ShardbrokerError as exc:  # an explicit --backend uring that cannot run here
        log.error("receiver.boot_failed", error=str(exc))
        control.send(messages.encode(messages.Fail(str(exc))))
        publisher.close(None)
        return 3
    loop = Receiver(cfg, writer, control, log, backend, on_tick=publisher.tick, cpu=spec.cpu,
                    listener=listener)
    loop.backend_fallback = fallback
    writer.heartbeat()  # booting (populate, backend) may have taken longer than the watchdog
    control.send(messages.encode(messages.Ready({
        "shard": spec.shard, "cpu": spec.cpu, "backend": loop.backend_name,
        "backend_fallback": loop.backend_fallback,
        "allowed_cpus": linux.allowed_cpus(), "resumed_at_batch": writer.next_index,
        "restarts": writer.restarts,
    })))
    log.info("receiver.ready", cpu=spec.cpu, backend=loop.backend_name,
             populate_s=round(populate_s, 3), resumed_at_batch=writer.next_index)
    if backend.setup_names:
        log.info("receiver.uring", setup=backend.setup_names)
    try:
        loop.run()
    finally:
        publisher.close(loop)
    log.info("receiver.exit", recv_calls=loop.recv_calls, batches=writer.next_index)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
