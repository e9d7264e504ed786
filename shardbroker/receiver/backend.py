"""The one place that chooses a receiver's backend: ``auto | epoll | uring`` (broker.backend,
``shardbroker run --backend``).

* ``epoll``: ReceiveLoop, always available.
* ``uring``: UringLoop; if io_uring cannot run here, a startup error (the receiver reports
  ``fail``, the supervisor exits non-zero with that one line).
* ``auto``: probe io_uring once, at receiver start (platform/uring.py: the CPU's memory model,
  ``kernel.io_uring_disabled``, ``io_uring_setup`` refused with EPERM/ENOSYS as under Docker's
  default seccomp profile, the features and opcodes the loop needs, a NOP round trip); fall back
  to epoll with a ``receiver.backend.fallback`` log event that says why.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from shardbroker.config import Config
from shardbroker.platform import uring
from shardbroker.receiver.loop import ReceiveLoop
from shardbroker.segment.writer import ShardWriter

BACKENDS = ("auto", "epoll", "uring")


def create_loop(cfg: Config, writer: ShardWriter, control: socket.socket, log: Any,
                on_tick: Callable[[ReceiveLoop], None] | None = None,
                cpu: int | None = None, listener: socket.socket | None = None) -> ReceiveLoop:
    """The receive loop for ``cfg.broker.backend``; raises PlatformError for an explicit
    ``uring`` that cannot run."""
    requested = cfg.broker.backend
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}")
    if requested == "epoll":
        return ReceiveLoop(cfg, writer, control, log, on_tick=on_tick, cpu=cpu,
                           listener=listener)
    probe = uring.probe_ring()
    if probe.ok:
        from shardbroker.receiver.uring_loop import UringLoop

        try:
            loop: ReceiveLoop = UringLoop(
                cfg, writer, control, log, on_tick=on_tick, cpu=cpu, listener=listener,
                setup_flags=probe.setup_flags, lowat_chain=probe.lowat_chain)
            if not probe.lowat_chain and cfg.socket.rcvlowat_cap:
                log.info("receiver.uring.lowat_chain_off", reason=probe.lowat_chain_reason)
            return loop
        except OSError as exc:
            probe = uring.Probe(False, f"ring setup failed: {exc.strerror or exc}")
    if requested == "uring":
        raise uring.unavailable_error(probe)
    log.warning("receiver.backend.fallback", requested=requested, backend="epoll",
                reason=probe.reason)
    loop = ReceiveLoop(cfg, writer, control, log, on_tick=on_tick, cpu=cpu, listener=listener)
    loop.backend_fallback = probe.reason
    return loop
