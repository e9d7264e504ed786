"""Start one receiver process: its spec, its control channel, its NUMA launch prefix."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from typing import Any

from shardbroker import config as config_mod
from shardbroker.config import Config
from shardbroker.platform.topology import PlacementPlan
from shardbroker.receiver.spec import ReceiverSpec


class ReceiverLauncher:
    """Knows what every receiver is told (segment, config, endpoints); ``launch`` starts one
    and returns at once: readiness arrives later as a message on the control channel."""

    def __init__(self, cfg: Config, log: Any, segment: str, placement: PlacementPlan,
                 metrics_endpoint: str) -> None:
        self.cfg = cfg
        self.log = log
        self.segment = segment
        self.placement = placement
        self.metrics_endpoint = metrics_endpoint if cfg.metrics.interval_s > 0 else ""
        self.numactl_warned = False

    def launch(self, shard: int, cpu: int | None, reuseport_listen: str
               ) -> tuple[subprocess.Popen[bytes], socket.socket]:
        """(the process, the supervisor's end of its SOCK_SEQPACKET control pair)."""
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        spec = ReceiverSpec(
            shard=shard, cpu=cpu, segment=self.segment, broker_id=self.cfg.broker.broker_id,
            control_fd=child_end.fileno(), config=config_mod.to_dict(self.cfg),
            metrics_endpoint=self.metrics_endpoint, reuseport_listen=reuseport_listen,
        )
        try:
            proc = subprocess.Popen(
                [*self._numactl_prefix(), sys.executable, "-m", "shardbroker.receiver",
                 spec.to_json()],
                pass_fds=(child_end.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        parent_end.setblocking(False)
        return proc, parent_end

    def _numactl_prefix(self) -> list[str]:
        if not self.cfg.broker.numactl:
            return []
        exe = shutil.which("numactl")
        if exe is None:
            if not self.numactl_warned:
                self.log.warning("supervisor.numactl_missing",
                                 hint="apt-get install numactl, or set broker.numactl = false")
                self.numactl_warned = True
            return []
        p = self.placement
        mem = p.memory_node if p.memory_node is not None else p.cpu_node
        return [exe, f"--cpunodebind={p.cpu_node}", f"--membind={mem}"]
