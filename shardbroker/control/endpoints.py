"""Where a broker's control and metrics endpoints live, and how CLI commands find them.

Default: ``ipc://`` sockets in a runtime directory only the broker's user can open (0700):
``$SHARDBROKER_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/shardbroker``, else
``/run/shardbroker`` for root, else ``/tmp/shardbroker-<uid>``.

Every broker has its own directory there, named after its segment, holding its sockets and
``broker.json`` (segment, pid, endpoints). Local commands find brokers by scanning those
records for live pids, so several brokers on one host never overwrite each other's pointer:
with exactly one running it is "the local broker"; with several, ``--segment NAME`` or
``--control ENDPOINT`` picks one. ``SHARDBROKER_CONTROL`` also picks one. A
``<runtime>/control`` pointer file (written by hand or by an older broker) is read last.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shardbroker.errors import ConfigError, ShardbrokerError
from shardbroker.platform import linux

ENV_CONTROL = "SHARDBROKER_CONTROL"
ENV_RUNTIME = "SHARDBROKER_RUNTIME_DIR"


def runtime_dir() -> Path:
    if os.environ.get(ENV_RUNTIME):
        return Path(os.environ[ENV_RUNTIME])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "shardbroker"
    if os.geteuid() == 0:
        return Path("/run/shardbroker")
    return Path(f"/tmp/shardbroker-{os.geteuid()}")


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` mode 0700, or check an existing one is ours and not open to others."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise ConfigError("control.runtime_dir", f"{path} belongs to uid {st.st_uid}",
                          hint=f"use a directory you own ({ENV_RUNTIME}=...)")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def broker_dir_path(segment: str) -> Path:
    """The broker's own directory (not created): a hugetlbfs segment's path counts by its
    file name."""
    return runtime_dir() / os.path.basename(segment)


def broker_dir(segment: str) -> Path:
    return ensure_private_dir(ensure_private_dir(runtime_dir()) / os.path.basename(segment))


RECORD_NAME = "broker.json"


@dataclass(frozen=True)
class BrokerRecord:
    """What a running broker tells local commands about itself (``<broker dir>/broker.json``).
    ``pid_start`` (the process's start time in clock ticks) tells a live broker from a dead
    one whose pid the kernel has since given to another process."""

    segment: str
    pid: int
    pid_start: int
    control: str
    listen: str

    def is_live(self) -> bool:
        return linux.process_start_ticks(self.pid) == self.pid_start

    def describe(self) -> str:
        return f"{self.segment} (pid {self.pid}, {self.control})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def record_for_this_process(segment: str, control: str, listen: str) -> BrokerRecord:
    pid = os.getpid()
    return BrokerRecord(segment, pid, linux.process_start_ticks(pid) or 0, control, listen)


def write_record(rec: BrokerRecord) -> Path:
    """Publish ``rec`` in its broker's directory (atomically: readers never see half)."""
    path = broker_dir(rec.segment) / RECORD_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec.to_dict()) + "\n")
    tmp.replace(path)
    return path


def read_record(path: Path) -> BrokerRecord | None:
    """The record at ``path``; None when missing or unreadable (a broker writing it, a
    foreign file)."""
    try:
        data = json.loads(path.read_text())
        return BrokerRecord(str(data["segment"]), int(data["pid"]), int(data["pid_start"]),
                            str(data["control"]), str(data["listen"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def live_brokers(root: Path | None = None) -> list[BrokerRecord]:
    """Brokers running on this host under ``root`` (default: the runtime directory), by
    segment name. Records of dead brokers are ignored: a broker that was killed cannot
    remove its own."""
    base = runtime_dir() if root is None else root
    try:
        paths = sorted(base.glob(f"*/{RECORD_NAME}"))
    except OSError:
        return []
    records = (read_record(p) for p in paths)
    return [r for r in records if r is not None and r.is_live()]


class BrokerLookupError(ShardbrokerError):
    """No broker, or not exactly one, matches what a control command asked for."""


class SeveralBrokers(BrokerLookupError):
    """More than one broker runs here and the command did not say which one."""

    def __init__(self, brokers: list[BrokerRecord]) -> None:
        self.brokers = brokers
        super().__init__(
            f"{len(brokers)} brokers run on this host: "
            + ", ".join(b.describe() for b in brokers),
            hint="pick one with --segment NAME or --control ENDPOINT",
        )


def endpoint_for_segment(segment: str) -> str:
    """The control endpoint of the live broker serving ``segment``."""
    rec = read_record(broker_dir_path(segment) / RECORD_NAME)
    if rec is not None and rec.is_live():
        return rec.control
    running = ", ".join(b.segment for b in live_brokers()) or "none"
    raise BrokerLookupError(f"no running broker serves segment {segment!r} (running here: "
                            f"{running})", hint="check the name with `shardbroker status`")


def ipc_in_use(endpoint: str) -> bool:
    """Is a process listening on this ipc:// endpoint? ZeroMQ's bind would silently take
    the path over from it (it unlinks the old socket file), so ask before binding."""
    if not endpoint.startswith("ipc://"):
        return False
    path = endpoint[len("ipc://"):]
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False  # a socket file nobody listens on: left by a broker that died
    return True


def default_endpoint_file() -> Path:
    """The single-broker pointer of older versions; read only when no broker record is."""
    return runtime_dir() / "control"


def write_default_endpoint(endpoint: str) -> None:
    """Point local commands at ``endpoint`` when no broker record is found (a broker on
    another host's tcp:// endpoint, say). Brokers no longer write this file themselves."""
    f = default_endpoint_file()
    tmp = f.with_suffix(".tmp")
    tmp.write_text(endpoint + "\n")
    tmp.replace(f)


def _pointer_endpoint() -> str | None:
    """The endpoint in the pointer file, unless it names an ipc:// socket that is gone (a
    stale pointer of a dead broker: removed). Relative ipc paths depend on the reader's
    working directory and are taken as they are."""
    f = default_endpoint_file()
    try:
        endpoint = f.read_text().strip()
    except OSError:
        return None
    path = endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else ""
    if os.path.isabs(path) and not os.path.exists(path):
        f.unlink(missing_ok=True)
        return None
    return endpoint or None


def resolve_client_endpoint(flag: str | None, segment: str | None = None) -> str:
    """The endpoint a control command talks to: ``--control``, else the broker serving
    ``--segment``, else $SHARDBROKER_CONTROL, else the one live broker on this host."""
    if flag:
        return flag
    if segment:
        return endpoint_for_segment(segment)
    if os.environ.get(ENV_CONTROL):
        return os.environ[ENV_CONTROL]
    brokers = live_brokers()
    if len(brokers) == 1:
        return brokers[0].control
    if len(brokers) > 1:
        raise SeveralBrokers(brokers)
    pointer = _pointer_endpoint()
    if pointer is None:
        raise ConfigError(
            "--control", f"no local broker found (no live broker record in {runtime_dir()})",
            hint=f"start one with `shardbroker run`, or pass --control / set {ENV_CONTROL}",
        )
    return pointer


def check_tcp_bind(endpoint: str, curve_configured: bool) -> None:
    """tcp:// control only on loopback unless CURVE authenticates clients."""
    if not endpoint.startswith("tcp://"):
        return
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not curve_configured:
        raise ConfigError(
            "control.endpoint", f"refusing to bind {endpoint} without CURVE authentication",
            hint="bind 127.0.0.1, or set control.curve_secret_key_file "
                 "(`shardbroker keys` writes a key pair)",
        )
