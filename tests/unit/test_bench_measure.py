"""/proc parsers of the bench, on a fake /proc tree."""

from __future__ import annotations

from pathlib import Path

from shardbroker.bench import measure

STAT = ("4242 (python3 -m x) S 1 4242 4242 0 -1 4194560 100 0 0 0 "
        "250 50 0 0 20 0 3 0 100 1000 100 18446744073709551615\n")


def _status(vol: int, anon: int = 0, file: int = 0, shmem: int = 0) -> str:
    return (f"Name:\tpython3\nVmRSS:\t{anon + file + shmem} kB\nRssAnon:\t{anon} kB\n"
            f"RssFile:\t{file} kB\nRssShmem:\t{shmem} kB\nvoluntary_ctxt_switches:\t{vol}\n"
            "nonvoluntary_ctxt_switches:\t5\n")


def fake_proc(root: Path) -> str:
    p = root / "4242"
    (p / "task" / "4242").mkdir(parents=True)
    (p / "task" / "4243").mkdir(parents=True)
    (p / "stat").write_text(STAT)
    (p / "status").write_text(_status(10, anon=20480, file=10240, shmem=262144))
    (p / "task" / "4242" / "status").write_text(_status(10))
    (p / "task" / "4243" / "status").write_text(_status(32))
    (root / "stat").write_text("cpu  100 10 50 800 40 5 5 0 0 0\ncpu0 1 2 3 4 5 6 7 8\n")
    (root / "net").mkdir()
    (root / "net" / "tcp").write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue\n"
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000\n"
        "   1: 0100007F:1F91 0100007F:D431 01 00000000:00000000\n")
    (root / "net" / "tcp6").write_text(
        "  sl  local_address rem_address st\n"
        "   0: 00000000000000000000000000000000:1092 00000000000000000000000000000000:0000 0A\n")
    (root / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Fake CPU 9000\n")
    (root / "meminfo").write_text("MemTotal:       2097152 kB\n")
    return str(root)


def test_process_cpu_and_switches(tmp_path: Path) -> None:
    root = fake_proc(tmp_path)
    assert measure.process_cpu_s(4242, root, tck=100) == 3.0  # (250 + 50) / 100
    assert measure.voluntary_switches(4242, root) == 42  # summed over threads
    assert measure.process_cpu_s(999, root, tck=100) == 0.0  # gone: zero, no error
    assert measure.voluntary_switches(999, root) == 0


def test_rss_split_private_and_shmem(tmp_path: Path) -> None:
    root = fake_proc(tmp_path)
    assert measure.private_rss_mib(4242, root) == 30.0
    assert measure.shmem_rss_mib(4242, root) == 256.0
    assert measure.private_rss_mib(999, root) == 0.0


def test_machine_cpu(tmp_path: Path) -> None:
    root = fake_proc(tmp_path)
    m = measure.machine_cpu(root, tck=100)
    assert m.busy_s == 1.7  # user+nice+system+irq+softirq+steal = 170 ticks
    assert m.total_s == 10.1  # + idle + iowait


def test_snapshot_usage(tmp_path: Path) -> None:
    root = fake_proc(tmp_path)
    a = measure.snapshot([4242], root)
    b = measure.Snapshot(a.cpu_s + 1.5, a.switches + 7, a.machine_busy_s + 4.0)
    u = measure.usage(a, b)
    assert (u.receiver_cpu_s, u.receiver_switches, u.machine_cpu_s) == (1.5, 7, 4.0)


def test_listening_ports(tmp_path: Path) -> None:
    assert measure.listening_ports(fake_proc(tmp_path)) == {0x1F90, 0x1092}


def test_machine_info(tmp_path: Path) -> None:
    info = measure.machine_info(fake_proc(tmp_path))
    assert info["cpu_model"] == "Fake CPU 9000"
    assert info["memory_gib"] == 2.0
    assert info["kernel"] and info["python"]


def test_rss_sampler_peak(tmp_path: Path) -> None:
    root = fake_proc(tmp_path)
    with measure.RssSampler([4242], interval_s=0.01, root=root) as s:
        pass
    assert s.peak_mib == 30.0


def test_self_usage_counts_own_cpu() -> None:
    a = measure.SelfUsage.now()
    sum(i * i for i in range(200_000))
    d = measure.SelfUsage.now().since(a)
    assert d["cpu_s"] > 0 and d["switches"] >= 0
