"""The contenders, in report order. Shardbroker backends are data: add one to BACKENDS and it
runs wherever ``shardbroker run --help`` mentions it (else it is skipped with that reason).
With a baseline (``--baseline``), each shardbroker contender is followed by its ``@base`` copy
running the baseline's broker; the sink (the senders' own ceiling) comes last."""

from __future__ import annotations

from shardbroker.bench.contenders.base import Contender, Environment, RunContext
from shardbroker.bench.contenders.baseline import Baseline, BaselineContender
from shardbroker.bench.contenders.limit import LimitContender
from shardbroker.bench.contenders.nats import NatsContender
from shardbroker.bench.contenders.pyzmq import PyzmqContender
from shardbroker.bench.contenders.shardbroker import ShardbrokerContender
from shardbroker.bench.contenders.sink import SinkContender
from shardbroker.bench.contenders.staging import StagingContender

BACKENDS = ("epoll", "uring")


def shardbroker_contenders(baseline: Baseline | None = None) -> list[Contender]:
    out: list[Contender] = []
    for b in BACKENDS:
        out.append(ShardbrokerContender(b))
        if baseline is not None:
            out.append(BaselineContender(b, baseline))
    return out


def all_contenders(baseline: Baseline | None = None) -> list[Contender]:
    return [LimitContender(), *shardbroker_contenders(baseline), PyzmqContender(),
            StagingContender(), NatsContender(), SinkContender()]


def by_name(baseline: Baseline | None = None) -> dict[str, Contender]:
    return {c.name: c for c in all_contenders(baseline)}


__all__ = ["BACKENDS", "Baseline", "Contender", "Environment", "RunContext", "all_contenders",
           "by_name"]
