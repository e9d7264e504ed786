"""NUMA topology discovery and receiver placement: files in, plans out.

Everything here reads sysfs/procfs through ONE root directory (default ``/``), the way psutil
does, so the multi-node logic is tested on fake trees built in a temporary directory. Nothing
here opens a socket, logs, or changes the machine: applying a plan (affinity, mbind, numactl)
is the caller's job.

Files read, relative to the root::

    sys/devices/system/node/nodeN/cpulist    CPUs of node N, Linux cpulist syntax ("0-3,8")
    sys/devices/system/node/nodeN/meminfo    "Node N MemTotal:  4155168 kB" (optional)
    sys/devices/system/node/nodeN/distance   SLIT distances to every node, in node-id order
    sys/devices/system/cpu/online            online CPUs; the only source without node dirs
    sys/class/net/IFACE/device/numa_node     NIC's node; missing or -1 means unknown
    proc/self/status                         Cpus_allowed_list (only when root is not "/")
    proc/meminfo                             MemTotal (only for the single-node fallback)
    proc/net/route                           default route's interface (default_nic)

A CPU-less node that has memory is how CXL memory (and Embarcadero's shared log) appears; it
can hold the segment while receivers run on the NIC's node.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardbroker.errors import ShardbrokerError

NODE_DIR = "sys/devices/system/node"
CPU_ONLINE = "sys/devices/system/cpu/online"
NET_CLASS = "sys/class/net"
PROC_STATUS = "proc/self/status"
PROC_MEMINFO = "proc/meminfo"
PROC_ROUTE = "proc/net/route"

_NODE_NAME = re.compile(r"node(\d+)")
_RANGE = re.compile(r"(\d+)(?:-(\d+))?")
# Interface names are at most 15 bytes and never contain "/" (it would escape sys/class/net).
_IFACE_NAME = re.compile(r"[^/\s]{1,15}")


class TopologyError(ShardbrokerError, ValueError):
    """The topology files are missing or malformed; the hint says what to do."""


class PlacementError(ShardbrokerError, ValueError):
    """A placement request cannot be met on this topology; the hint says what to change."""


@dataclass(frozen=True)
class NumaNode:
    """One NUMA node: its CPUs (may be empty: CXL / memory-only) and total memory if known."""

    node_id: int
    cpus: tuple[int, ...]
    memory_kb: int | None
    # SLIT distances from this node to each node, in ascending node-id order (sysfs order);
    # empty when the kernel does not publish them. Used to pick the nearest spill node.
    distances: tuple[int, ...] = ()

    @property
    def has_cpus(self) -> bool:
        return bool(self.cpus)


@dataclass(frozen=True)
class Topology:
    """The machine as this process sees it: nodes, the CPUs it may run on, and the NIC's node."""

    nodes: tuple[NumaNode, ...]
    allowed_cpus: tuple[int, ...]
    nic: str | None
    nic_node: int | None

    def node(self, node_id: int) -> NumaNode | None:
        for candidate in self.nodes:
            if candidate.node_id == node_id:
                return candidate
        return None

    def memory_only_nodes(self) -> tuple[NumaNode, ...]:
        """Nodes without CPUs, e.g. CXL memory expanders."""
        return tuple(n for n in self.nodes if not n.has_cpus)

    def node_of_cpu(self, cpu: int) -> int | None:
        for candidate in self.nodes:
            if cpu in candidate.cpus:
                return candidate.node_id
        return None

    def allowed_on(self, node_id: int) -> tuple[int, ...]:
        """CPUs of ``node_id`` that this process may run on, ascending."""
        found = self.node(node_id)
        if found is None:
            return ()
        allowed = set(self.allowed_cpus)
        return tuple(c for c in found.cpus if c in allowed)

    def distance(self, src: int, dst: int) -> int | None:
        """SLIT distance between two nodes, or None when the kernel did not publish it."""
        source = self.node(src)
        ids = [n.node_id for n in self.nodes]
        if source is None or dst not in ids or len(source.distances) != len(ids):
            return None
        return source.distances[ids.index(dst)]


