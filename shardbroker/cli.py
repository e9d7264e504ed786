"""``shardbroker`` command line: run, publish, dump, demo."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from shardbroker import config as config_mod
from shardbroker.errors import ShardbrokerError

SIZE_HELP = ("bytes, or with a unit: binary KiB, MiB, GiB, TiB (2^10..2^40) or decimal kB, MB, "
             "GB, TB (10^3..10^12), e.g. 4096, 64KiB, 2MiB, 1GB")


class _Parser(argparse.ArgumentParser):
    """No prefix matching: ``--thread 2`` must not silently mean ``--threads 2``.

    Passed as ``parser_class`` so every subparser gets it, including the ones that
    ``bench`` and ``cli_consumers`` add through ``sub.add_parser``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _size(text: str) -> int:
    try:
        return config_mod.parse_size(text)
    except ShardbrokerError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be more than 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="shardbroker",
        description="Publish-receive path of a pub/sub broker node: receiver processes (one "
                    "per CPU) land Embarcadero publish batches in a POSIX shared-memory log.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=_Parser)

    run = sub.add_parser(
        "run", help="start a broker node (supervisor + receivers)",
        description="Start the supervisor: create and prefault the segment, spawn one pinned "
                    "receiver per CPU, accept publishers. Prints one JSON 'ready' line on "
                    "stdout; logs go to stderr. SIGINT/SIGTERM stop it cleanly.",
    )
    run.add_argument("--config", help="TOML config file (see conf/broker.toml)")
    run.add_argument("--threads", type=int, help="receiver processes (default: one per CPU "
                     "this process may run on)")
    run.add_argument("--listen", help="HOST:PORT to accept publishers on (port 0: any free "
                     "port; default 127.0.0.1:1214)")
    run.add_argument("--segment", help="shm segment name (default shardbroker-<pid>)")
    run.add_argument("--recover", metavar="SEGMENT",
                     help="re-attach the segment of a broker that died and continue each "
                          "shard's log after its last committed batch")
    run.add_argument("--keep-segment", action="store_true",
                     help="leave the segment in /dev/shm at exit, for readers")
    run.add_argument("--blog-size", type=_size, help=f"BLog ring per shard ({SIZE_HELP})")
    run.add_argument("--pbr-slots", type=int, help="PBR ring slots per shard")
    run.add_argument("--retention", choices=config_mod.RETENTIONS,
                     help="full rings: overwrite the oldest batches (default), or block "
                          "publishers while a live consumer still needs the space")
    run.add_argument("--consumer-timeout", type=float, metavar="SECONDS",
                     help="a consumer silent this long stops holding data back (default 10)")
    run.add_argument("--rcvlowat-cap", type=_size,
                     help="SO_RCVLOWAT cap per connection, 0 = off (default 1MiB)")
    run.add_argument("--rcvbuf", type=_size,
                     help="SO_RCVBUF per connection, 0 = kernel autotuning (default)")
    run.add_argument("--broker-id", type=int, help="broker id (top 16 bits of batch_id)")
    run.add_argument("--no-pin", action="store_true", help="do not pin receivers to CPUs")
    run.add_argument("--oversubscribe", action="store_true",
                     help="allow more receivers (--threads) than the CPUs they may run on; "
                          "they then share CPUs (refused without it)")
    run.add_argument("--backend", choices=config_mod.BACKENDS,
                     help="receive backend: auto (io_uring where the kernel allows it, else "
                          "epoll, logging why), epoll, or uring (fail if unavailable)")
    run.add_argument("--log-level", choices=config_mod.key_of("log.level").choices)

    from shardbroker.publisher.placement import PLACEMENTS

    pub = sub.add_parser(
        "publish", help="load generator: publisher processes streaming batches",
        description="Run publisher processes (one per connection) against a broker and print "
                    "a summary; --json prints one JSON line. With several brokers "
                    "(--connect a:1214,b:1214) or --cluster, each process connects to every "
                    "broker, spreads its batches over them and re-sends a failed broker's "
                    "unacked batches to the others; the summary has one line per broker.",
    )
    pub.add_argument("--connect", required=True,
                     help="broker HOST:PORT, or a comma-separated list of them (a cluster); "
                          "in a cluster a HOST that is a name stands for every address it "
                          "resolves to, e.g. a Kubernetes headless Service")
    pub.add_argument("--cluster", action="store_true",
                     help="treat --connect as a cluster even when it is one HOST:PORT: "
                          "connect to every address the name resolves to, re-resolve it "
                          "every --refresh seconds and after a broker fails")
    pub.add_argument("--placement", choices=PLACEMENTS,
                     help="cluster: send each batch to the broker with the fewest bytes in "
                          "flight (default), or round robin")
    pub.add_argument("--refresh", type=_positive_float, default=5.0, metavar="SECONDS",
                     help="cluster: re-resolve broker names this often (default 5)")
    pub.add_argument("--hosts-file", metavar="PATH",
                     help="cluster: look names up in this hosts(5)-format file first, one "
                          "line per address (a name may have several lines), then in DNS")
    pub.add_argument("--connections", type=int, default=1, help="publisher processes")
    pub.add_argument("--batch-size", type=_size, default=2 << 20, help=f"({SIZE_HELP})")
    pub.add_argument("--message-size", type=_size, default=1024, help=f"({SIZE_HELP})")
    amount = pub.add_mutually_exclusive_group(required=True)
    amount.add_argument("--total", type=_size, help=f"bytes across all connections ({SIZE_HELP})")
    amount.add_argument("--duration", type=float, help="seconds to publish for")
    pub.add_argument("--topic", default="load")
    pub.add_argument("--ack", type=int, choices=[0, 1], default=1,
                     help="ack level: 1 waits for commit acks (default), 0 none")
    pub.add_argument("--max-in-flight", type=int, default=32,
                     help="unacked batches allowed (per broker in a cluster)")
    pub.add_argument("--retries", type=int, default=None,
                     help="one broker: reconnect up to N times when it drops a connection, "
                          "resending unacked batches (the broker skips ones it has; default "
                          "0). Cluster: send a batch at most N more times after its broker "
                          "failed (default 3)")
    pub.add_argument("--rate", type=_size, help="pace each connection to this many bytes "
                     "per second (default: as fast as possible)")
    pub.add_argument("--cpus", help="pin publisher i to CPU list[i %% len], e.g. 1 or 0,1")
    pub.add_argument("--json", action="store_true", help="print one JSON summary line")

    dump = sub.add_parser("dump", help="summarise (and verify) a segment",
                          description="Per shard: batches, bytes, first/last batch; --verify "
                                      "walks every message header of every committed batch.")
    dump.add_argument("--segment", required=True)
    dump.add_argument("--json", action="store_true")
    dump.add_argument("--verify", action="store_true")

    demo = sub.add_parser("demo", help="broker + publishers for ~10 s, then a checked summary",
                          description="Start a broker on built-in defaults (retention "
                                      "`block`), stream from publisher processes, verify every "
                                      "acked message as a named consumer (the broker keeps "
                                      "each batch until it is checked), print a summary that "
                                      "ends with an OK or FAILED line.")
    demo.add_argument("--duration", type=_positive_float, default=10.0,
                      help="seconds to publish for (default 10)")
    demo.add_argument("--connections", type=_positive_int, default=4,
                      help="publisher processes (default 4)")
    demo.add_argument("--threads", type=int, default=0, help="receivers (0: one per CPU)")
    demo.add_argument("--batch-size", type=_size, default=2 << 20)
    demo.add_argument("--message-size", type=_size, default=1024)
    demo.add_argument("--json", action="store_true")
    demo.add_argument("--log", metavar="PATH", help="broker log file (default: "
                      "$TMPDIR/shardbroker-demo-<pid>.log; its path is printed)")
    for name, help_ in (("status", "the broker's receivers, CPUs, connections"),
                        ("stats", "throughput, recv calls per batch, CPU per shard and total"),
                        ("top", "live view of every receiver"),
                        ("drain", "stop taking new connections (open ones keep streaming)"),
                        ("stop", "stop the broker cleanly"),
                        ("scale", "change the number of receivers without dropping publishers")):
        c = sub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".")
        c.add_argument("--control", help="control endpoint (default: the local broker's, "
                       "or $SHARDBROKER_CONTROL)")
        c.add_argument("--segment", metavar="NAME", help="the local broker serving this "
                       "segment, when several run here (`shardbroker status` lists them)")
        c.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for a reply")
        c.add_argument("--curve-server-key", help="broker's CURVE public key file (tcp:// "
                       "endpoints with CURVE)")
        if name != "top":
            c.add_argument("--json", action="store_true", help="one JSON object")
        if name == "scale":
            c.add_argument("threads", type=int, help="receivers to run")
        if name in ("stats", "top"):
            c.add_argument("--wide", action="store_true",
                           help="every column (pid, messages, wakeups, SO_RCVBUF range, RSS, "
                                "rejections, time held back); the default fits 80 columns")
        if name == "top":
            c.add_argument("--interval", type=float, default=1.0, help="seconds between "
                           "refreshes")
    topo = sub.add_parser("topology", help="NUMA nodes, the NIC's node and the placement plan",
                          description="Discover NUMA nodes (CPU lists, memory-only nodes such "
                                      "as CXL), the NIC's node, and print where receivers and "
                                      "the segment would go.")
    topo.add_argument("--nic", help="interface publishers arrive on (default: default route)")
    topo.add_argument("--config", help="TOML config (reserve_cpus, memory_node, ...)")
    topo.add_argument("--json", action="store_true")
    doc = sub.add_parser("doctor", help="check every receive-path lever and say how to fix it",
                         description="The recommended order of levers as checks: kernel "
                                     "buffers, recv calls per batch, GRO/coalescing, NUMA, "
                                     "io_uring, busy polling. Uses a running broker, or runs a "
                                     "short loopback self-test. Exit 1 if anything fails.")
    doc.add_argument("--control", help="control endpoint of a running broker")
    doc.add_argument("--segment", metavar="NAME", help="the local broker serving this "
                     "segment, when several run here")
    doc.add_argument("--nic", help="interface to check (default: default route)")
    doc.add_argument("--config", help="TOML config the broker runs with")
    doc.add_argument("--no-self-test", action="store_true",
                     help="do not start a broker when none is running")
    doc.add_argument("--json", action="store_true")
    from shardbroker.bench import add_parser as add_bench_parser
    from shardbroker.cli_consumers import add_parsers as add_consumer_parsers

    add_consumer_parsers(sub)

    add_bench_parser(sub)
    keys = sub.add_parser("keys", help="write a CURVE key pair for a tcp:// control endpoint",
                          description="Write broker.key (public, for clients) and "
                                      "broker.key_secret (mode 0600, for the broker) into "
                                      "DIRECTORY (created 0700 if missing).")
    keys.add_argument("directory")
    keys.add_argument("--json", action="store_true", help="one JSON object")
    return p


