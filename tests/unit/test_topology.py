"""NUMA topology discovery and placement, on fake sysfs/procfs trees built in tmp_path.

The build machine has one NUMA node, so every multi-node case here runs on a fake tree: the
helper writes only the files topology.py reads (see its module docstring).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shardbroker.errors import ShardbrokerError
from shardbroker.platform.topology import (
    NumaNode,
    PlacementError,
    Topology,
    TopologyError,
    default_nic,
    format_cpulist,
    parse_cpulist,
    plan_placement,
    read_topology,
)

ROUTE_HEADER = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
)


def fake_tree(
    root: Path,
    nodes: dict[int, str] | None,
    online: str | None = None,
    nics: dict[str, str | None] | None = None,
    allowed: str | None = None,
    memory_kb: dict[int, int] | None = None,
    distances: dict[int, str] | None = None,
) -> Path:
    """Write a minimal sysfs/procfs tree under ``root``.

    nodes: node id -> cpulist text ("" for a CPU-less node); None writes no node directory.
    nics: name -> numa_node text; None value means the device has no numa_node file.
    """

    def write(rel: str, text: str) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    for node_id, cpulist in (nodes or {}).items():
        write(f"sys/devices/system/node/node{node_id}/cpulist", cpulist + "\n")
        if memory_kb and node_id in memory_kb:
            write(
                f"sys/devices/system/node/node{node_id}/meminfo",
                f"Node {node_id} MemTotal:  {memory_kb[node_id]} kB\n"
                f"Node {node_id} MemFree:   1024 kB\n",
            )
        if distances and node_id in distances:
            write(f"sys/devices/system/node/node{node_id}/distance", distances[node_id] + "\n")
    if nodes is not None:
        # Real sysfs also has these non-node entries next to nodeN; they must be ignored.
        write("sys/devices/system/node/online", ",".join(map(str, nodes)) + "\n")
        (root / "sys/devices/system/node/power").mkdir(exist_ok=True)
    if online is not None:
        write("sys/devices/system/cpu/online", online + "\n")
    for name, numa in (nics or {}).items():
        (root / "sys/class/net" / name / "device").mkdir(parents=True, exist_ok=True)
        if numa is not None:
            write(f"sys/class/net/{name}/device/numa_node", numa + "\n")
    if allowed is not None:
        write(
            "proc/self/status", f"Name:\tpython\nCpus_allowed:\tff\nCpus_allowed_list:\t{allowed}\n"
        )
    return root


# --------------------------------------------------------------------------- cpulist


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0-3,8,10-11", (0, 1, 2, 3, 8, 10, 11)),
        ("0-3,8,10-11\n", (0, 1, 2, 3, 8, 10, 11)),
        ("5", (5,)),
        ("", ()),
        ("\n", ()),
        ("  0-1 , 4 \n", (0, 1, 4)),
        ("2-5,0-3", (0, 1, 2, 3, 4, 5)),  # overlaps de-duplicate
        ("7,3,5", (3, 5, 7)),  # sorted
        ("4-4", (4,)),
        ("0,", (0,)),  # trailing comma tolerated
        ("126-129", (126, 127, 128, 129)),
    ],
)
def test_parse_cpulist(text: str, expected: tuple[int, ...]) -> None:
    assert parse_cpulist(text) == expected


@pytest.mark.parametrize("text", ["a", "1-", "-1", "3-1", "0-7:2/4", "1 2", "0x1"])
def test_parse_cpulist_rejects_garbage(text: str) -> None:
    with pytest.raises(TopologyError, match="cpulist"):
        parse_cpulist(text)


@pytest.mark.parametrize("text", ["0-3,8,10-11", "5", "", "0,2,4", "0-127"])
def test_format_cpulist_round_trips(text: str) -> None:
    assert format_cpulist(parse_cpulist(text)) == text


# --------------------------------------------------------------------------- discovery


def test_one_node(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, {0: "0-3"}, online="0-3", allowed="0-3", memory_kb={0: 8_000_000})
    topo = read_topology(root)
    assert topo.nodes == (NumaNode(0, (0, 1, 2, 3), 8_000_000),)
    assert topo.allowed_cpus == (0, 1, 2, 3)
    assert topo.memory_only_nodes() == ()
    assert topo.node_of_cpu(2) == 0
    assert topo.node_of_cpu(9) is None

    plan = plan_placement(topo)
    assert plan.receiver_cpus == (0, 1, 2, 3)
    assert plan.cpu_node == 0
    assert plan.memory_node == 0
    assert any("no NIC given" in n for n in plan.notes)


def test_no_node_dir_means_one_node_with_online_cpus(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, None, online="0-5")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text("MemTotal:        4155168 kB\nMemFree: 1 kB\n")
    topo = read_topology(root)
    assert topo.nodes == (NumaNode(0, (0, 1, 2, 3, 4, 5), 4155168),)
    # No proc/self/status in this tree: every online CPU is allowed.
    assert topo.allowed_cpus == (0, 1, 2, 3, 4, 5)


def test_empty_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="mount sysfs"):
        read_topology(tmp_path)


def test_two_nodes_nic_on_node1(tmp_path: Path) -> None:
    root = fake_tree(
        tmp_path,
        {0: "0-3", 1: "4-7"},
        online="0-7",
        nics={"eth0": "1"},
        allowed="0-7",
        memory_kb={0: 1000, 1: 2000},
    )
    topo = read_topology(root, nic="eth0")
    assert topo.nic_node == 1
    assert topo.node_of_cpu(5) == 1

    plan = plan_placement(topo)
    assert plan.receiver_cpus == (4, 5, 6, 7)
    assert plan.cpu_node == 1
    assert plan.memory_node == 1
    assert plan.nic == "eth0" and plan.nic_node == 1
    assert plan.notes == ()

    assert plan_placement(topo, receivers=2).receiver_cpus == (4, 5)


def test_cpu_less_memory_node_holds_the_segment(tmp_path: Path) -> None:
    root = fake_tree(
        tmp_path,
        {0: "0-3", 1: "4-7", 2: ""},
        online="0-7",
        nics={"eth0": "0"},
        allowed="0-7",
        memory_kb={0: 1000, 1: 1000, 2: 64_000_000},
    )
    topo = read_topology(root, nic="eth0")
    assert [n.node_id for n in topo.memory_only_nodes()] == [2]
    cxl = topo.node(2)
    assert cxl is not None and not cxl.has_cpus and cxl.memory_kb == 64_000_000

    plan = plan_placement(topo, memory_node=2)
    assert plan.receiver_cpus == (0, 1, 2, 3)
    assert plan.cpu_node == 0
    assert plan.memory_node == 2
    assert any("CPU-less node 2" in n for n in plan.notes)


def test_memory_on_another_cpu_node_is_noted(tmp_path: Path) -> None:
    root = fake_tree(
        tmp_path, {0: "0-1", 1: "2-3"}, online="0-3", nics={"eth0": "0"}, allowed="0-3"
    )
    plan = plan_placement(read_topology(root, nic="eth0"), memory_node=1)
    assert plan.memory_node == 1
    assert any("crosses the interconnect" in n for n in plan.notes)


@pytest.mark.parametrize("numa", ["-1", None, "garbage"])
def test_unknown_nic_node_uses_node_with_most_allowed_cpus(
    tmp_path: Path, numa: str | None
) -> None:
    root = fake_tree(
        tmp_path, {0: "0-1", 1: "2-7"}, online="0-7", nics={"eth0": numa}, allowed="0-7"
    )
    topo = read_topology(root, nic="eth0")
    assert topo.nic_node is None
    plan = plan_placement(topo)
    assert plan.cpu_node == 1
    assert plan.receiver_cpus == (2, 3, 4, 5, 6, 7)
    assert any("NUMA node of eth0 is unknown" in n for n in plan.notes)


def test_tie_between_nodes_picks_lowest_id(tmp_path: Path) -> None:
    root = fake_tree(
        tmp_path, {0: "0-1", 1: "2-3"}, online="0-3", nics={"eth0": "-1"}, allowed="0-3"
    )
    assert plan_placement(read_topology(root, nic="eth0")).cpu_node == 0


def test_restricted_cpuset_from_proc_status(tmp_path: Path) -> None:
    root = fake_tree(
        tmp_path, {0: "0-3", 1: "4-7"}, online="0-7", nics={"eth0": "1"}, allowed="1-2,5,7"
    )
    topo = read_topology(root, nic="eth0")
    assert topo.allowed_cpus == (1, 2, 5, 7)
    assert topo.allowed_on(1) == (5, 7)
    plan = plan_placement(topo)
    assert plan.receiver_cpus == (5, 7)
    assert plan.cpu_node == 1


def test_cpuset_excluding_nic_node_falls_back_with_note(tmp_path: Path) -> None:
    root = fake_tree(
        tmp_path, {0: "0-3", 1: "4-7"}, online="0-7", nics={"eth0": "1"}, allowed="0-2"
    )
    plan = plan_placement(read_topology(root, nic="eth0"))
    assert plan.cpu_node == 0
    assert plan.receiver_cpus == (0, 1, 2)
    assert any("no allowed CPU is there" in n for n in plan.notes)


def test_explicit_allowed_cpus_override_the_tree(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, {0: "0-3"}, online="0-3", allowed="0-3")
    assert read_topology(root, allowed_cpus=[3, 1, 1]).allowed_cpus == (1, 3)
    with pytest.raises(TopologyError, match="negative"):
        read_topology(root, allowed_cpus=[-1])


def test_live_root_uses_sched_getaffinity() -> None:
    topo = read_topology("/")
    assert topo.allowed_cpus == tuple(sorted(os.sched_getaffinity(0)))
    assert topo.nodes and all(isinstance(n.node_id, int) for n in topo.nodes)


def test_reserve_cpus(tmp_path: Path) -> None:
    root = fake_tree(
        tmp_path, {0: "0-3", 1: "4-7"}, online="0-7", nics={"eth0": "1"}, allowed="0-7"
    )
    topo = read_topology(root, nic="eth0")
    plan = plan_placement(topo, reserve_cpus=1)
    assert plan.reserved_cpus == (4,)
    assert plan.receiver_cpus == (5, 6, 7)

    plan = plan_placement(topo, receivers=2, reserve_cpus=2)
    assert plan.reserved_cpus == (4, 5)
    assert plan.receiver_cpus == (6, 7)


def test_spill_to_nearest_node_with_note(tmp_path: Path) -> None:
    # Node 2 is nearer to node 0 than node 1 is: the spill must go there first.
    root = fake_tree(
        tmp_path,
        {0: "0-1", 1: "2-3", 2: "4-5"},
        online="0-5",
        nics={"eth0": "0"},
        allowed="0-5",
        distances={0: "10 32 21", 1: "32 10 21", 2: "21 21 10"},
    )
    topo = read_topology(root, nic="eth0")
    assert topo.distance(0, 2) == 21
    plan = plan_placement(topo, receivers=4, reserve_cpus=1)
    assert plan.reserved_cpus == (0,)
    assert plan.receiver_cpus == (1, 4, 5, 2)
    assert any("spill to node(s) 1, 2" in n for n in plan.notes)


def test_spill_without_distances_goes_by_node_id(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, {0: "0-1", 1: "2-3", 2: "4-5"}, online="0-5", nics={"eth0": "2"})
    topo = read_topology(root, nic="eth0")
    assert topo.distance(2, 0) is None
    plan = plan_placement(topo, receivers=3)
    assert plan.receiver_cpus == (4, 5, 0)
    assert any("spill to node(s) 0" in n for n in plan.notes)


def test_to_dict_is_json_able(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, {0: "0-3", 1: ""}, online="0-3", nics={"eth0": "0"}, allowed="0-3")
    plan = plan_placement(read_topology(root, nic="eth0"), reserve_cpus=1, memory_node=1)
    data = json.loads(json.dumps(plan.to_dict()))
    assert data == {
        "receiver_cpus": [1, 2, 3],
        "cpu_node": 0,
        "memory_node": 1,
        "nic": "eth0",
        "nic_node": 0,
        "reserved_cpus": [0],
        "notes": list(plan.notes),
    }


# --------------------------------------------------------------------------- errors


def _two_nodes(tmp_path: Path) -> Topology:
    root = fake_tree(
        tmp_path,
        {0: "0-1", 1: "2-3", 3: ""},
        online="0-3",
        nics={"eth0": "0"},
        allowed="0-3",
        memory_kb={0: 10, 1: 10, 3: 0},
    )
    return read_topology(root, nic="eth0")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"receivers": 0}, "at least 1"),
        ({"receivers": -2}, "at least 1"),
        ({"reserve_cpus": -1}, "use 0 or more"),
        ({"reserve_cpus": 2}, "lower reserve_cpus"),
        ({"receivers": 5}, "ask for fewer receivers"),
        ({"receivers": 4, "reserve_cpus": 1}, "only 3 allowed CPU"),
        ({"memory_node": 7}, r"does not exist \(nodes: 0, 1, 3\)"),
        ({"memory_node": 3}, "has no memory"),
    ],
)
def test_bad_requests(tmp_path: Path, kwargs: dict[str, int], message: str) -> None:
    topo = _two_nodes(tmp_path)
    with pytest.raises(PlacementError, match=message):
        plan_placement(topo, **kwargs)


def test_errors_are_value_errors_with_hints(tmp_path: Path) -> None:
    assert issubclass(PlacementError, ValueError) and issubclass(PlacementError, ShardbrokerError)
    assert issubclass(TopologyError, ValueError) and issubclass(TopologyError, ShardbrokerError)
    with pytest.raises(PlacementError) as caught:
        plan_placement(_two_nodes(tmp_path), receivers=0)
    assert caught.value.message == "receivers=0"
    assert "at least 1" in caught.value.hint


def test_no_allowed_cpus(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, {0: "0-1"}, online="0-1", allowed="")
    topo = read_topology(root)
    assert topo.allowed_cpus == ()
    with pytest.raises(PlacementError, match="CPU affinity"):
        plan_placement(topo)


def test_allowed_cpus_outside_every_node(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, {0: "0-1"}, online="0-1")
    with pytest.raises(PlacementError, match="allowed: 8-9"):
        plan_placement(read_topology(root, allowed_cpus=[8, 9]))


@pytest.mark.parametrize("nic", ["nope", "../../etc", "", "a" * 16])
def test_unknown_or_bad_nic_name(tmp_path: Path, nic: str) -> None:
    root = fake_tree(tmp_path, {0: "0-1"}, online="0-1", nics={"eth0": "0"})
    with pytest.raises(TopologyError, match="ip link"):
        read_topology(root, nic=nic)


def test_memoryless_cpu_node_is_noted(tmp_path: Path) -> None:
    root = fake_tree(
        tmp_path, {0: "0-1", 1: "2-3"}, online="0-3", nics={"eth0": "1"}, memory_kb={0: 5, 1: 0}
    )
    plan = plan_placement(read_topology(root, nic="eth0"))
    assert plan.memory_node == 1
    assert any("reports no memory" in n for n in plan.notes)


# --------------------------------------------------------------------------- default route


def test_default_nic_lowest_metric(tmp_path: Path) -> None:
    (tmp_path / "proc/net").mkdir(parents=True)
    (tmp_path / "proc/net/route").write_text(
        ROUTE_HEADER
        + "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        + "wlan0\t00000000\t010200C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
        + "eth1\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        + "down0\t00000000\t010200C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n"
    )
    assert default_nic(tmp_path) == "eth1"


def test_default_nic_none(tmp_path: Path) -> None:
    assert default_nic(tmp_path) is None
    (tmp_path / "proc/net").mkdir(parents=True)
    (tmp_path / "proc/net/route").write_text(
        ROUTE_HEADER + "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    )
    assert default_nic(tmp_path) is None