@dataclass(frozen=True)
class PlacementPlan:
    """Where receivers run and where the segment's pages live, with the reasons as notes."""

    receiver_cpus: tuple[int, ...]
    cpu_node: int | None
    memory_node: int | None
    nic: str | None
    nic_node: int | None
    reserved_cpus: tuple[int, ...]
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "receiver_cpus": list(self.receiver_cpus),
            "cpu_node": self.cpu_node,
            "memory_node": self.memory_node,
            "nic": self.nic,
            "nic_node": self.nic_node,
            "reserved_cpus": list(self.reserved_cpus),
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- parsing


def parse_cpulist(text: str) -> tuple[int, ...]:
    """Parse Linux cpulist syntax ("0-3,8,10-11") into sorted, de-duplicated CPU numbers.

    An empty list (a memory-only node's cpulist is an empty line) gives ``()``.
    """
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        match = _RANGE.fullmatch(part)
        if match is None:
            raise TopologyError(
                f"cannot parse cpulist item {part!r} in {text.strip()!r}",
                "expected items like '3' or '0-7' separated by commas",
            )
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise TopologyError(
                f"cpulist range {part!r} runs backwards", f"write it as '{last}-{first}'"
            )
        cpus.update(range(first, last + 1))
    return tuple(sorted(cpus))


def format_cpulist(cpus: Iterable[int]) -> str:
    """Inverse of parse_cpulist: (0, 1, 2, 5) -> "0-2,5" (for numactl, taskset and notes)."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None


def _meminfo_total_kb(text: str | None) -> int | None:
    """MemTotal from /proc/meminfo ("MemTotal: N kB") or a node's ("Node 0 MemTotal: N kB")."""
    if text is None:
        return None
    match = re.search(r"MemTotal:\s*(\d+)\s*kB", text)
    return int(match.group(1)) if match else None


def _distances(text: str | None) -> tuple[int, ...]:
    if text is None:
        return ()
    try:
        return tuple(int(x) for x in text.split())
    except ValueError:
        return ()  # distances only order the spill; a garbled file must not stop placement


# --------------------------------------------------------------------------- discovery


def read_topology(
    root: str | Path = "/",
    nic: str | None = None,
    allowed_cpus: Iterable[int] | None = None,
) -> Topology:
    """Read the NUMA layout under ``root``; see the module docstring for the files used.

    ``allowed_cpus`` overrides the CPUs this process may use (e.g. from a config); without it
    the live affinity mask is used for the real root, and ``proc/self/status`` for a fake one.
    """
    base = Path(root)
    online = _online_cpus(base)
    nodes = _read_nodes(base, online)
    if allowed_cpus is not None:
        allowed = tuple(sorted(set(allowed_cpus)))
        if any(c < 0 for c in allowed):
            raise TopologyError(
                f"allowed CPUs {allowed} contain a negative number", "pass CPU ids (0 or more)"
            )
    else:
        allowed = _allowed_cpus(base, online or _all_node_cpus(nodes))
    nic_node = _nic_node(base, nic) if nic is not None else None
    return Topology(nodes=nodes, allowed_cpus=allowed, nic=nic, nic_node=nic_node)


def _online_cpus(base: Path) -> tuple[int, ...]:
    text = _read_text(base / CPU_ONLINE)
    return parse_cpulist(text) if text is not None else ()


def _read_nodes(base: Path, online: tuple[int, ...]) -> tuple[NumaNode, ...]:
    node_root = base / NODE_DIR
    ids = sorted(
        int(m.group(1))
        for entry in (node_root.iterdir() if node_root.is_dir() else ())
        if entry.is_dir() and (m := _NODE_NAME.fullmatch(entry.name))
    )
    if not ids:
        return (_single_node(base, online),)
    nodes = []
    for node_id in ids:
        node_dir = node_root / f"node{node_id}"
        cpulist = _read_text(node_dir / "cpulist")
        nodes.append(
            NumaNode(
                node_id=node_id,
                cpus=parse_cpulist(cpulist) if cpulist is not None else (),
                memory_kb=_meminfo_total_kb(_read_text(node_dir / "meminfo")),
                distances=_distances(_read_text(node_dir / "distance")),
            )
        )
    return tuple(nodes)