def _control(a: argparse.Namespace, cmd: str, **args: Any) -> Any:
    from shardbroker.control import client, endpoints

    endpoint = endpoints.resolve_client_endpoint(a.control, a.segment)
    return client.request(endpoint, cmd, timeout_s=a.timeout,
                          curve_server_key=a.curve_server_key, **args)


def _list_brokers(brokers: list[Any], as_json: bool) -> int:
    """``status`` with several brokers running and none picked: which ones, and how to pick."""
    hint = "pick one with --segment NAME or --control ENDPOINT"
    if as_json:
        print(json.dumps({"brokers": [b.to_dict() for b in brokers], "hint": hint}))
        return 0
    print(f"{len(brokers)} brokers run on this host; {hint}:")
    for b in brokers:
        print(f"  segment {b.segment}  pid {b.pid}  listen {b.listen}  control {b.control}")
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    from shardbroker.control.endpoints import SeveralBrokers

    try:
        st = _control(a, "status")
    except SeveralBrokers as exc:
        return _list_brokers(exc.brokers, a.json)
    if a.json:
        print(json.dumps(st))
        return 0
    print(f"broker pid {st['pid']} listening on {st['listen']}, segment {st['segment']}, "
          f"{st['threads']}/{st['max_threads']} receivers ({st['backend']})"
          + (", DRAINING" if st["draining"] else ""))
    for r in st["receivers"]:
        print(f"  shard {r['shard']}: pid {r['pid']} {r['state']} cpu {r['cpu']} "
              f"(allowed {r['allowed_cpus']}), {r['open_connections']} connections, "
              f"{r['restarts']} restarts ({r.get('watchdog_kills', 0)} by the watchdog), "
              f"backend {r['backend']}")
    if st.get("scale_failure"):
        print(f"  last scale-up failed: {st['scale_failure']} (that shard stays inactive)")
    consumers = st.get("consumers", [])
    print(f"  retention {st.get('retention', 'overwrite')}, {len(consumers)} consumers"
          + "".join(f"; {c['name']} {c['state']} lag {sum(c['lag'])}" for c in consumers))
    return 0


