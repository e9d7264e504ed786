"""``limit``: what loopback TCP moves with iperf3 writing 1 MiB at a time, one client/server
pair per publisher stream (iperf3 3.12 runs all streams of one process on one thread, so
``-P`` would measure iperf3, not the path). Servers are pinned like receivers, clients like
publishers; the receiving side measured is the iperf3 servers."""

from __future__ import annotations

import json
import subprocess
import time

from shardbroker.bench import measure
from shardbroker.bench.contenders.base import Contender, Environment, RunContext, fill_usage
from shardbroker.bench.contenders.staging import run_ack_receivers
from shardbroker.bench.procs import Children, free_port, pinned, wait_listening
from shardbroker.bench.result import RunFailed, RunResult
from shardbroker.bench.scenarios import Scenario

WRITE = "1M"


def parse_client_json(text: str) -> tuple[int, float, int]:
    """(bytes received, seconds, bytes sent) from ``iperf3 -J`` client output."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunFailed(f"iperf3 printed no JSON: {text[:200]!r}") from exc
    if doc.get("error"):
        raise RunFailed(f"iperf3: {doc['error']}")
    end = doc.get("end", {})
    rcvd, sent = end.get("sum_received", {}), end.get("sum_sent", {})
    if "bytes" not in rcvd or "bytes" not in sent:
        raise RunFailed("iperf3 JSON has no end.sum_received / end.sum_sent")
    return int(rcvd["bytes"]), float(rcvd["seconds"]), int(sent["bytes"])


class LimitContender(Contender):
    name = "limit"
    description = (f"iperf3 -l {WRITE}, one client/server pair per publisher stream; in S5 "
                   "(iperf3 has no acks) a minimal recv_into + ack server: the latency floor")
    acks = True  # latency: the floor server

    def availability(self, env: Environment) -> str | None:
        if not env.has_tool("iperf3"):
            return "iperf3 not found: apt-get install -y iperf3 (or `make bench`)"
        return None

    def supports(self, sc: Scenario) -> str | None:
        if sc.kind == "throughput" and sc.batch_bytes < 16 << 10:
            return f"iperf3 -l {WRITE} has no {sc.batch_bytes >> 10} KiB batches to count"
        return None

    def run(self, sc: Scenario, ctx: RunContext) -> RunResult:
        res = self.new_result(sc, ctx)
        if sc.kind == "latency":
            res.extra["floor"] = "blocking recv_into + ack, no shm checks (iperf3 has no acks)"
            return run_ack_receivers(res, sc, ctx, floor=True)
        iperf3 = str(ctx.env.tools["iperf3"])
        children = Children()
        shares = [n * sc.batch_bytes for n in sc.batches_per_publisher()]
        try:
            servers = []
            ports = []
            for i in range(sc.publishers):
                port = free_port()
                cpu = ctx.plan.receiver_cpu(i % sc.receivers)
                srv = children.popen(pinned([iperf3, "-s", "-B", "127.0.0.1", "-p", str(port)],
                                            [cpu]),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                servers.append(srv)
                ports.append(port)
            for port in ports:
                wait_listening(port, alive=lambda: all(s.poll() is None for s in servers))
            pids = [s.pid for s in servers]
            before = measure.snapshot(pids)
            with measure.RssSampler(pids) as rss:
                clients = []
                for i, (port, share) in enumerate(zip(ports, shares, strict=True)):
                    pub_cpu = ctx.plan.publisher_cpu(i)
                    cmd = [iperf3, "-c", "127.0.0.1", "-p", str(port), "-l", WRITE,
                           "-n", str(share), "-J"]
                    clients.append(children.popen(pinned(cmd, None if pub_cpu is None
                                                         else [pub_cpu]),
                                                  stdout=subprocess.PIPE,
                                                  stderr=subprocess.DEVNULL))
                outs = _wait_all(clients, ctx.timeout_s)
                after = measure.snapshot(pids)
            fill_usage(res, measure.usage(before, after), rss.peak_mib)
            results = [parse_client_json(o) for o in outs]
            res.bytes = sum(r[0] for r in results)
            res.seconds = max(r[1] for r in results)
            res.batches = res.bytes // sc.batch_bytes  # the scenario's batches, for per-batch
            sent = sum(r[2] for r in results)
            # iperf3's received total can stop short of the last few writes; sent is exact.
            res.data_check = {"kind": "iperf3 byte count", "ok": sent >= sum(shares),
                              "problems": [] if sent >= sum(shares) else
                              [f"iperf3 sent {sent} of {sum(shares)} bytes"]}
            if not res.data_check["ok"]:
                raise RunFailed(res.data_check["problems"][0])
        except (RunFailed, OSError, ValueError) as exc:
            res.fail(str(exc))
        finally:
            children.close()
        return res


def _wait_all(clients: list[subprocess.Popen[bytes]], timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    outs = []
    for c in clients:
        try:
            out, _ = c.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired as exc:
            raise RunFailed(f"iperf3 still running after {timeout_s:.0f} s") from exc
        outs.append(out.decode("utf-8", "replace"))
    return outs