def _single_node(base: Path, online: tuple[int, ...]) -> NumaNode:
    # Kernels built without CONFIG_NUMA have no node directory: the machine is one node 0.
    if not online:
        raise TopologyError(
            f"neither {base / NODE_DIR} nor {base / CPU_ONLINE} is readable",
            "mount sysfs (or pass the right root) so CPUs can be discovered",
        )
    memory = _meminfo_total_kb(_read_text(base / PROC_MEMINFO))
    return NumaNode(node_id=0, cpus=online, memory_kb=memory)


def _all_node_cpus(nodes: tuple[NumaNode, ...]) -> tuple[int, ...]:
    return tuple(sorted({c for n in nodes for c in n.cpus}))


def _allowed_cpus(base: Path, fallback: tuple[int, ...]) -> tuple[int, ...]:
    if base.resolve() == Path("/"):
        # The live mask is authoritative for this process (taskset, cgroup cpuset, numactl).
        return tuple(sorted(os.sched_getaffinity(0)))
    status = _read_text(base / PROC_STATUS)
    if status is not None:
        match = re.search(r"^Cpus_allowed_list:\s*(\S*)\s*$", status, re.MULTILINE)
        if match:
            return parse_cpulist(match.group(1))
    return fallback


def _nic_node(base: Path, nic: str) -> int | None:
    if not _IFACE_NAME.fullmatch(nic) or nic in (".", ".."):
        raise TopologyError(f"{nic!r} is not a network interface name", "see `ip link`")
    iface_dir = base / NET_CLASS / nic
    if not iface_dir.exists():
        raise TopologyError(
            f"network interface {nic!r} not found under {base / NET_CLASS}",
            "check the name with `ip link` or leave the NIC unset",
        )
    text = _read_text(iface_dir / "device" / "numa_node")
    if text is None:
        return None  # virtual devices (lo, veth, virtio here) have no numa_node file
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return value if value >= 0 else None  # -1: firmware did not say (single-node or no SRAT)


def default_nic(root: str | Path = "/") -> str | None:
    """Interface of the IPv4 default route (destination 00000000) with the lowest metric."""
    text = _read_text(Path(root) / PROC_ROUTE)
    if text is None:
        return None
    best: tuple[int, str] | None = None
    for line in text.splitlines()[1:]:  # first line is the column header
        fields = line.split()
        if len(fields) < 8 or fields[1] != "00000000" or fields[7] != "00000000":
            continue
        try:
            flags, metric = int(fields[3], 16), int(fields[6])
        except ValueError:
            continue
        if not flags & 0x1:  # RTF_UP: skip routes the kernel keeps but does not use
            continue
        if best is None or metric < best[0]:
            best = (metric, fields[0])
    return best[1] if best else None


# --------------------------------------------------------------------------- planning


def plan_placement(
    topo: Topology,
    receivers: int | None = None,
    reserve_cpus: int = 0,
    memory_node: int | None = None,
) -> PlacementPlan:
    """Pick one allowed CPU per receiver, nearest the NIC, and the node for the segment.

    ``receivers=None`` means one per allowed CPU left on the chosen node after reserving the
    first ``reserve_cpus`` of them for the supervisor and IRQ handling. More receivers than
    that spill onto other nodes' allowed CPUs, nearest first.
    """
    _validate_request(topo, receivers, reserve_cpus)
    notes: list[str] = []
    cpu_node = _choose_cpu_node(topo, notes)
    node_cpus = topo.allowed_on(cpu_node)
    if reserve_cpus >= len(node_cpus):
        raise PlacementError(
            f"reserve_cpus={reserve_cpus} leaves no CPU for receivers on node {cpu_node}, "
            f"which has {len(node_cpus)} allowed CPU(s) ({format_cpulist(node_cpus)})",
            "lower reserve_cpus or widen the CPU set",
        )
    reserved = node_cpus[:reserve_cpus]
    available = node_cpus[reserve_cpus:]
    wanted = len(available) if receivers is None else receivers
    chosen = available[:wanted]
    if wanted > len(chosen):
        chosen = _spill(topo, cpu_node, chosen, wanted, notes)
    mem_node = _choose_memory_node(topo, cpu_node, memory_node, notes)
    return PlacementPlan(
        receiver_cpus=chosen,
        cpu_node=cpu_node,
        memory_node=mem_node,
        nic=topo.nic,
        nic_node=topo.nic_node,
        reserved_cpus=reserved,
        notes=tuple(notes),
    )


