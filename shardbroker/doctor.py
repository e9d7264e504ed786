"""``shardbroker doctor``: the seed memo's recommended order of levers, as checks.

(a) kernel buffer limits and the effective SO_RCVBUF of live connections; (b) recv calls and
wakeups per batch, classified; (c) GRO and interrupt coalescing on the NIC; (d) NUMA alignment
of NIC, receiver CPUs and segment pages; (e) io_uring availability; (f) busy polling.
Every finding has a status (ok / warn / fail), the evidence, and the command that fixes it.
The classification is pure (``classify_receive``) so it is tested on synthetic metrics.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

from shardbroker.platform import linux

OK, WARN, FAIL = "ok", "warn", "fail"
BUFFER_TARGET = 64 << 20  # what tools/tune_kernel_buffers.sh --apply sets
MANY_RECV_CALLS = 8.0  # per 2 MiB batch: above this the kernel hands out small chunks
MANY_WAKEUPS = 2.0


@dataclass
class Finding:
    check: str
    status: str
    evidence: str
    fix: str = ""


def classify_receive(recv_calls_per_batch: float | None, wakeups_per_batch: float | None,
                     lowat_cap: int, backend: str) -> Finding:
    """Many recv calls per batch: syscall/segment-bound (SO_RCVLOWAT, io_uring, GRO).
    Few: copy/bandwidth-bound (NUMA alignment, huge pages)."""
    if recv_calls_per_batch is None:
        return Finding("b.recv_calls_per_batch", WARN, "no batches received yet",
                       "publish some load, then run doctor again (or run it with no broker "
                       "for a self-test)")
    wake = f", {wakeups_per_batch:.2f} wakeups per batch" if wakeups_per_batch is not None \
        else ""
    evidence = f"{recv_calls_per_batch:.2f} recv calls per batch{wake} (backend {backend})"
    if recv_calls_per_batch > MANY_RECV_CALLS or (wakeups_per_batch or 0) > MANY_WAKEUPS:
        return Finding("b.recv_calls_per_batch", WARN,
                       evidence + ": syscall/segment-bound (the kernel hands out small chunks)",
                       "; ".join(_syscall_bound_fixes(lowat_cap, backend)))
    return Finding("b.recv_calls_per_batch", OK,
                   evidence + ": copy/bandwidth-bound, syscalls are not the limit",
                   "next levers: NUMA alignment (shardbroker topology), huge pages "
                   "(segment.hugepages)")


def _syscall_bound_fixes(lowat_cap: int, backend: str) -> list[str]:
    """What lowers recv calls and wakeups per batch, most effective first.

    The io_uring backend is only an experiment: on the project's measurements it moved the
    same GB/s as epoll with SO_RCVLOWAT and cost more receiver CPU (README, Performance)."""
    fixes = []
    if not lowat_cap:
        fixes.append("set socket.rcvlowat_cap = \"1MiB\" (run --rcvlowat-cap 1MiB): wake "
                     "once per MiB, not per arriving chunk")
    fixes += ["larger batches (publishers' batch_bytes, publish --batch-size: 2MiB or more "
              "means fewer headers and commits per byte)",
              "more receivers (shardbroker scale N) if a receiver's CPU% is near 100",
              "check GRO / coalescing: tools/nic_tune.sh IFACE --check"]
    if backend != "uring":
        fixes.append("as an experiment only: --backend uring (slower than epoll on the "
                     "project's test VM, see README Performance)")
    return fixes


# Which socket buffer each limit caps: rmem_max caps SO_RCVBUF, wmem_max caps SO_SNDBUF.
_BUFFER_OF = {"net.core.rmem_max": "SO_RCVBUF (receive buffer)",
              "net.core.wmem_max": "SO_SNDBUF (send buffer)"}


def check_kernel_buffers(read: Any = linux.read_sysctl) -> list[Finding]:
    out = []
    for key, buffer in _BUFFER_OF.items():
        v = read(key)
        if v is None:
            out.append(Finding(f"a.{key}", WARN, "not readable"))
        elif int(v) < BUFFER_TARGET:
            out.append(Finding(f"a.{key}", WARN, f"{key} = {v} < {BUFFER_TARGET}: a requested "
                               f"{buffer} above it is capped",
                               "tools/tune_kernel_buffers.sh --apply"))
        else:
            out.append(Finding(f"a.{key}", OK, f"{key} = {v}"))
    for key in ("net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"):
        v = read(key)
        if v is None:
            continue
        top = int(v.split()[-1])
        status = OK if top >= BUFFER_TARGET // 2 else WARN
        out.append(Finding(f"a.{key}", status, f"{key} = {v} (autotuning grows to {top})",
                           "" if status == OK else "tools/tune_kernel_buffers.sh --apply"))
    return out


def check_effective_rcvbuf(stats: dict[str, Any] | None, requested: int) -> Finding:
    if not stats:
        return Finding("a.effective_rcvbuf", WARN, "no live connections to read back")
    t = stats["total"]
    lo, hi = t.get("rcvbuf_min", 0), t.get("rcvbuf_max", 0)
    ev = f"effective SO_RCVBUF {lo}..{hi} bytes (kernel's value)"
    if requested and lo and lo < requested:
        return Finding("a.effective_rcvbuf", WARN, ev + f" < requested {requested}",
                       "tools/tune_kernel_buffers.sh --apply, or socket.rcvbuf_force = true")
    return Finding("a.effective_rcvbuf", OK,
                   ev + ("" if requested else "; autotuning on (socket.rcvbuf = 0)"))


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str] | None:
    if shutil.which(cmd[0]) is None:
        return None
    return subprocess.run(cmd, capture_output=True, text=True, timeout=10)


def check_nic(nic: str | None) -> list[Finding]:
    if not nic:
        return [Finding("c.nic", WARN, "no NIC known (no default route)",
                        "set broker.nic or pass --nic IFACE")]
    k = _run(["ethtool", "-k", nic])
    if k is None:
        return [Finding("c.gro", WARN, "ethtool is not installed", "apt-get install ethtool")]
    out = []
    gro = next((ln.split(":", 1)[1].strip() for ln in k.stdout.splitlines()
                if ln.strip().startswith("generic-receive-offload")), "unknown")
    out.append(Finding("c.gro", OK if gro.startswith("on") else WARN,
                       f"{nic} generic-receive-offload: {gro}",
                       "" if gro.startswith("on") else f"tools/nic_tune.sh {nic} --apply"))
    c = _run(["ethtool", "-c", nic])
    if c is not None and c.returncode == 0:
        usecs = next((ln.split(":", 1)[1].strip() for ln in c.stdout.splitlines()
                      if ln.startswith("rx-usecs:")), "?")
        out.append(Finding("c.coalescing", OK, f"{nic} rx-usecs: {usecs}",
                           f"raise with tools/nic_tune.sh {nic} --apply --rx-usecs N if "
                           "interrupts dominate"))
    else:
        out.append(Finding("c.coalescing", OK, f"{nic}: interrupt coalescing not supported "
                           "by the device (nothing to tune)"))
    return out


def check_numa(status: dict[str, Any] | None, plan: dict[str, Any]) -> list[Finding]:
    out = []
    if plan.get("nic_node") is None:
        out.append(Finding("d.nic_node", WARN, f"NUMA node of {plan.get('nic')} is unknown; "
                           f"receivers on node {plan.get('cpu_node')}",
                           "on multi-node hosts set broker.nic to the publishers' NIC"))
    else:
        out.append(Finding("d.nic_node", OK, f"{plan['nic']} is on node {plan['nic_node']}"))
    if status is None:
        return out
    bad = [r for r in status["receivers"] if r.get("cpu") is not None
           and r.get("allowed_cpus") not in ([r["cpu"]], None)]
    pinned = [r["allowed_cpus"] for r in status["receivers"]]
    out.append(Finding("d.receiver_cpus", FAIL if bad else OK,
                       f"receivers pinned as planned: {pinned}"
                       if not bad else f"receivers not on their CPU: {bad}",
                       "" if not bad else "check cpusets (docker --cpuset-cpus) against the plan"))
    seg = status.get("segment_placement") or {}
    pages = seg.get("pages_by_node") or {}
    want = seg.get("planned_memory_node")
    if pages and want is not None:
        off = {n: c for n, c in pages.items() if int(n) != int(want)}
        out.append(Finding("d.segment_pages", WARN if off else OK,
                           f"segment pages by node {pages}, planned node {want}",
                           "" if not off else "set segment.memory_node, or start under "
                           "numa/launch.sh"))
    return out


def check_io_uring() -> Finding:
    try:
        from shardbroker.platform import uring

        ok, reason = uring.probe()
        return Finding("e.io_uring", OK if ok else WARN, reason,
                       "" if ok else "the broker falls back to epoll; see README (seccomp)")
    except ImportError:
        pass
    v = linux.read_sysctl("kernel.io_uring_disabled")
    if v not in (None, "0"):
        return Finding("e.io_uring", WARN, f"kernel.io_uring_disabled = {v}",
                       "sysctl -w kernel.io_uring_disabled=0")
    return Finding("e.io_uring", OK, f"kernel.io_uring_disabled = {v}")


def check_busy_poll(busy_poll_us: int) -> Finding:
    bp, br = linux.read_sysctl("net.core.busy_poll"), linux.read_sysctl("net.core.busy_read")
    ev = f"net.core.busy_poll = {bp}, busy_read = {br}, socket.busy_poll_us = {busy_poll_us}"
    return Finding("f.busy_poll", OK, ev + (" (off: a latency lever that costs CPU)"
                                            if not busy_poll_us and bp in ("0", None) else ""),
                   "for lower latency: socket.busy_poll_us = 50 or "
                   "tools/nic_tune.sh IFACE --apply --busy-poll 50")


def report(findings: list[Finding]) -> dict[str, Any]:
    return {"ok": not any(f.status == FAIL for f in findings),
            "findings": [asdict(f) for f in findings]}


def render(rep: dict[str, Any]) -> str:
    mark = {OK: "ok  ", WARN: "WARN", FAIL: "FAIL"}
    lines = []
    for f in rep["findings"]:
        lines.append(f"[{mark[f['status']]}] {f['check']}: {f['evidence']}")
        if f["fix"] and f["status"] != OK:
            # one fix per line, in the order to try them
            first, *rest = f["fix"].split("; ")
            lines.append(f"         fix: {first}")
            lines.extend(f"              {more}" for more in rest)
    return "\n".join(lines)


def gather(cfg: Any, endpoint: str | None, nic: str | None, self_test: bool = True,
           self_test_bytes: int = 512 << 20) -> dict[str, Any]:
    """Collect every finding, from a running broker or from a short loopback self-test."""
    from shardbroker.control import client, endpoints
    from shardbroker.errors import ShardbrokerError
    from shardbroker.platform.placement import placement_for

    if nic:
        cfg.broker.nic = nic
    plan = placement_for(cfg).to_dict()
    status = stats = None
    source = "none"
    try:
        ep = endpoints.resolve_client_endpoint(endpoint)
        status = client.request(ep, "status")
        stats = client.request(ep, "stats")
        source = f"running broker at {ep}"
    except ShardbrokerError:
        if self_test:
            status, stats = _self_test(self_test_bytes)
            source = "loopback self-test (1 receiver, 1 publisher)"
    findings = check_kernel_buffers()
    findings.append(check_effective_rcvbuf(stats, cfg.socket.rcvbuf))
    t = (stats or {}).get("total", {})
    findings.append(classify_receive(t.get("recv_calls_per_batch"), t.get("wakeups_per_batch"),
                                     cfg.socket.rcvlowat_cap,
                                     (status or {}).get("backend", cfg.broker.backend)))
    findings += check_nic(plan.get("nic"))
    findings += check_numa(status, plan)
    findings.append(check_io_uring())
    findings.append(check_busy_poll(cfg.socket.busy_poll_us))
    rep = report(findings)
    rep.update(source=source, placement=plan)
    return rep


def _self_test(nbytes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    import os
    import time

    from shardbroker.control import client
    from shardbroker.publisher import loadgen
    from shardbroker.supervisor.process import BrokerProcess

    args = ["--threads", "1", "--listen", "127.0.0.1:0", "--log-level", "warning",
            "--segment", f"shardbroker-doctor-{os.getpid()}", "--blog-size", "256MiB"]
    with BrokerProcess(args, stderr=subprocess.DEVNULL) as b:
        spec = loadgen.LoadSpec(host=b.host, port=b.port, connections=1,
                                batch_bytes=2 << 20, message_size=1024, total_bytes=nbytes)
        res = loadgen.run(spec, timeout_s=120)
        ctl = b.ready["control"]
        deadline = time.monotonic() + 5
        stats = client.request(ctl, "stats")
        while stats["total"]["batches"] < res["batches"] and time.monotonic() < deadline:
            time.sleep(0.2)
            stats = client.request(ctl, "stats")
        return client.request(ctl, "status"), stats
