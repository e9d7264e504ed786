"""The one table of raw syscall numbers: every architecture it names has every call the
platform layer makes, and an architecture it does not know is refused, never guessed."""

from __future__ import annotations

import os

import pytest

from shardbroker.errors import PlatformError
from shardbroker.platform import linux, syscalls

CALLS = ("mbind", "futex", "io_uring_setup", "io_uring_enter", "io_uring_register")


@pytest.mark.parametrize("machine", sorted(syscalls.BY_MACHINE))
def test_every_architecture_has_every_call(machine: str) -> None:
    numbers = {c: syscalls.require(c, machine) for c in CALLS}
    assert len(set(numbers.values())) == len(CALLS), numbers


def test_numbers_of_x86_64() -> None:
    assert [syscalls.number(c, "x86_64") for c in CALLS] == [237, 202, 425, 426, 427]


def test_an_unknown_architecture_is_refused() -> None:
    assert syscalls.number("mbind", "vax") is None
    with pytest.raises(PlatformError, match="no syscall number for mbind on vax"):
        syscalls.require("mbind", "vax")


def test_futex_support_follows_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    assert linux.futex_supported() == (os.uname().machine in syscalls.BY_MACHINE)
    monkeypatch.setattr(syscalls, "BY_MACHINE", {})
    assert not linux.futex_supported()