def cmd_stats(a: argparse.Namespace) -> int:
    st = _control(a, "stats")
    if a.json:
        print(json.dumps(st))
        return 0
    from rich.console import Console

    from shardbroker.control.top import render

    Console().print(render(st, wide=a.wide))
    return 0


def cmd_top(a: argparse.Namespace) -> int:
    from shardbroker.control.top import run_top

    run_top(lambda: _control(a, "stats"), a.interval, wide=a.wide)
    return 0


def render_simple(command: str, reply: dict[str, Any]) -> str:
    """The text form of a scale / drain / stop reply (``--json`` prints the reply itself)."""
    if command == "drain":
        return "draining: no new connections are accepted; open ones keep streaming"
    if command == "stop":
        return "stopping: receivers finish the batches in flight, then the broker exits"
    n = reply["threads"]
    lines = [f"scaled to {n} receiver{'' if n == 1 else 's'}"]
    lines += [f"  shard {r['shard']}: pid {r['pid']} {r['state']} cpu {r['cpu']}, "
              f"{r['open_connections']} connections" for r in reply.get("receivers", [])]
    return "\n".join(lines)


def cmd_simple(a: argparse.Namespace) -> int:
    args = {"threads": a.threads} if a.command == "scale" else {}
    reply = _control(a, a.command, **args)
    print(json.dumps(reply) if a.json else render_simple(a.command, reply))
    return 0


