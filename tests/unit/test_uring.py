"""The in-tree io_uring (platform/uring.py) on socketpairs, and the pure parts of the uring
receive loop. Skipped where this kernel or sandbox refuses io_uring (the probe says why)."""

from __future__ import annotations

import ctypes
import errno
import mmap
import socket
import time
from collections.abc import Iterator

import pytest

from shardbroker.platform import uring as u

PROBE = u.probe_ring()
needs_uring = pytest.mark.skipif(not PROBE.ok, reason=f"io_uring unavailable: {PROBE.reason}")


@pytest.fixture
def ring() -> Iterator[u.Ring]:
    r = u.Ring(16, cq_entries=64)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def reap_until(ring: u.Ring, n: int, timeout_s: float = 5.0) -> list[tuple[int, int, int]]:
    """Enter/reap until ``n`` completions came (bounded)."""
    out: list[tuple[int, int, int]] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        ring.enter(0.05)
        out += ring.reap()
    return out


# --------------------------------------------------------------------------- probe


def test_disable_knob_goes_through_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(u.DISABLE_ENV, "1")
    p = u.probe_ring()
    assert not p.ok
    assert u.DISABLE_ENV in p.reason and "io_uring_disabled" in p.reason
    ok, why = u.probe()
    assert not ok and why == p.reason
    err = u.unavailable_error(p)
    assert "backend 'uring' cannot start" in str(err) and "--backend" in str(err)
    assert "\n" not in str(err)


@needs_uring
def test_probe_reports_what_the_loop_uses() -> None:
    ok, why = u.probe()
    assert ok and "io_uring available" in why
    assert PROBE.features & u.IORING_FEAT_EXT_ARG
    assert "SINGLE_ISSUER" in PROBE.setup_flag_names or PROBE.setup_flags == 0


# --------------------------------------------------------------------------- ring


@needs_uring
def test_nop_round_trip(ring: u.Ring) -> None:
    ring.prep_nop(1)
    ring.prep_nop(2)
    assert ring.pending == 2
    ring.enter(1.0, min_complete=2)
    assert ring.pending == 0
    assert sorted(ring.reap()) == [(1, 0, 0), (2, 0, 0)]
    assert ring.reap() == []


@needs_uring
def test_enter_times_out_without_completions(ring: u.Ring) -> None:
    t0 = time.monotonic()
    ring.enter(0.05)
    assert 0.03 < time.monotonic() - t0 < 2.0
    assert ring.reap() == []


