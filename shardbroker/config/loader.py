"""Built-in defaults <- TOML file (conf/broker.toml) <- CLI flags, checked against the schema.

Every refusal is one line naming the key, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shardbroker.config.schema import FROM_FLAG, Config, Key, keys, sections
from shardbroker.config.units import parse_hostport, parse_size
from shardbroker.errors import ConfigError

Overrides = dict[str, dict[str, Any]]


def load(path: str | Path | None = None, overrides: Overrides | None = None) -> Config:
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
                              hint=f"sections: {', '.join(n for n, _ in sections())}")
        if not isinstance(values, dict):
            raise ConfigError(section, "must be a table")
        _apply_section(target, section, values)
    return validate(cfg)


def _apply_section(obj: Any, section: str, values: dict[str, Any]) -> None:
    known = {f.name: (f, k) for f, k in keys(type(obj))}
    for name, value in values.items():
        dotted = f"{section}.{name}"
        if name not in known:
            raise ConfigError(dotted, "unknown key", hint=f"known keys: {', '.join(sorted(known))}")
        _field, meta = known[name]
        setattr(obj, name, _checked(dotted, meta, type(getattr(obj, name)), value))


def _checked(dotted: str, meta: Key, expected: type, value: Any) -> Any:
    """``value`` for ``dotted`` as its type, or ConfigError saying what is allowed."""
    if meta.size:
        value = parse_size(value, dotted)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(dotted, f"{value!r} is a {type(value).__name__}, "
                                  f"expected {expected.__name__}")
    if isinstance(value, float) and not math.isfinite(value):  # nan compares false to any bound
        raise ConfigError(dotted, f"{value!r} is not a finite number", hint=meta.hint)
    if meta.choices and value not in meta.choices:
        raise ConfigError(dotted, f"{value!r} is not allowed",
                          hint=f"use one of {', '.join(meta.choices)}")
    lo, hi = meta.minimum, meta.maximum
    number: float = value if isinstance(value, int | float) else 0.0
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        allowed = (f"{lo:g}..{hi:g}" if lo is not None and hi is not None
                   else f">= {lo:g}" if lo is not None else f"<= {hi:g}")
        raise ConfigError(dotted, f"{value!r} is out of range (allowed: {allowed})",
                          hint=meta.hint)
    return value


def validate(cfg: Config) -> Config:
    """What one key's schema cannot say: formats and combinations of keys."""
    parse_hostport(cfg.broker.listen, "broker.listen")
    if cfg.metrics.prometheus:
        parse_hostport(cfg.metrics.prometheus, "metrics.prometheus")
    b, s, lim = cfg.broker, cfg.segment, cfg.limits
    if b.max_threads and b.max_threads < b.threads:
        raise ConfigError("broker.max_threads", f"{b.max_threads} is below broker.threads "
                          f"({b.threads})", hint="use 0 (the CPUs) or at least broker.threads")
    if 0 < b.heartbeat_timeout_s < 1:
        raise ConfigError("broker.heartbeat_timeout_s", f"{b.heartbeat_timeout_s} is below 1 s",
                          hint="use 0 (no watchdog) or at least 1 (receivers beat every 0.5 s)")
    if s.blog_bytes_per_shard % 4096:
        raise ConfigError("segment.blog_bytes_per_shard",
                          f"{s.blog_bytes_per_shard} is not a multiple of 4096")
    if lim.max_batch_bytes * 2 > s.blog_bytes_per_shard:
        raise ConfigError(
            "limits.max_batch_bytes",
            f"{lim.max_batch_bytes} is more than half of segment.blog_bytes_per_shard "
            f"({s.blog_bytes_per_shard})",
            hint="raise segment.blog_bytes_per_shard or lower limits.max_batch_bytes")
    if cfg.socket.readahead * 2 > s.blog_bytes_per_shard:  # one read's run of batches
        raise ConfigError(
            "socket.readahead",
            f"{cfg.socket.readahead} is more than half of segment.blog_bytes_per_shard "
            f"({s.blog_bytes_per_shard})",
            hint="raise segment.blog_bytes_per_shard or lower socket.readahead")
    for cidr in lim.allow_cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ConfigError("limits.allow_cidrs", f"{cidr!r} is not a network",
                              hint="write e.g. 10.0.0.0/8 or 2001:db8::/32") from exc
    return cfg


def overrides_from_flags(flags: Mapping[str, Any]) -> Overrides:
    """The config keys ``shardbroker run``'s flags set (argparse dests -> values), as the
    schema's ``flags`` say. A flag not given (None, False or "") sets nothing."""
    out: Overrides = {}
    for section, cls in sections():
        for f, meta in keys(cls):
            for flag in meta.flags:
                given = flags.get(flag)
                if given is None or given is False or given == "":
                    continue
                value = given if meta.flag_value is FROM_FLAG else meta.flag_value
                out.setdefault(section, {})[f.name] = value
    return out


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
