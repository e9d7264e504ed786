"""One shard's place in the receiver pool: its process, control channel and state."""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass, field
from typing import Any

from shardbroker.platform import linux

# ACTIVE: runs (or is starting, or waits to restart); RETIRING: handing its connections over
# (scale-down); INACTIVE: a shard with no receiver.
ACTIVE, RETIRING, INACTIVE = "active", "retiring", "inactive"


@dataclass
class ReceiverSlot:
    shard: int
    cpu: int | None
    state: str = INACTIVE
    proc: subprocess.Popen[bytes] | None = None
    control: socket.socket | None = None
    ready: bool = False  # this process sent `ready` and its channel is open
    booted: bool = False  # this process sent `ready` (stays true once it dies)
    open_connections: int = 0
    restarts: int = 0
    watchdog_kills: int = 0  # killed because its heartbeat stopped
    info: dict[str, Any] = field(default_factory=dict)  # its `ready` message
    restart_at: float = 0.0  # monotonic: not before (restart backoff)
    boot_deadline: float = 0.0  # monotonic: `ready` must have come by then
    killed: bool = False  # the watchdog killed this process; the reaper restarts it
    ready_ns: int = 0  # CLOCK_MONOTONIC ns of its `ready`: the watchdog's earliest beat
    scaling_up: bool = False  # started by `scale`, not ready yet: a boot failure is its own

    @property
    def takes_connections(self) -> bool:
        return self.state == ACTIVE and self.ready and self.control is not None

    @property
    def booting(self) -> bool:
        return self.proc is not None and not self.booted and self.state == ACTIVE

    def status(self) -> dict[str, Any]:
        pid = self.proc.pid if self.proc else None
        return {
            "shard": self.shard, "pid": pid, "cpu": self.cpu, "state": self.state,
            "ready": self.ready, "backend": self.info.get("backend"),
            "open_connections": self.open_connections,
            "backend_fallback": self.info.get("backend_fallback", ""),
            "restarts": self.restarts, "watchdog_kills": self.watchdog_kills,
            "allowed_cpus": linux.read_allowed_cpus(pid) if pid else None,
        }
