"""The contenders, in report order. Shardbroker backends are data: add one to BACKENDS and it
runs wherever ``shardbroker run --help`` mentions it (else it is skipped with that reason)."""

from __future__ import annotations

from shardbroker.bench.contenders.base import Contender, Environment, RunContext
from shardbroker.bench.contenders.limit import LimitContender
from shardbroker.bench.contenders.nats import NatsContender
from shardbroker.bench.contenders.pyzmq import PyzmqContender
from shardbroker.bench.contenders.shardbroker import ShardbrokerContender
from shardbroker.bench.contenders.staging import StagingContender

BACKENDS = ("epoll", "uring")


def all_contenders() -> list[Contender]:
    return [LimitContender(), *[ShardbrokerContender(b) for b in BACKENDS], PyzmqContender(),
            StagingContender(), NatsContender()]


def by_name() -> dict[str, Contender]:
    return {c.name: c for c in all_contenders()}


__all__ = ["BACKENDS", "Contender", "Environment", "RunContext", "all_contenders", "by_name"]
