"""The supervisor's ZeroMQ side: the control endpoint (ROUTER; commands in, replies out),
the metrics endpoint (PULL; receiver snapshots into the aggregator) and the broker record
that lets local commands find this broker."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import zmq

from shardbroker.config import ControlConfig
from shardbroker.control import endpoints, envelope
from shardbroker.control.metrics import MetricsAggregator
from shardbroker.errors import BrokerStartError, ShardbrokerError
from shardbroker.supervisor.created import Created

Handler = Callable[[str, dict[str, Any]], Any]  # (command, arguments) -> reply
T = TypeVar("T")


class ControlServer:
    def __init__(self, cfg: ControlConfig, created: Created) -> None:
        self.cfg = cfg
        self.created = created
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.control_sock: zmq.Socket[bytes] | None = None
        self.metrics_sock: zmq.Socket[bytes] | None = None
        self.control_endpoint = ""
        self.metrics_endpoint = ""
        self.metrics = MetricsAggregator()
        self.metrics_lock = threading.Lock()  # the Prometheus thread reads the aggregator

    def bind(self, segment: str) -> None:
        c = self.cfg
        endpoints.check_tcp_bind(c.endpoint, bool(c.curve_secret_key_file))
        existed = endpoints.broker_dir_path(segment).exists()
        rundir = endpoints.broker_dir(segment)
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
            self._curve(self.control_sock, c.curve_secret_key_file)
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

    @staticmethod
    def _curve(sock: zmq.Socket[bytes], secret_key_file: str) -> None:
        from zmq import auth as zmq_auth

        public, secret = zmq_auth.load_certificate(secret_key_file)
        if secret is None:
            raise BrokerStartError(f"{secret_key_file} holds no secret key",
                                   hint="point control.curve_secret_key_file at *.key_secret")
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True

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

    def publish_record(self, segment: str, listen_addr: str) -> None:
        """Let local commands find this broker (``shardbroker status`` and friends)."""
        rec = endpoints.record_for_this_process(segment, self.control_endpoint, listen_addr)
        self.created.files.append(endpoints.broker_dir_path(segment) / endpoints.RECORD_NAME)
        endpoints.write_record(rec)

    def on_request(self, handler: Handler) -> None:
        """Answer the control requests queued now (bounded per wakeup)."""
        sock = self.control_sock
        assert sock is not None
        for frames in _queued(lambda: sock.recv_multipart(zmq.NOBLOCK), 64):
            ident, body = frames[0], frames[-1]
            try:
                cmd, args = envelope.parse_request(body)
                reply = envelope.reply_ok(handler(cmd, args))
            except (envelope.EnvelopeError, ShardbrokerError, ValueError) as exc:
                reply = envelope.reply_error(str(exc))
            except Exception as exc:  # noqa: BLE001 - one bad request must not end the broker
                reply = envelope.reply_error(f"{type(exc).__name__}: {exc}")
            sock.send_multipart([ident, b"", reply])

    def on_metrics(self) -> None:
        """Fold the receiver snapshots queued now into the aggregator."""
        sock = self.metrics_sock
        assert sock is not None
        for raw in _queued(lambda: sock.recv(zmq.NOBLOCK), 256):
            try:
                snap = json.loads(raw)
            except ValueError:
                continue
            with self.metrics_lock:
                self.metrics.update(snap)

    def report(self, active_shards: list[int]) -> dict[str, Any]:
        with self.metrics_lock:
            return self.metrics.report(active_shards)

    def close(self) -> None:
        try:
            for s in (self.control_sock, self.metrics_sock):
                if s is not None:
                    s.close(linger=0)
            self.ctx.term()
        finally:
            self.created.remove_files()  # this broker's sockets and record, nobody else's


def _queued(receive: Callable[[], T], limit: int) -> Iterator[T]:
    """What ``receive`` (a NOBLOCK receive) returns until nothing is queued; ``limit`` at most
    per wakeup, so one busy socket cannot starve the others."""
    for _ in range(limit):
        try:
            yield receive()
        except zmq.Again:
            return
