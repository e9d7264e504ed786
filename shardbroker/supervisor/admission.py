"""Admission: the listening socket, and who may connect. Each accepted publisher is checked
against ``limits`` (allowed networks, connections per source and per receiver) and either
handed to the least-loaded receiver or refused with a stated reason (an SESF control frame,
so the publisher learns why before the close), counted per reason."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections import Counter
from dataclasses import dataclass
from typing import Any

from shardbroker.config import BrokerConfig, LimitsConfig, parse_hostport
from shardbroker.errors import BrokerStartError
from shardbroker.platform import linux
from shardbroker.receiver import messages
from shardbroker.supervisor.pool import ReceiverPool
from shardbroker.wire.protocol import encode_control_frame

ACCEPTS_PER_WAKEUP = 64


@dataclass
class Listening:
    """``listener``: the supervisor accepts (accept = supervisor). ``port_holder``: bound,
    never listening, so the port stays ours while each receiver's SO_REUSEPORT listener
    accepts (accept = reuseport). ``address``: HOST:PORT as publishers reach it."""
    listener: socket.socket | None
    port_holder: socket.socket | None
    address: str

    def close(self) -> None:
        for sock in (self.listener, self.port_holder):
            if sock is not None:
                sock.close()
        self.listener = self.port_holder = None


def listen(cfg: BrokerConfig) -> Listening:
    host, port = parse_hostport(cfg.listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if cfg.accept == "reuseport":
        try:
            holder = linux.reuseport_listener(host, port, None, listen=False)
        except OSError as exc:
            raise BrokerStartError(f"cannot bind {host}:{port}: {exc.strerror}",
                                   hint="pick another --listen address or port") from exc
        return Listening(None, holder, _address(holder, family))
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise BrokerStartError(f"cannot listen on {host}:{port}: {exc.strerror}",
                               hint="pick another --listen address or port") from exc
    listener.listen(1024)
    listener.setblocking(False)
    return Listening(listener, None, _address(listener, family))


def _address(sock: socket.socket, family: int) -> str:
    h, p = sock.getsockname()[:2]
    return f"[{h}]:{p}" if family == socket.AF_INET6 else f"{h}:{p}"


class Admission:
    def __init__(self, limits: LimitsConfig, log: Any) -> None:
        self.limits = limits
        self.log = log
        self.allowed_networks = [ipaddress.ip_network(c, strict=False)
                                 for c in limits.allow_cidrs]
        self.by_source: dict[str, int] = {}  # open connections per source address
        self.rejected: Counter[str] = Counter()
        self.accepted = 0

    def accept(self, listener: socket.socket, pool: ReceiverPool) -> None:
        """Accept what is queued; give each to the pool's least-loaded receiver or refuse it.
        Our copy of each socket is closed either way (the receiver holds its own)."""
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.warning("supervisor.accept_failed", error=str(exc))
                return
            self.accepted += 1
            source = str(addr[0])
            target = pool.least_loaded()
            refusal = self.refusal(source, None if target is None else target.open_connections)
            if refusal is not None:
                self._refuse(sock, source, *refusal)
                continue
            assert target is not None
            if pool.hand(target, messages.CONN, [sock.fileno()]):
                self.by_source[source] = self.by_source.get(source, 0) + 1
            sock.close()

    def refusal(self, source: str, target_connections: int | None) -> tuple[str, str] | None:
        """Why a new connection from ``source`` may not be served (None: it may), given the
        open connections of the receiver it would go to (None: no receiver is ready)."""
        lim = self.limits
        try:
            addr = ipaddress.ip_address(source)
        except ValueError:
            return "accept.bad_address", f"unparseable peer address {source!r}"
        if not any(addr in net for net in self.allowed_networks):
            return "accept.not_allowed", f"{source} is not in limits.allow_cidrs"
        if self.by_source.get(source, 0) >= lim.max_connections_per_source:
            return ("accept.too_many_from_source",
                    f"{source} already has {lim.max_connections_per_source} connections")
        if target_connections is None:
            return "accept.no_receiver", "no receiver is ready (one is restarting)"
        if target_connections >= lim.max_connections_per_receiver:
            return ("accept.receivers_full",
                    f"every receiver has {lim.max_connections_per_receiver} connections")
        return None

    def _refuse(self, sock: socket.socket, source: str, reason: str, detail: str) -> None:
        """Tell the publisher why (an SESF control frame), count it, close."""
        self.rejected[reason] += 1
        self.log.warning("supervisor.connection.refused", peer=source, reason=reason,
                         detail=detail)
        with contextlib.suppress(OSError):
            sock.setblocking(False)
            sock.send(encode_control_frame(f"{reason}: {detail}"))
        sock.close()

    def closed(self, source: str) -> None:
        """A receiver closed a connection from ``source``."""
        if source in self.by_source:
            self.by_source[source] -= 1
            if self.by_source[source] <= 0:
                del self.by_source[source]