def _validate_request(topo: Topology, receivers: int | None, reserve_cpus: int) -> None:
    if receivers is not None and receivers < 1:
        raise PlacementError(
            f"receivers={receivers}", "ask for at least 1, or leave it unset for one per CPU"
        )
    if reserve_cpus < 0:
        raise PlacementError(f"reserve_cpus={reserve_cpus}", "use 0 or more")
    if not any(topo.allowed_on(n.node_id) for n in topo.nodes):
        raise PlacementError(
            f"no allowed CPU (allowed: {format_cpulist(topo.allowed_cpus) or 'none'}) belongs "
            "to a NUMA node",
            "check the process's CPU affinity (taskset -p, cgroup cpuset)",
        )


def _choose_cpu_node(topo: Topology, notes: list[str]) -> int:
    busiest = max(topo.nodes, key=lambda n: (len(topo.allowed_on(n.node_id)), -n.node_id))
    if topo.nic is None:
        notes.append(f"no NIC given; using node {busiest.node_id}, which has the most allowed CPUs")
        return busiest.node_id
    if topo.nic_node is None:
        notes.append(
            f"NUMA node of {topo.nic} is unknown (no numa_node file, or -1); using node "
            f"{busiest.node_id}, which has the most allowed CPUs"
        )
        return busiest.node_id
    if not topo.allowed_on(topo.nic_node):
        notes.append(
            f"{topo.nic} is on node {topo.nic_node} but no allowed CPU is there; using node "
            f"{busiest.node_id} (widen the CPU set to run receivers next to the NIC)"
        )
        return busiest.node_id
    return topo.nic_node


def _spill(
    topo: Topology, cpu_node: int, have: tuple[int, ...], wanted: int, notes: list[str]
) -> tuple[int, ...]:
    """Add CPUs from other nodes, nearest (SLIT distance) first, until ``wanted`` are chosen."""

    def nearness(node: NumaNode) -> tuple[int, int]:
        dist = topo.distance(cpu_node, node.node_id)
        return (dist if dist is not None else 1 << 30, node.node_id)

    others = sorted((n for n in topo.nodes if n.node_id != cpu_node), key=nearness)
    pool = [c for n in others for c in topo.allowed_on(n.node_id)]
    missing = wanted - len(have)
    if len(pool) < missing:
        raise PlacementError(
            f"asked for {wanted} receivers but only {len(have) + len(pool)} allowed CPU(s) are "
            "free after the reserved ones",
            "ask for fewer receivers (one per CPU), reserve fewer CPUs, or widen the CPU set",
        )
    taken = tuple(pool[:missing])
    spilled_nodes = sorted({n for c in taken if (n := topo.node_of_cpu(c)) is not None})
    notes.append(
        f"node {cpu_node} has {len(have)} free CPU(s) for {wanted} receivers; {missing} spill "
        f"to node(s) {', '.join(map(str, spilled_nodes))} (CPUs {format_cpulist(taken)}), "
        "crossing the interconnect for every batch"
    )
    return have + taken


def _choose_memory_node(
    topo: Topology, cpu_node: int, requested: int | None, notes: list[str]
) -> int:
    if requested is None:
        own = topo.node(cpu_node)
        if own is not None and own.memory_kb == 0:
            notes.append(
                f"node {cpu_node} reports no memory; pass memory_node to bind the segment "
                "to a node that has some"
            )
        return cpu_node
    target = topo.node(requested)
    if target is None:
        known = ", ".join(str(n.node_id) for n in topo.nodes)
        raise PlacementError(
            f"memory node {requested} does not exist (nodes: {known})",
            "pick one of those, or leave memory_node unset to use the receivers' node",
        )
    if target.memory_kb == 0:
        raise PlacementError(
            f"memory node {requested} has no memory (MemTotal 0 kB)", "pick a node with memory"
        )
    if not target.has_cpus:
        notes.append(
            f"segment memory on CPU-less node {requested} (CXL / memory-only); "
            f"receivers run on node {cpu_node}"
        )
    elif requested != cpu_node:
        notes.append(
            f"segment memory on node {requested}, receivers on node {cpu_node}: "
            "every payload write crosses the interconnect"
        )
    return requested
