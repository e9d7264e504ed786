"""``shardbroker bench``: side-by-side benchmarks of the broker against the loopback limit and
baselines (see cli.py for the flags, scenarios.py for S1–S5, contenders/ for each contender,
schema.py for the JSON document).

Modules: scenarios (what is run, CPU plan), contenders/ (one module per contender), senders
and wire (the protocol publishers), procs (child processes), measure (/proc readers),
datacheck (no figure from a broken run), stats (medians, ratios), runner (interleaving),
document (the JSON result and targets), report (table, Markdown), plot (matplotlib).
consumers is a benchmark of its own (``make bench-consumers``): consumers' read rate,
retention ``block`` against ``overwrite``, and how fast a waiting reader wakes.
"""

from shardbroker.bench.cli import add_parser, run_from_args

__all__ = ["add_parser", "run_from_args"]
