"""One typed configuration: built-in defaults <- TOML file (conf/broker.toml) <- CLI flags."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardbroker.errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+)\s*([A-Za-z]*)\s*$")
# Decimal units are powers of 10 and binary units powers of 2, as their names say (IEC 80000-13);
# a bare K/M/G/T is refused rather than guessed. Matched case-insensitively ("mb", "MIB").
_UNITS = {"": 1, "B": 1,
          "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}
SIZE_UNITS_HINT = ("write bytes or a unit: decimal kB, MB, GB, TB (10^3..10^12) or "
                   "binary KiB, MiB, GiB, TiB (2^10..2^40), e.g. 4096, 64KiB, 2MiB, 1GB")


def parse_size(text: str | int, key: str = "size") -> int:
    """'2MiB' -> 2097152, '2MB' -> 2000000, '4096' -> 4096 (see ``_UNITS``)."""
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(key, f"{text} is negative")
        return text
    m = _SIZE.match(text)
    unit = m.group(2).upper() if m else ""
    if m and unit in ("K", "M", "G", "T"):
        n, power = m.group(1), "KMGT".index(unit) + 1
        decimal = "kB" if unit == "K" else unit + "B"
        raise ConfigError(key, f"{text!r} is ambiguous", hint=f"write {n}{decimal} ({n} x 10^"
                          f"{3 * power}) or {n}{unit}iB ({n} x 2^{10 * power})")
    if not m or unit not in _UNITS:
        raise ConfigError(key, f"{text!r} is not a size", hint=SIZE_UNITS_HINT)
    return int(m.group(1)) * _UNITS[unit]


def parse_hostport(text: str, key: str = "listen") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(key, f"{text!r} is not HOST:PORT", hint="e.g. 127.0.0.1:1214 or [::1]:0")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass
class BrokerConfig:
    listen: str = "127.0.0.1:1214"
    threads: int = 0  # 0: one receiver per CPU this process may run on
    max_threads: int = 0  # shards in the segment = most receivers `scale` may run; 0: CPUs
    broker_id: int = 0
    # auto | epoll | uring (receiver/backend.py). epoll stays the default: measured on the
    # 2-vCPU loopback hosts, io_uring receive cost more receiver CPU per GB than epoll+lowat.
    backend: str = "epoll"
    pin_cpus: bool = True
    nic: str = ""  # interface publishers arrive on ("" = the default route's); sets the NUMA node
    reserve_cpus: int = 0  # first CPUs of the NIC's node left to the supervisor and IRQs
    numactl: bool = False  # start receivers under numactl --cpunodebind/--membind
    accept: str = "supervisor"  # supervisor (fd hand-off) | reuseport (per-receiver listeners)
    restart_backoff_s: float = 0.2
    # More receivers than CPUs only on request: they would share CPUs (busy loops halve each
    # other), and a typo such as --threads 999 would spawn that many processes.
    oversubscribe: bool = False


@dataclass
class SegmentConfig:
    name: str = ""  # "" -> shardbroker-<pid>
    pbr_slots: int = 16384
    blog_bytes_per_shard: int = 512 << 20
    prefault: bool = True
    keep: bool = False
    recover: bool = False  # re-attach an existing segment (after a crash) instead of creating
    mode: int = 0o600
    group: str = ""  # give this group read access to the segment (mode 0640); "" = owner only
    memory_node: int = -1  # NUMA node for the segment's pages; -1 = the receivers' node
    hugepages: str = "off"  # off | thp | hugetlbfs
    hugetlbfs_mount: str = "/dev/hugepages"
    retention: str = "overwrite"  # overwrite | block (keep what live consumers have not read)
    consumer_timeout_s: float = 10.0  # a consumer silent this long stops holding data back
    # (below publishers' 30 s ack timeout, so an expired consumer releases them in time)


BACKENDS = ("auto", "epoll", "uring")  # receiver/backend.py chooses among them


@dataclass
class SocketConfig:
    rcvbuf: int = 0  # 0: leave kernel autotuning on (it grows to tcp_rmem[2])
    rcvbuf_force: bool = False
    rcvlowat_cap: int = 1 << 20  # 0 disables SO_RCVLOWAT
    # Per-connection read-ahead buffer: one recv takes many small batches at once.
    readahead: int = 256 << 10
    # Payloads of this size or more are received straight into the segment; smaller ones
    # are carved out of the read-ahead buffer and copied (one memmove each).
    direct_min: int = 128 << 10
    quickack: bool = True
    nodelay: bool = True
    busy_poll_us: int = 0  # SO_BUSY_POLL; 0 = off
    prefer_busy_poll: bool = False  # SO_PREFER_BUSY_POLL
    incoming_cpu: bool = False  # SO_INCOMING_CPU = the receiver's CPU on accepted sockets


@dataclass
class LimitsConfig:
    max_batch_bytes: int = 16 << 20
    max_messages_per_batch: int = 10_000
    max_message_bytes: int = 1 << 20
    validate_payload: bool = False
    # Publisher networks allowed to connect (checked at accept); anything else is refused.
    allow_cidrs: list[str] = field(default_factory=lambda: ["0.0.0.0/0", "::/0"])
    max_connections_per_receiver: int = 4096
    max_connections_per_source: int = 1024  # per source IP address, across receivers
    handshake_timeout_s: float = 10.0  # a connection must complete its handshake by then
    idle_timeout_s: float = 300.0  # no byte for this long closes a connection (0 = never)
    batch_timeout_s: float = 60.0  # a batch must arrive in full within this (0 = never)


@dataclass
class MetricsConfig:
    interval_s: float = 1.0  # receivers send a snapshot this often; 0 turns metrics off
    prometheus: str = ""  # HOST:PORT for an HTTP /metrics endpoint; "" = off


@dataclass
class ControlConfig:
    endpoint: str = ""  # "" = ipc:// in the runtime directory; tcp://HOST:PORT on request
    curve_secret_key_file: str = ""  # zmq CURVE server secret key (required off loopback)


@dataclass
class LogConfig:
    level: str = "info"
    format: str = "auto"  # auto | json | console


@dataclass
class Config:
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    socket: SocketConfig = field(default_factory=SocketConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> Config:
        parse_hostport(self.broker.listen, "broker.listen")
        if self.broker.threads < 0:
            raise ConfigError("broker.threads", "must be >= 0 (0 = one per allowed CPU)")
        if not 0 <= self.broker.broker_id < (1 << 16):
            raise ConfigError("broker.broker_id", "must fit 16 bits (it tops batch_id)")
        if self.socket.readahead < 4096:
            raise ConfigError("socket.readahead", f"{self.socket.readahead} is below 4096",
                              hint="use at least 4KiB (default 256KiB)")
        if self.socket.direct_min < 1:
            raise ConfigError("socket.direct_min", "must be at least 1",
                              hint="default 128KiB; payloads this large go straight to the log")
        if self.broker.backend not in BACKENDS:
            raise ConfigError("broker.backend", f"{self.broker.backend!r} is not a backend",
                              hint="use 'auto' (io_uring if this kernel allows it, else epoll), "
                                   "'epoll' or 'uring'")
        s = self.segment
        if s.pbr_slots < 2:
            raise ConfigError("segment.pbr_slots", "must be >= 2")
        if s.blog_bytes_per_shard < (1 << 20) or s.blog_bytes_per_shard % 4096:
            raise ConfigError("segment.blog_bytes_per_shard",
                              "must be >= 1MiB and a multiple of 4096")
        lim = self.limits
        if lim.max_batch_bytes * 2 > s.blog_bytes_per_shard:
            raise ConfigError(
                "limits.max_batch_bytes",
                f"{lim.max_batch_bytes} is more than half of segment.blog_bytes_per_shard "
                f"({s.blog_bytes_per_shard})",
                hint="raise segment.blog_bytes_per_shard or lower limits.max_batch_bytes",
            )
        if lim.max_batch_bytes < 64:
            raise ConfigError("limits.max_batch_bytes", "must be >= 64")
        for cidr in lim.allow_cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ConfigError("limits.allow_cidrs", f"{cidr!r} is not a network",
                                  hint="write e.g. 10.0.0.0/8 or 2001:db8::/32") from exc
        if lim.max_connections_per_receiver < 1 or lim.max_connections_per_source < 1:
            raise ConfigError("limits", "connection caps must be >= 1")
        if min(lim.handshake_timeout_s, lim.idle_timeout_s, lim.batch_timeout_s) < 0:
            raise ConfigError("limits", "timeouts must be >= 0 (0 = no timeout)")
        if not 1 <= lim.max_messages_per_batch <= 1_000_000:
            raise ConfigError("limits.max_messages_per_batch", "must be within 1..1000000")
        if self.socket.rcvlowat_cap < 0 or self.socket.rcvbuf < 0:
            raise ConfigError("socket", "sizes must be >= 0")
        if self.broker.accept not in ("supervisor", "reuseport"):
            raise ConfigError("broker.accept", f"{self.broker.accept!r} is not an accept mode",
                              hint="use 'supervisor' or 'reuseport'")
        if self.broker.reserve_cpus < 0:
            raise ConfigError("broker.reserve_cpus", "must be >= 0")
        if self.segment.hugepages not in ("off", "thp", "hugetlbfs"):
            raise ConfigError("segment.hugepages", f"{self.segment.hugepages!r} is not a mode",
                              hint="use off, thp or hugetlbfs")
        if self.segment.retention not in ("overwrite", "block"):
            raise ConfigError("segment.retention", f"{self.segment.retention!r} is not a policy",
                              hint="use overwrite (the rings keep the newest data) or block "
                                   "(publishers wait for the slowest live consumer)")
        if not 0.1 <= self.segment.consumer_timeout_s <= 86_400:
            raise ConfigError("segment.consumer_timeout_s", "must be within 0.1..86400 seconds")
        if self.socket.busy_poll_us < 0:
            raise ConfigError("socket.busy_poll_us", "must be >= 0")
        if self.metrics.interval_s < 0:
            raise ConfigError("metrics.interval_s", "must be >= 0 (0 turns metrics off)")
        if self.metrics.prometheus:
            parse_hostport(self.metrics.prometheus, "metrics.prometheus")
        if self.broker.max_threads and self.broker.max_threads < self.broker.threads:
            raise ConfigError("broker.max_threads", "must be >= broker.threads (or 0)")
        if self.log.format not in ("auto", "json", "console"):
            raise ConfigError("log.format", "must be auto, json or console")
        return self


_SIZE_KEYS = {
    ("segment", "blog_bytes_per_shard"), ("socket", "rcvbuf"), ("socket", "rcvlowat_cap"),
    ("socket", "readahead"), ("socket", "direct_min"),
    ("limits", "max_batch_bytes"), ("limits", "max_message_bytes"),
}


def _apply_section(obj: Any, section: str, values: dict[str, Any]) -> None:
    known = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{section}.{key}", "unknown key",
                              hint=f"known keys: {', '.join(sorted(known))}")
        if (section, key) in _SIZE_KEYS:
            value = parse_size(value, f"{section}.{key}")
        expected = type(getattr(obj, key))
        if expected is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"{section}.{key}",
                              f"expected {expected.__name__}, got {type(value).__name__}")
        setattr(obj, key, value)


def load(path: str | Path | None = None, overrides: dict[str, dict[str, Any]] | None = None
         ) -> Config:
    cfg = Config()
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError as exc:
            raise ConfigError("--config", f"{path} does not exist",
                              hint="see conf/broker.toml for an example") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from exc
    for section, values in list(data.items()) + list((overrides or {}).items()):
        target = getattr(cfg, section, None)
        if target is None or not dataclasses.is_dataclass(target):
            raise ConfigError(section, "unknown section",
                              hint="sections: broker, segment, socket, limits, metrics, "
                                   "control, log")
        if not isinstance(values, dict):
            raise ConfigError(section, "must be a table")
        _apply_section(target, section, values)
    return cfg.validate()


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
