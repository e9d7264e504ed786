"""Every socket option the broker sets, set on a real loopback TCP socket and read back
(or the kernel's refusal recorded), through the same function the receivers use."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from shardbroker.platform import linux


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    c = socket.create_connection(ls.getsockname())
    s, _ = ls.accept()
    ls.close()
    try:
        yield s, c
    finally:
        s.close()
        c.close()


# Raising busy polling needs CAP_NET_ADMIN on some kernels (SO_PREFER_BUSY_POLL on all).
NEEDS_CAP_NET_ADMIN = {"SO_BUSY_POLL", "SO_PREFER_BUSY_POLL"}


def _rmem_max() -> int:
    return int(linux.read_sysctl("net.core.rmem_max") or 0)


def test_rcvbuf_is_doubled_and_capped(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    s, _ = tcp_pair
    got = linux.apply_socket_options(s, {"rcvbuf": 1 << 20})["SO_RCVBUF"]
    assert got.applied == 2 << 20  # the kernel doubles the request for bookkeeping
    big = linux.apply_socket_options(s, {"rcvbuf": 64 << 20})["SO_RCVBUF"]
    assert big.applied == min(64 << 20, _rmem_max()) * 2  # capped by net.core.rmem_max


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_RCVBUFFORCE needs CAP_NET_ADMIN (root)")
def test_rcvbufforce_beats_rmem_max(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    s, _ = tcp_pair
    got = linux.apply_socket_options(s, {"rcvbuf": 32 << 20, "rcvbuf_force": 1})["SO_RCVBUF"]
    assert got.applied == 64 << 20


def test_rcvlowat_reads_back(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    s, _ = tcp_pair
    linux.set_rcvlowat(s, 1 << 20)
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1 << 20


@pytest.mark.parametrize("key, name, value", [
    ("busy_poll_us", "SO_BUSY_POLL", 50),
    ("prefer_busy_poll", "SO_PREFER_BUSY_POLL", 1),
    ("incoming_cpu", "SO_INCOMING_CPU", 0),
    ("nodelay", "TCP_NODELAY", 1),
    ("quickack", "TCP_QUICKACK", 1),
])
def test_option_applied_or_refusal_recorded(tcp_pair: tuple[socket.socket, socket.socket],
                                            key: str, name: str, value: int) -> None:
    s, _ = tcp_pair
    got = linux.apply_socket_options(s, {key: value})[name]
    assert got.requested == value
    if name in NEEDS_CAP_NET_ADMIN and os.geteuid() != 0 and got.applied is None:
        assert got.error  # refused without the capability: the reason is recorded
    else:
        # Any kernel this broker supports grants these (DESIGN.md section 4), and root all.
        assert (got.applied, got.error) == (value, "")


def test_a_refused_option_is_recorded_not_raised(
        tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    s, _ = tcp_pair
    got = linux.apply_socket_options(s, {"busy_poll_us": -1, "nodelay": 1})
    assert got["SO_BUSY_POLL"].applied is None  # the kernel refuses a negative busy poll
    assert "invalid argument" in got["SO_BUSY_POLL"].error.lower()
    assert got["TCP_NODELAY"].applied == 1  # the options after it are still set


def test_reuseport_group_and_incoming_cpu() -> None:
    holder = linux.reuseport_listener("127.0.0.1", 0, None, listen=False)
    port = holder.getsockname()[1]
    a = linux.reuseport_listener("127.0.0.1", port, 0, listen=True)
    b = linux.reuseport_listener("127.0.0.1", port, 1, listen=True)
    try:
        for x in (a, b):
            assert x.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        assert a.getsockopt(socket.SOL_SOCKET, linux.SO_INCOMING_CPU) == 0
        assert b.getsockopt(socket.SOL_SOCKET, linux.SO_INCOMING_CPU) == 1
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        c.close()
    finally:
        for x in (holder, a, b):
            x.close()
