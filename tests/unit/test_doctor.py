"""doctor's classification and checks on synthetic inputs (no broker, no sockets)."""

from __future__ import annotations

import pytest

from shardbroker import doctor


@pytest.mark.parametrize("calls, wakeups, status, word", [
    (16.0, 1.0, doctor.WARN, "syscall"),
    (3.0, 6.0, doctor.WARN, "syscall"),
    (3.0, 0.5, doctor.OK, "copy"),
    (8.0, 2.0, doctor.OK, "copy"),
])
def test_classification(calls: float, wakeups: float, status: str, word: str) -> None:
    f = doctor.classify_receive(calls, wakeups, lowat_cap=0, backend="epoll")
    assert f.status == status and word in f.evidence
    if status == doctor.WARN:
        assert "rcvlowat_cap" in f.fix and "uring" in f.fix
    else:
        assert "NUMA" in f.fix


def test_classification_without_data() -> None:
    assert doctor.classify_receive(None, None, 1 << 20, "epoll").status == doctor.WARN


def test_kernel_buffers_thresholds() -> None:
    values = {"net.core.rmem_max": "4194304", "net.core.wmem_max": str(64 << 20),
              "net.ipv4.tcp_rmem": "4096 131072 33554432", "net.ipv4.tcp_wmem": "4096 1 4096"}
    found = {f.check: f for f in doctor.check_kernel_buffers(values.get)}
    assert found["a.net.core.rmem_max"].status == doctor.WARN
    assert "tune_kernel_buffers.sh --apply" in found["a.net.core.rmem_max"].fix
    assert found["a.net.core.wmem_max"].status == doctor.OK
    assert found["a.net.ipv4.tcp_rmem"].status == doctor.OK
    assert found["a.net.ipv4.tcp_wmem"].status == doctor.WARN


def test_effective_rcvbuf_capped() -> None:
    stats = {"total": {"rcvbuf_min": 8 << 20, "rcvbuf_max": 8 << 20}}
    assert doctor.check_effective_rcvbuf(stats, 32 << 20).status == doctor.WARN
    assert doctor.check_effective_rcvbuf(stats, 0).status == doctor.OK


def test_numa_findings_fail_on_misplaced_receiver() -> None:
    plan = {"nic": "eth9", "nic_node": 1, "cpu_node": 1}
    status = {"receivers": [{"cpu": 4, "allowed_cpus": [4]}, {"cpu": 5, "allowed_cpus": [0, 1]}],
              "segment_placement": {"pages_by_node": {"0": 10, "1": 90},
                                    "planned_memory_node": 1}}
    found = {f.check: f for f in doctor.check_numa(status, plan)}
    assert found["d.nic_node"].status == doctor.OK
    assert found["d.receiver_cpus"].status == doctor.FAIL
    assert found["d.segment_pages"].status == doctor.WARN
    rep = doctor.report(list(found.values()))
    assert rep["ok"] is False
    assert "FAIL" in doctor.render(rep)


def test_each_buffer_limit_names_the_buffer_it_caps() -> None:
    low = {"net.core.rmem_max": "212992", "net.core.wmem_max": "212992"}
    found = {f.check: f for f in doctor.check_kernel_buffers(low.get)}
    assert "SO_RCVBUF" in found["a.net.core.rmem_max"].evidence
    wmem = found["a.net.core.wmem_max"].evidence
    assert "SO_SNDBUF" in wmem and "send buffer" in wmem and "SO_RCVBUF" not in wmem


def test_syscall_bound_fixes_put_uring_last_as_an_experiment() -> None:
    fixes = doctor.classify_receive(16.0, 4.0, lowat_cap=0, backend="epoll").fix.split("; ")
    assert "rcvlowat_cap" in fixes[0]
    assert any("larger batches" in f for f in fixes)
    assert any("more receivers" in f for f in fixes)
    assert "uring" in fixes[-1] and "experiment" in fixes[-1]
    assert not any("uring" in f for f in fixes[:-1])
    # with the cap already set and io_uring running, neither is suggested again
    tuned = doctor.classify_receive(16.0, 4.0, lowat_cap=1 << 20, backend="uring").fix
    assert "rcvlowat_cap" not in tuned and "uring" not in tuned


def test_render_puts_each_fix_on_its_own_line() -> None:
    rep = doctor.report([doctor.classify_receive(16.0, 4.0, lowat_cap=0, backend="epoll")])
    lines = doctor.render(rep).splitlines()
    assert lines[1].lstrip().startswith("fix: set socket.rcvlowat_cap")
    assert len(lines) == 1 + len(rep["findings"][0]["fix"].split("; "))
