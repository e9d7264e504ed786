"""Sizes with units and HOST:PORT addresses, as config values and CLI flags spell them."""

from __future__ import annotations

import re

from shardbroker.errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+)\s*([A-Za-z]*)\s*$")
# Decimal units are powers of 10 and binary units powers of 2, as their names say (IEC 80000-13);
# a bare K/M/G/T is refused rather than guessed. Matched case-insensitively ("mb", "MIB").
_UNITS = {"": 1, "B": 1,
          "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}
_BINARY = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))
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


def format_size(n: int) -> str | int:
    """The shortest exact binary spelling of ``n`` bytes ("512MiB"); plain ``n`` otherwise."""
    for unit, scale in _BINARY:
        if n and n % scale == 0:
            return f"{n // scale}{unit}"
    return n


def parse_hostport(text: str, key: str = "listen") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(key, f"{text!r} is not HOST:PORT", hint="e.g. 127.0.0.1:1214 or [::1]:0")
    return host.strip("[]") or "0.0.0.0", int(port)
