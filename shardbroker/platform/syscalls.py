"""Raw syscall numbers, per CPU architecture, in one table: the calls glibc (or Python) has no
wrapper for. A number this table lacks is refused with a clear error, never guessed.

io_uring's calls came after the unified numbering (Linux 5.1): the same number everywhere.
"""

from __future__ import annotations

import errno
import os

from shardbroker.errors import PlatformError

UNIFIED = {"io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427}

BY_MACHINE: dict[str, dict[str, int]] = {
    "x86_64": {"mbind": 237, "futex": 202},
    "aarch64": {"mbind": 235, "futex": 98},
    "riscv64": {"mbind": 235, "futex": 98},
    "ppc64le": {"mbind": 259, "futex": 221},
    "s390x": {"mbind": 268, "futex": 238},
}


def number(name: str, machine: str | None = None) -> int | None:
    """The syscall number of ``name`` on ``machine`` (default: this one); None if unknown."""
    table = BY_MACHINE.get(machine or os.uname().machine)
    if table is None:
        return None
    return table.get(name, UNIFIED.get(name))


def require(name: str, machine: str | None = None) -> int:
    nr = number(name, machine)
    if nr is None:
        machine = machine or os.uname().machine
        raise PlatformError(name, errno.ENOSYS,
                            f"no syscall number for {name} on {machine}",
                            hint=f"add {machine}'s number to shardbroker/platform/syscalls.py")
    return nr