def write_keys(directory: str) -> tuple[str, str]:
    """A CURVE key pair in ``directory`` (made 0700 if new): public 0644, secret 0600.

    The umask keeps the secret unreadable to others from its first byte (pyzmq writes it with
    the process umask); the chmods also fix files that existed before (pyzmq rewrites them in
    place, keeping their old mode)."""
    import os

    from zmq import auth as zmq_auth

    old = os.umask(0o077)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        public, secret = zmq_auth.create_certificates(directory, "broker")
    finally:
        os.umask(old)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return public, secret


def cmd_keys(a: argparse.Namespace) -> int:
    public, secret = write_keys(a.directory)
    if a.json:
        print(json.dumps({"public": public, "secret": secret,
                          "hint": "set control.curve_secret_key_file to the secret file; give "
                                  "clients the public file (--curve-server-key)"}))
        return 0
    print(f"secret key (mode 0600): {secret}\n  broker: control.curve_secret_key_file = "
          f"\"{secret}\"\npublic key: {public}\n  clients: --curve-server-key {public}")
    return 0


def cmd_topology(a: argparse.Namespace) -> int:
    from shardbroker.platform.placement import placement_for
    from shardbroker.platform.topology import read_topology

    cfg = config_mod.load(a.config)
    if a.nic:
        cfg.broker.nic = a.nic
    plan = placement_for(cfg)
    topo = read_topology("/", nic=plan.nic)
    out: dict[str, Any] = {
        "nodes": [{"node": n.node_id, "cpus": list(n.cpus), "memory_kb": n.memory_kb,
                   "memory_only": not n.has_cpus} for n in topo.nodes],
        "allowed_cpus": list(topo.allowed_cpus), "plan": plan.to_dict(),
    }
    if a.json:
        print(json.dumps(out))
        return 0
    for n in out["nodes"]:
        print(f"node {n['node']}: cpus {n['cpus'] or '-'}"
              + (" (memory only, e.g. CXL)" if n["memory_only"] else "")
              + (f", {n['memory_kb'] // 1024} MiB" if n["memory_kb"] else ""))
    p = out["plan"]
    print(f"allowed cpus {out['allowed_cpus']}; NIC {p['nic']} on node {p['nic_node']}")
    print(f"plan: receivers on cpus {p['receiver_cpus']} (node {p['cpu_node']}), segment "
          f"memory on node {p['memory_node']}, reserved {p['reserved_cpus']}")
    for note in p["notes"]:
        print(f"  note: {note}")
    return 0


def cmd_doctor(a: argparse.Namespace) -> int:
    from shardbroker import doctor
    from shardbroker.control import endpoints

    cfg = config_mod.load(a.config)
    endpoint = a.control or (endpoints.endpoint_for_segment(a.segment) if a.segment else None)
    if endpoint is None and len(running := endpoints.live_brokers()) > 1:
        raise endpoints.SeveralBrokers(running)  # not a self-test beside brokers left unchecked
    rep = doctor.gather(cfg, endpoint, a.nic, self_test=not a.no_self_test)
    print(json.dumps(rep) if a.json else f"source: {rep['source']}\n" + doctor.render(rep))
    return 0 if rep["ok"] else 1


