"""Which brokers a cluster publisher talks to: a list, or a name that resolves to all of them.

``--connect`` is a comma-separated list of ``HOST:PORT`` entries. A HOST that is an address is
one broker; a HOST that is a name stands for every address it resolves to, all on the entry's
PORT -- a Kubernetes headless Service (conf/k8s/service.yaml) resolves to one A record per ready
broker pod, and the DaemonSet runs every broker on the same port. Names are resolved again
every ``refresh_s`` and soon after a broker fails, so brokers can join and leave; a failed
lookup keeps the brokers the last good one gave (a DNS hiccup must not drop live brokers).

The resolver is a plain function ``(name, port) -> [(address, port), ...]`` so tests and
air-gapped hosts replace DNS (``hosts_file_resolver``); there is no clock inside: callers pass
``now``. Pure apart from the default resolver's ``getaddrinfo``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from shardbroker.errors import ConfigError, PublishError

Resolver = Callable[[str, int], list[tuple[str, int]]]

REFRESH_S = 5.0  # re-resolve names this often
FAILURE_REFRESH_S = 0.5  # and this soon after a broker fails (it may have moved)


@dataclass(frozen=True, slots=True)
class Target:
    """One ``--connect`` entry as written."""

    host: str
    port: int

    @property
    def is_address(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """One broker: an address and port (``name`` only says where it came from)."""

    address: str
    port: int
    name: str = field(default="", compare=False)

    @property
    def label(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


def parse_targets(text: str | Sequence[str], key: str = "--connect") -> list[Target]:
    """``"a:1214,b:1214"`` (or a list of such strings) -> targets; a one-line error naming the
    bad entry otherwise."""
    parts = [text] if isinstance(text, str) else list(text)
    entries = [e.strip() for p in parts for e in p.split(",")]
    if not any(entries):
        raise ConfigError(key, "no broker given", hint="e.g. 10.0.0.1:1214,10.0.0.2:1214")
    targets: list[Target] = []
    for e in entries:
        host, sep, port = e.rpartition(":")
        host = host.strip("[]")
        if not e or not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(key, f"{e!r} is not HOST:PORT",
                              hint="e.g. 10.0.0.1:1214, [::1]:1214 or brokers.example:1214")
        t = Target(host, int(port))
        if t not in targets:
            targets.append(t)
    return targets


def system_resolver(name: str, port: int) -> list[tuple[str, int]]:
    """Every stream address ``name`` resolves to, in resolver order, without repeats."""
    infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    out: list[tuple[str, int]] = []
    for info in infos:
        pair = (str(info[4][0]), int(info[4][1]))
        if pair not in out:
            out.append(pair)
    return out


def read_hosts_file(path: str) -> dict[str, list[str]]:
    """hosts(5) format: ``ADDRESS NAME [ALIAS...]`` per line, ``#`` comments. A name on several
    lines has several addresses (unlike the C library, which keeps only the first)."""
    table: dict[str, list[str]] = {}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise ConfigError("--hosts-file", f"cannot read {path}: {exc.strerror}") from exc
    for n, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        try:
            ipaddress.ip_address(words[0])
        except ValueError:
            raise ConfigError("--hosts-file", f"{path}:{n}: {words[0]!r} is not an address",
                              hint="lines are ADDRESS NAME [ALIAS...]") from None
        for name in words[1:]:
            addrs = table.setdefault(name.lower(), [])
            if words[0] not in addrs:
                addrs.append(words[0])
    return table


def hosts_file_resolver(path: str, fallback: Resolver | None = system_resolver) -> Resolver:
    """A resolver that looks names up in ``path`` first (read again at every lookup, so an
    edited file is seen at the next refresh), then in ``fallback``."""

    def resolve(name: str, port: int) -> list[tuple[str, int]]:
        addrs = read_hosts_file(path).get(name.lower())
        if addrs:
            return [(a, port) for a in addrs]
        return fallback(name, port) if fallback is not None else []

    return resolve


@dataclass
class Change:
    added: list[Endpoint]
    removed: list[Endpoint]


class Membership:
    """The current set of broker endpoints, re-resolved on a schedule."""

    def __init__(self, targets: Sequence[Target], resolver: Resolver | None = None,
                 refresh_s: float = REFRESH_S,
                 failure_refresh_s: float = FAILURE_REFRESH_S) -> None:
        if not targets:
            raise ConfigError("--connect", "no broker given")
        self.targets = list(targets)
        self.resolver = resolver or system_resolver
        self.refresh_s = refresh_s
        self.failure_refresh_s = failure_refresh_s
        self.endpoints: list[Endpoint] = []
        self.errors: dict[str, str] = {}  # name -> why its last lookup failed
        self.resolutions = 0
        self._per_target: dict[Target, list[Endpoint]] = {}
        self._next = 0.0

    @property
    def dynamic(self) -> bool:
        """False when every target is an address: nothing to re-resolve."""
        return not all(t.is_address for t in self.targets)

    def start(self, now: float) -> list[Endpoint]:
        """First resolution: every name must give at least one address."""
        self.refresh(now)
        empty = [t for t in self.targets if not self._per_target.get(t)]
        if empty:
            t = empty[0]
            why = self.errors.get(t.host, "no addresses")
            raise PublishError(f"--connect {t.host}:{t.port} resolves to no broker ({why})",
                               hint="check the name (a headless Service needs ready pods) or "
                                    "list brokers as HOST:PORT,HOST:PORT")
        return list(self.endpoints)

    @property
    def next_refresh_at(self) -> float:
        return self._next

    def due(self, now: float) -> bool:
        return self.dynamic and now >= self._next

    def note_failure(self, now: float) -> None:
        """A broker failed: look again soon (it may have moved or left)."""
        self._next = min(self._next, now + self.failure_refresh_s)

    def refresh(self, now: float) -> Change:
        self._next = now + self.refresh_s
        self.resolutions += 1
        for t in self.targets:
            if t.is_address:
                self._per_target[t] = [Endpoint(t.host, t.port, t.host)]
                continue
            try:
                pairs = self.resolver(t.host, t.port)
            except (OSError, UnicodeError, ConfigError) as exc:  # ConfigError: hosts file
                self.errors[t.host] = str(exc) or type(exc).__name__
                continue  # keep what the last good lookup gave
            if not pairs:
                self.errors[t.host] = "no addresses"
                continue
            self.errors.pop(t.host, None)
            self._per_target[t] = [Endpoint(a, p, t.host) for a, p in pairs]
        seen: list[Endpoint] = []
        for t in self.targets:
            for e in self._per_target.get(t, []):
                if e not in seen:
                    seen.append(e)
        old = set(self.endpoints)
        self.endpoints = seen
        return Change([e for e in seen if e not in old],
                      [e for e in old if e not in set(seen)])
