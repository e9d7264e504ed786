"""Checks that refuse a start (or a scale) before it takes more than the host can give.

The segment's size against memory is checked where segments are created (segment/shm.py);
here: receivers against CPUs. Pure: numbers in, an error out."""

from __future__ import annotations

from collections.abc import Sequence

from shardbroker.errors import ConfigError
from shardbroker.platform.topology import format_cpulist


def check_receivers_fit_cpus(asked: str, receivers: int, cpus: Sequence[int],
                             oversubscribe: bool) -> None:
    """Refuse more receivers than CPUs unless the operator said so. Receivers are busy loops
    pinned one per CPU; two on one CPU halve each other, and a typo such as ``--threads 999``
    would spawn 999 processes. ``asked`` names the request in the message (``--threads 8``)."""
    if receivers <= len(cpus) or oversubscribe:
        return
    raise ConfigError(
        "broker.threads",
        f"{asked} asks for {receivers} receivers but only {len(cpus)} CPUs "
        f"({format_cpulist(cpus) or 'none'}) are theirs to run on",
        hint=f"lower --threads to {len(cpus)} or fewer, or pass --oversubscribe "
             "(broker.oversubscribe = true) to let receivers share CPUs",
    )
