"""``shardbroker bench``: argument parsing and the top-level flow."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from typing import Any

from shardbroker.bench import scenarios as sc_mod

DEFAULT_REPEAT = 3
QUICK_REPEAT = 1
RUN_TIMEOUT_S = 300.0

DESCRIPTION = """\
Benchmark the broker against the loopback limit (iperf3) and baselines (pyzmq, a naive
staging receiver, NATS). Each scenario's contenders run interleaved (A B C A B C ...),
K times; the report gives medians with min-max. Every shardbroker run is checked through
SegmentReader (counters plus sampled payload bytes) and a run that fails a check is left out
of the figures (exit status 1). Contenders whose tool is missing are skipped with a one-line
reason.

scenarios: S1 1 publisher / 1 receiver / 2 MiB batches / 4 GiB; S2 4 publishers /
2 receivers / 2 MiB; S3 1 publisher / 64 KiB; S4 1 publisher / 4 KiB (batches/s);
S5 publish-to-ack latency, 64 KiB batches at 50 % of S1's measured rate.
contenders: limit (iperf3 -l 1M, a client/server pair per stream), shardbroker-epoll,
shardbroker-uring (once `shardbroker run --help` offers it), pyzmq, staging, nats.
sink (S1, S3, S4) is not a contender: a receiver that only reads and acks, so its figure is
the ceiling of the bench's own senders; a contender well below it was not sender-limited.
--baseline DIR_OR_PYTHON adds shardbroker-epoll@base and shardbroker-uring@base: the broker
of another checkout (or interpreter) with the same arguments, interleaved with this one."""


def add_parser(subparsers: Any) -> None:
    """Add the ``bench`` subcommand to a parser's subparsers."""
    p = subparsers.add_parser(
        "bench", help="benchmark against iperf3, pyzmq, a staging receiver and NATS",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(p)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", action="append", metavar="NAME",
                   help="run only this scenario (S1..S5; repeat the flag for several; "
                        "default: all of the full or --quick set)")
    p.add_argument("--contender", action="append", metavar="NAME",
                   help="run only this contender (repeatable; default: all available)")
    p.add_argument("--baseline", metavar="DIR_OR_PYTHON",
                   help="also run the shardbroker contenders with the broker of another "
                        "checkout directory (its .venv/bin/python if it has one) or Python "
                        "interpreter, as <name>@base, side by side with this checkout's")
    p.add_argument("--repeat", type=int, metavar="K",
                   help=f"interleaved runs per contender (default {DEFAULT_REPEAT}, "
                        f"{QUICK_REPEAT} with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="a reduced set in under a minute (S1, S2, S4, S5 at small sizes): "
                        "a smoke test, not figures to quote")
    p.add_argument("--json", metavar="FILE",
                   help="write the result document (schema: shardbroker/bench/schema.py)")
    p.add_argument("--plot", metavar="FILE.png",
                   help="draw grouped bars with min-max whiskers (needs matplotlib: "
                        "pip install 'shardbroker[bench]'; skipped with a note without it)")
    p.add_argument("--markdown", metavar="FILE",
                   help="write the tables as Markdown, with the machine and date")
    p.add_argument("--timeout", type=float, default=RUN_TIMEOUT_S, metavar="S",
                   help=f"seconds one run may take before it counts as failed "
                        f"(default {RUN_TIMEOUT_S:g})")
    p.add_argument("--render", metavar="FILE",
                   help="run nothing: re-render the table, --markdown and --plot from a "
                        "result document written earlier with --json")
    p.add_argument("--list", action="store_true",
                   help="list scenarios and contenders (with skip reasons) and exit")
    p.add_argument("--quiet", action="store_true", help="no per-run progress on stderr")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _write(path: str, text: str) -> None:
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def run_from_args(args: argparse.Namespace) -> int:
    from shardbroker.bench import document, measure
    from shardbroker.bench.contenders import all_contenders
    from shardbroker.bench.contenders.base import probe_environment
    from shardbroker.bench.contenders.baseline import BaselineError, probe_baseline
    from shardbroker.bench.runner import run_bench

    if args.render:
        from shardbroker.bench.schema import validate

        with open(args.render) as f:
            doc = json.load(f)
        problems = validate(doc)
        if problems:
            print(f"shardbroker bench: error: {args.render} is not a bench result: "
                  f"{problems[0]}", file=sys.stderr)
            return 2
        return _outputs(doc, args)
    try:
        scenarios = sc_mod.select(args.scenario, args.quick)
    except ValueError as exc:
        print(f"shardbroker bench: error: {exc}", file=sys.stderr)
        return 2
    repeat = args.repeat if args.repeat is not None else (
        QUICK_REPEAT if args.quick else DEFAULT_REPEAT)
    if repeat < 1:
        print("shardbroker bench: error: --repeat must be >= 1", file=sys.stderr)
        return 2
    try:
        baseline = probe_baseline(args.baseline) if args.baseline else None
    except BaselineError as exc:
        print(f"shardbroker bench: error: --baseline {exc}", file=sys.stderr)
        return 2
    contenders = all_contenders(baseline)
    if args.contender:
        known = {c.name for c in contenders}
        unknown = set(args.contender) - known
        if unknown:
            hint = " (the @base contenders need --baseline)" if any(
                "@" in u for u in unknown) and baseline is None else ""
            print(f"shardbroker bench: error: unknown contender {', '.join(sorted(unknown))}: "
                  f"pick from {', '.join(sorted(known))}{hint}", file=sys.stderr)
            return 2
        contenders = [c for c in contenders if c.name in args.contender]
    env = probe_environment()
    if args.list:
        if baseline is not None:
            print(f"baseline: {baseline.label}")
        for s in scenarios:
            print(f"{s.id}: {s.title}")
        for c in contenders:
            reason = c.availability(env)
            print(f"{c.name}: {c.description}" + (f" [skipped: {reason}]" if reason else ""))
        return 0

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    if baseline is not None:
        log(f"baseline: {baseline.label}")

    started = _now()
    outcomes = run_bench(scenarios, contenders, env, repeat, log=log, timeout_s=args.timeout)
    doc = document.build_document(
        outcomes,
        options={"repeat": repeat, "quick": args.quick, "scenarios": [s.id for s in scenarios],
                 "contenders": [c.name for c in contenders], "timeout_s": args.timeout,
                 "baseline": None if baseline is None else baseline.describe()},
        machine=measure.machine_info(),
        environment={"tools": dict(env.tools), "modules": dict(env.modules)},
        started=started, finished=_now())
    if args.json:
        _write(args.json, json.dumps(doc, indent=1) + "\n")
    return _outputs(doc, args)


def _outputs(doc: dict[str, Any], args: argparse.Namespace) -> int:
    """The table on stdout, then the --markdown and --plot files; the exit status."""
    from shardbroker.bench import plot, report

    print(report.render_text(doc), end="")
    if args.markdown:
        _write(args.markdown, report.render_markdown(doc))
    if args.plot:
        plot_skip = plot.matplotlib_missing()
        if plot_skip:
            print(plot_skip, file=sys.stderr)
        else:
            d = os.path.dirname(args.plot)
            if d:
                os.makedirs(d, exist_ok=True)
            plot.write_plot(doc, args.plot)
    return 0 if doc["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="shardbroker bench", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(p)
    return run_from_args(p.parse_args(argv))
