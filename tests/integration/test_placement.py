"""NUMA placement applied and read back, socket-option modes, huge pages, doctor — against a
real broker. This machine has one NUMA node: multi-node logic is covered on fake sysfs trees
(tests/unit/test_topology.py); here the plan, the pinning and the page placement are checked
for real on node 0."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import pytest

from shardbroker.control import client
from shardbroker.platform import linux
from shardbroker.publisher import loadgen
from shardbroker.publisher.batches import BatchGeometry

from .conftest import BrokerFactory, verify_segment, wait_for

pytestmark = pytest.mark.integration
GEOM = BatchGeometry.for_batch(2 << 20, 1024)


def _load(b: Any, total: int = 64 << 20, connections: int = 4) -> dict[str, Any]:
    spec = loadgen.LoadSpec(host=b.host, port=b.port, connections=connections,
                            batch_bytes=2 << 20, message_size=1024, total_bytes=total)
    return loadgen.run(spec, timeout_s=120)


def test_receivers_and_segment_where_the_plan_says(broker: BrokerFactory) -> None:
    b = broker()
    st = client.request(b.ready["control"], "status")
    plan = st["placement"]
    assert [r["cpu"] for r in st["receivers"]] == plan["receiver_cpus"][:2]
    for r in st["receivers"]:  # read back from /proc/PID/status
        assert r["allowed_cpus"] == [r["cpu"]]
        assert linux.read_allowed_cpus(r["pid"]) == [r["cpu"]]
    pages = st["segment_placement"]["pages_by_node"]  # read back from numa_maps
    assert pages and set(pages) == {str(plan["memory_node"])}
    assert sum(pages.values()) * 4096 >= b.ready["segment_bytes"]


@pytest.mark.skipif(shutil.which("numactl") is None,
                    reason="numactl not installed (apt-get install numactl)")
def test_receivers_under_numactl(tmp_path: Any, broker: BrokerFactory) -> None:
    cfg = tmp_path / "b.toml"
    cfg.write_text("[broker]\nnumactl = true\n")
    b = broker("--config", str(cfg))
    for pid in b.receiver_pids():
        with open(f"/proc/{pid}/numa_maps") as f:
            assert "bind:0" in f.read()  # membind policy from numactl
    res = _load(b)
    assert not res["errors"]


def test_reuseport_accept_mode_streams(tmp_path: Any, broker: BrokerFactory) -> None:
    cfg = tmp_path / "b.toml"
    cfg.write_text('[broker]\naccept = "reuseport"\n[socket]\nincoming_cpu = true\n')
    b = broker("--config", str(cfg))
    res = _load(b, 128 << 20)
    assert not res["errors"]
    report = verify_segment(b.segment, res["publishers"], GEOM)
    assert report.ok, report.problems
    ctl = b.ready["control"]
    wait_for(lambda: client.request(ctl, "stats")["total"]["batches"] == res["batches"], 10,
             "metrics")
    st = client.request(ctl, "stats")
    applied = [s["socket_options"].get("SO_INCOMING_CPU") for s in st["shards"].values()]
    assert any(a and a["applied"] == a["requested"] for a in applied)  # read back


def test_thp_mode_reports_kernel_setting(tmp_path: Any, broker: BrokerFactory) -> None:
    cfg = tmp_path / "b.toml"
    cfg.write_text('[segment]\nhugepages = "thp"\n')
    b = broker("--config", str(cfg))
    seg = client.request(b.ready["control"], "status")["segment_placement"]
    assert seg["hugepages"] == "thp"
    with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
        assert seg["thp_mode"] == f.read().strip()


def test_hugetlbfs_without_pages_is_a_clear_error(tmp_path: Any) -> None:
    if linux.hugepages_free() > 0:
        pytest.skip("huge pages are reserved on this machine; the error path cannot show")
    cfg = tmp_path / "b.toml"
    cfg.write_text(f'[segment]\nhugepages = "hugetlbfs"\nhugetlbfs_mount = "{tmp_path}"\n')
    out = subprocess.run([sys.executable, "-m", "shardbroker", "run", "--config", str(cfg),
                          "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "huge pages" in out.stderr and "reserve_hugepages.sh" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting hugetlbfs and reserving pages needs root")
def test_hugetlbfs_segment_round_trip(broker: BrokerFactory) -> None:
    nr = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
    with open(nr) as f:
        before = int(f.read())
    mnt = tempfile.mkdtemp(prefix="sb-hugetlbfs-")
    mounted = False
    try:
        with open(nr, "w") as f:
            f.write(str(before + 300))
        if linux.hugepages_free() < 290:
            pytest.skip("the kernel could not reserve 300 huge pages (fragmented memory)")
        subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "none", mnt],
                       check=True, timeout=10)
        mounted = True
        cfg = os.path.join(mnt, "..", os.path.basename(mnt) + ".toml")
        with open(cfg, "w") as f:
            f.write(f'[segment]\nhugepages = "hugetlbfs"\nhugetlbfs_mount = "{mnt}"\n')
        b = broker("--config", cfg, blog="64MiB")
        assert b.segment.startswith(mnt)
        res = _load(b, 32 << 20, connections=2)
        assert not res["errors"]
        report = verify_segment(b.segment, res["publishers"], GEOM)
        assert report.ok, report.problems
        assert b.stop() == 0
        assert not os.listdir(mnt)  # unlinked at stop
        os.unlink(cfg)
    finally:
        if mounted:
            subprocess.run(["umount", mnt], timeout=10)
        os.rmdir(mnt)
        with open(nr, "w") as f:
            f.write(str(before))


def test_doctor_json_against_live_broker(broker: BrokerFactory) -> None:
    b = broker()
    res = _load(b)
    ctl = b.ready["control"]
    wait_for(lambda: client.request(ctl, "stats")["total"]["batches"] == res["batches"], 10,
             "metrics")
    out = subprocess.run([sys.executable, "-m", "shardbroker", "doctor", "--json", "--control",
                          b.ready["control"], "--no-self-test"], capture_output=True, text=True,
                         timeout=60)
    rep = json.loads(out.stdout)
    assert out.returncode == (0 if rep["ok"] else 1)
    assert rep["source"].startswith("running broker")
    checks = {f["check"]: f for f in rep["findings"]}
    for prefix in ("a.", "b.", "c.", "d.", "e.", "f."):
        assert any(c.startswith(prefix) for c in checks), prefix
    assert "recv calls per batch" in checks["b.recv_calls_per_batch"]["evidence"]
    assert checks["d.receiver_cpus"]["status"] == "ok"


def test_topology_cli_json() -> None:
    out = subprocess.run([sys.executable, "-m", "shardbroker", "topology", "--json"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["plan"]["receiver_cpus"] and d["nodes"]
