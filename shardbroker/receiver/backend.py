"""The receive backends' one interface, and the one place that chooses a receiver's backend:
``auto | epoll | uring`` (broker.backend, ``shardbroker run --backend``).

* ``epoll`` (epoll.py): always available.
* ``uring`` (uring.py): if io_uring cannot run here, a startup error (the receiver reports
  ``fail``, the supervisor exits non-zero with that one line).
* ``auto``: probe io_uring once, at receiver start (platform/uring.py: the CPU's memory model,
  ``kernel.io_uring_disabled``, ``io_uring_setup`` refused with EPERM/ENOSYS as under Docker's
  default seccomp profile, the features and opcodes the driver needs, a NOP round trip); fall
  back to epoll with a ``receiver.backend.fallback`` log event that says why.

A backend is a thin I/O driver: it waits, reads into ``conn.session.next_buffer()`` (or the
address ``next_target()`` names) and reports to the Receiver (receiver.py), which owns every
decision. Neither driver inherits from the other.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Protocol

from shardbroker.config import BACKENDS, Config
from shardbroker.platform import uring

if TYPE_CHECKING:
    from shardbroker.receiver.connection import Connection
    from shardbroker.receiver.receiver import Receiver


class Backend(Protocol):
    name: str
    setup_names: list[str]  # io_uring setup flags in use (empty for epoll)

    def start(self, rx: Receiver, control: socket.socket,
              listener: socket.socket | None) -> None:
        """Begin watching the supervisor's control socket (and a reuseport listener)."""

    def drop_listener(self, listener: socket.socket) -> None:
        """Stop watching the listener; it is closed right after."""

    def watch(self, conn: Connection) -> None:
        """Start receiving on a new connection."""

    def adopted(self, conn: Connection) -> None:
        """A connection moved in from another receiver: bytes may be queued already."""

    def unwatch(self, conn: Connection) -> bool:
        """Stop receiving on ``conn``. True: its socket may be closed now; False: the driver
        still has an operation naming it and closes the socket when that ends."""

    def idle(self, conn: Connection) -> bool:
        """Nothing in flight on ``conn`` (it may be handed over). False: the driver ends what
        is in flight and calls ``Receiver.settled`` (or ``received``) when it has."""

    def quiesce(self, conn: Connection) -> None:
        """``conn``'s BLog reservation is being reused: stop any kernel write into it now."""

    def pause(self, conn: Connection) -> None:
        """Parked (retention ``block``): read nothing more from ``conn`` until ``resume``."""

    def resume(self, conn: Connection) -> None:
        """The parked session continued: receive again (its bytes may be queued)."""

    def want_write(self, conn: Connection, on: bool) -> None:
        """The ack socket has (no longer) unsent bytes: watch it for writability."""

    def wait(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` and dispatch what happened to the Receiver."""

    def close(self) -> None:
        """End everything in flight and release the driver's resources."""


def create_backend(cfg: Config, log: Any) -> tuple[Backend, str]:
    """The driver for ``cfg.broker.backend`` and, for ``auto`` without io_uring, why not.
    Raises PlatformError for an explicit ``uring`` that cannot run."""
    requested = cfg.broker.backend
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}")
    from shardbroker.receiver.epoll import EpollBackend

    if requested == "epoll":
        return EpollBackend(), ""
    probe = uring.probe_ring()
    if probe.ok:
        from shardbroker.receiver.uring import UringBackend

        try:
            return UringBackend(setup_flags=probe.setup_flags), ""
        except OSError as exc:
            probe = uring.Probe(False, f"ring setup failed: {exc.strerror or exc}")
    if requested == "uring":
        raise uring.unavailable_error(probe)
    log.warning("receiver.backend.fallback", requested=requested, backend="epoll",
                reason=probe.reason)
    return EpollBackend(), probe.reason
