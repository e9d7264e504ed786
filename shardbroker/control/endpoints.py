"""Where a broker's control and metrics endpoints live, and how CLI commands find them.

Default: ``ipc://`` sockets in a runtime directory only the broker's user can open (0700):
``$SHARDBROKER_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/shardbroker``, else
``/run/shardbroker`` for root, else ``/tmp/shardbroker-<uid>``. The supervisor writes its
control endpoint to ``<runtime>/control`` so local commands find it; ``SHARDBROKER_CONTROL``
or ``--control`` override.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

from shardbroker.errors import ConfigError

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


def broker_dir(segment: str) -> Path:
    return ensure_private_dir(ensure_private_dir(runtime_dir()) / segment)


def default_endpoint_file() -> Path:
    return runtime_dir() / "control"


def write_default_endpoint(endpoint: str) -> None:
    f = default_endpoint_file()
    tmp = f.with_suffix(".tmp")
    tmp.write_text(endpoint + "\n")
    tmp.replace(f)


def clear_default_endpoint(endpoint: str) -> None:
    f = default_endpoint_file()
    try:
        if f.read_text().strip() == endpoint:
            f.unlink()
    except OSError:
        pass


def resolve_client_endpoint(flag: str | None) -> str:
    if flag:
        return flag
    if os.environ.get(ENV_CONTROL):
        return os.environ[ENV_CONTROL]
    try:
        return default_endpoint_file().read_text().strip()
    except OSError:
        raise ConfigError(
            "--control", f"no local broker found ({default_endpoint_file()} does not exist)",
            hint=f"start one with `shardbroker run`, or pass --control / set {ENV_CONTROL}",
        ) from None


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
