"""Where a broker's receivers run and its segment lives, for a config on this machine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shardbroker.platform.topology import PlacementPlan, default_nic, plan_placement, read_topology

if TYPE_CHECKING:
    from shardbroker.config import Config


def placement_for(cfg: Config, root: str = "/") -> PlacementPlan:
    """The NUMA plan for this config on this machine (sysfs under ``root``): the NIC's node
    (``broker.nic``, else the default route's), minus ``broker.reserve_cpus``, with the
    segment on ``segment.memory_node`` (-1: the receivers' node)."""
    nic = cfg.broker.nic or default_nic(root)
    topo = read_topology(root, nic=nic)
    mem = cfg.segment.memory_node if cfg.segment.memory_node >= 0 else None
    return plan_placement(topo, receivers=None, reserve_cpus=cfg.broker.reserve_cpus,
                          memory_node=mem)