@needs_uring
def test_recv_into_bytearray(ring: u.Ring, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    buf = bytearray(32)
    ring.prep_recv(a.fileno(), u.buffer_address(buf, 4), 10, 77)
    ring.submit()
    b.sendall(b"0123456789")
    (ud, res, _flags), = reap_until(ring, 1)
    assert (ud, res) == (77, 10)
    assert bytes(buf[4:14]) == b"0123456789" and bytes(buf[:4]) == bytes(4)


@needs_uring
def test_recv_into_a_shared_mapping_at_an_offset(
        ring: u.Ring, pair: tuple[socket.socket, socket.socket]) -> None:
    """What the receive path does: the target is an address inside an mmap."""
    a, b = pair
    mm = mmap.mmap(-1, 1 << 16)
    try:
        base = u.buffer_address(mm)
        ring.prep_recv(a.fileno(), base + 40960, 5000, 5)
        ring.submit()
        payload = bytes(range(256)) * 20
        b.sendall(payload[:5000])
        assert reap_until(ring, 1)[0][:2] == (5, 5000)
        assert mm[40960:45960] == payload[:5000]
        assert mm[40959] == 0 and mm[45960] == 0
    finally:
        mm.close()  # no export is left behind by buffer_address


@needs_uring
def test_waitall_completes_whole_and_short_on_eof(
        ring: u.Ring, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    buf = bytearray(100)
    addr = u.buffer_address(buf)
    ring.prep_recv(a.fileno(), addr, 100, 1)
    ring.submit()
    b.sendall(b"x" * 60)
    assert reap_until(ring, 1, timeout_s=0.2) == []  # MSG_WAITALL: 60 of 100 is not done
    b.sendall(b"y" * 40)
    assert reap_until(ring, 1)[0][:2] == (1, 100)
    # short completion: the peer goes away after 30 of 100 bytes
    ring.prep_recv(a.fileno(), addr, 100, 2)
    ring.submit()
    b.sendall(b"z" * 30)
    b.shutdown(socket.SHUT_WR)
    (ud, res, _f), = reap_until(ring, 1)
    assert (ud, res) == (2, 30)
    # the caller resubmits the remainder; EOF now reads as 0
    ring.prep_recv(a.fileno(), addr + 30, 70, 3)
    assert reap_until(ring, 1)[0][:2] == (3, 0)


@needs_uring
def test_cancel_by_user_data_and_by_fd(ring: u.Ring,
                                       pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    buf = bytearray(8)
    ring.prep_recv(a.fileno(), u.buffer_address(buf), 8, 10)
    ring.submit()
    ring.prep_cancel(10, 11)
    got = dict((ud, res) for ud, res, _ in reap_until(ring, 2))
    assert got == {10: -errno.ECANCELED, 11: 0}
    ring.prep_poll_add(b.fileno(), u.POLLIN, 20)
    ring.submit()
    ring.prep_cancel_fd(b.fileno(), 21)
    got = dict((ud, res) for ud, res, _ in reap_until(ring, 2))
    assert got == {20: -errno.ECANCELED, 21: 1}  # CANCEL_ALL reports how many it cancelled


@needs_uring
def test_poll_add_reports_readiness(ring: u.Ring, pair: tuple[socket.socket, socket.socket],
                                    ) -> None:
    a, b = pair
    ring.prep_poll_add(a.fileno(), u.POLLIN, 30)
    ring.submit()
    assert reap_until(ring, 1, timeout_s=0.1) == []
    b.send(b"!")
    (ud, res, _f), = reap_until(ring, 1)
    assert ud == 30 and res & u.POLLIN


@needs_uring
def test_a_full_sq_ring_is_submitted_on_the_way(ring: u.Ring) -> None:
    for i in range(ring.sq_entries * 3):
        ring.prep_nop(i)
    assert ring.pending <= ring.sq_entries
    got = reap_until(ring, ring.sq_entries * 3)
    assert sorted(ud for ud, _, _ in got) == list(range(ring.sq_entries * 3))


@needs_uring
def test_failed_skip_success_link_member_posts_the_only_completion(
        ring: u.Ring, pair: tuple[socket.socket, socket.socket]) -> None:
    """The loop relies on this: a CQE_SKIP_SUCCESS member that fails posts its completion and
    the links it cancels post none."""
    a, b = pair
    buf = bytearray(200)
    addr = u.buffer_address(buf)
    link = u.IOSQE_IO_LINK | u.IOSQE_CQE_SKIP_SUCCESS
    ring.prep_recv(a.fileno(), addr, 100, 1, sqe_flags=link)
    ring.prep_recv(a.fileno(), addr + 100, 50, 2, sqe_flags=u.IOSQE_IO_LINK)
    ring.prep_recv(a.fileno(), addr + 150, 50, 3)
    ring.submit()
    b.sendall(b"q" * 160)  # member 1 done (silently), member 2 done, member 3 waits
    assert reap_until(ring, 1)[0][:2] == (2, 50)
    b.shutdown(socket.SHUT_WR)
    assert [x[:2] for x in reap_until(ring, 1)] == [(3, 10)]
    # first member fails: one completion only
    a2, b2 = socket.socketpair()
    try:
        ring.prep_recv(a2.fileno(), addr, 100, 4, sqe_flags=link)
        ring.prep_recv(a2.fileno(), addr + 100, 50, 5, sqe_flags=link)
        ring.prep_recv(a2.fileno(), addr + 150, 50, 6)
        ring.submit()
        b2.sendall(b"r" * 70)
        b2.shutdown(socket.SHUT_WR)
        got = reap_until(ring, 1)
        got += reap_until(ring, 3, timeout_s=0.2)
        assert [x[:2] for x in got] == [(4, 70)]
    finally:
        a2.close()
        b2.close()


@needs_uring
def test_close_releases_the_rings() -> None:
    r = u.Ring(8)
    fd = r.fd
    r.close()
    assert r.fd == -1
    with pytest.raises(OSError):
        import os

        os.fstat(fd)
    r.close()  # idempotent


def test_buffer_address_leaves_no_export() -> None:
    mm = mmap.mmap(-1, 4096)
    addr = u.buffer_address(mm, 100)
    assert addr == u.buffer_address(mm) + 100
    assert ctypes.c_char.from_address(addr).value == b"\0"
    mm.close()  # BufferError here would mean an export was left behind