def _run_overrides(a: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The config keys the run flags set (which flag sets which key: config/schema.py)."""
    return config_mod.overrides_from_flags(vars(a))


def cmd_run(a: argparse.Namespace) -> int:
    from shardbroker import log as logmod
    from shardbroker.supervisor.supervisor import StartInterrupted, Supervisor

    cfg = config_mod.load(a.config, _run_overrides(a))
    logmod.configure(cfg.log.level, cfg.log.format, role="supervisor", shard=None)
    sup = Supervisor(cfg, logmod.get("shardbroker.supervisor"))
    sup.install_signals()
    try:
        sup.start()
    except StartInterrupted as exc:
        sup.abort()
        return 128 + exc.signum  # the shell's code for "ended by this signal"
    except BaseException:
        sup.abort()
        raise
    return sup.serve()


def cmd_publish(a: argparse.Namespace) -> int:
    from shardbroker.publisher import loadgen

    cluster = a.cluster or "," in a.connect
    if cluster:
        host, port = _check_cluster(a)
    else:
        if a.hosts_file or a.placement is not None:
            raise ValueError("--hosts-file and --placement need a cluster: list several brokers "
                             "in --connect or add --cluster")
        host, port = config_mod.parse_hostport(a.connect, "--connect")
    cpus = tuple(int(c) for c in a.cpus.split(",")) if a.cpus else ()
    spec = loadgen.LoadSpec(
        host=host, port=port, connections=a.connections,
        batch_bytes=a.batch_size, message_size=a.message_size, total_bytes=a.total,
        duration_s=a.duration, topic=a.topic, ack=a.ack, max_in_flight=a.max_in_flight,
        cpus=cpus, rate_bytes_s=a.rate,
        retries=a.retries if a.retries is not None else (3 if cluster else 0),
        brokers=a.connect if cluster else "", hosts_file=a.hosts_file or "",
        placement=a.placement or "least-bytes", refresh_s=a.refresh,
    )
    summary = loadgen.run(spec, show_progress=loadgen.progress_wanted(a.json))
    if a.json:
        print(json.dumps(summary))
    else:
        print(f"published {summary['bytes'] / 2**20:.1f} MiB in {summary['batches']} batches "
              f"({summary['messages']} messages, {summary['acked_messages']} acked) over "
              f"{summary['connections']} connections in {summary['seconds']:.2f} s: "
              f"{summary['gbps']:.2f} GB/s")
        for line in loadgen.render_brokers(summary):
            print(line)
        for err in summary["errors"]:
            print(f"error: {err}", file=sys.stderr)
    return 1 if summary["errors"] else 0


def _check_cluster(a: argparse.Namespace) -> tuple[str, int]:
    """Resolve the brokers once here, so that a bad entry, a name that resolves to nothing or
    an unreadable hosts file is one line (exit 2) before any publisher process starts.
    Returns the first entry's host and port (the summary's nominal broker)."""
    import time

    from shardbroker.publisher.membership import (
        Membership,
        hosts_file_resolver,
        parse_targets,
        read_hosts_file,
    )

    if a.ack == 0:
        raise ValueError("a cluster needs --ack 1: acks are how a failed broker's batches "
                         "are known and re-sent")
    targets = parse_targets(a.connect)
    if a.hosts_file:
        read_hosts_file(a.hosts_file)  # unreadable or malformed: say so now, not per process
    resolver = hosts_file_resolver(a.hosts_file) if a.hosts_file else None
    Membership(targets, resolver).start(time.monotonic())
    return targets[0].host, targets[0].port


def cmd_dump(a: argparse.Namespace) -> int:
    from shardbroker.segment.inspect import dump_segment, render_dump

    report = dump_segment(a.segment, verify=a.verify)
    print(json.dumps(report) if a.json else render_dump(report))
    return 0 if report.get("ok", True) else 1


def cmd_demo(a: argparse.Namespace) -> int:
    from shardbroker.demo import run_demo

    return run_demo(duration_s=a.duration, connections=a.connections, threads=a.threads,
                    batch_bytes=a.batch_size, message_size=a.message_size, as_json=a.json,
                    log_path=a.log)


def cmd_tail(a: argparse.Namespace) -> int:
    from shardbroker.cli_consumers import cmd_tail as run

    return run(a)


def cmd_consumers(a: argparse.Namespace) -> int:
    from shardbroker.cli_consumers import cmd_consumers as run

    return run(a)


def cmd_bench(a: argparse.Namespace) -> int:
    from shardbroker.bench import run_from_args

    return run_from_args(a)


COMMANDS = {"run": cmd_run, "publish": cmd_publish, "dump": cmd_dump, "demo": cmd_demo,
            "status": cmd_status, "stats": cmd_stats, "top": cmd_top, "drain": cmd_simple,
            "stop": cmd_simple, "scale": cmd_simple, "keys": cmd_keys,
            "topology": cmd_topology, "doctor": cmd_doctor, "bench": cmd_bench,
            "tail": cmd_tail, "consumers": cmd_consumers}



def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ShardbrokerError as exc:
        print(f"shardbroker {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"shardbroker {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
