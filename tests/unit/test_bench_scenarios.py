"""Scenario selection and the CPU plan (pure)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shardbroker.bench.scenarios import FULL, QUICK, GiB, MiB, Scenario, plan_cpus, select


def test_full_set_matches_the_issue() -> None:
    s = {x.id: x for x in FULL}
    assert [x.id for x in FULL] == ["S1", "S2", "S3", "S4", "S5"]
    assert (s["S1"].publishers, s["S1"].receivers, s["S1"].batch_bytes) == (1, 1, 2 * MiB)
    assert s["S1"].total_bytes >= 4 * GiB
    assert (s["S2"].publishers, s["S2"].receivers) == (4, 2)
    assert s["S3"].batch_bytes == 64 << 10 and s["S4"].batch_bytes == 4 << 10
    assert s["S4"].primary == "batches_per_s"
    assert s["S5"].kind == "latency" and s["S5"].load_fraction == 0.5
    assert "nats" not in s["S5"].contenders and "pyzmq" not in s["S5"].contenders


def test_select_default_quick_and_named() -> None:
    assert select(None, quick=False) == list(FULL)
    assert select([], quick=True) == list(QUICK)
    assert [x.id for x in select(["s5", "S1"], quick=False)] == ["S1", "S5"]
    # a scenario outside the quick set still runs in quick mode, reduced
    s3 = select(["S3"], quick=True)[0]
    assert s3.id == "S3" and s3.total_bytes < FULL[2].total_bytes
    with pytest.raises(ValueError, match="unknown scenario S9"):
        select(["S9"], quick=False)


def test_quick_is_small() -> None:
    for s in QUICK:
        assert s.total_bytes <= 512 * MiB
        assert s.duration_s <= 2


def test_batches_per_publisher_split() -> None:
    s = Scenario("X", "x", 3, 1, 1 * MiB, total_bytes=10 * MiB)
    assert s.batches_per_publisher() == [4, 3, 3]
    assert sum(s.batches_per_publisher()) == 10
    assert s.describe()["total_bytes"] == 10 * MiB


def test_scenario_validation() -> None:
    with pytest.raises(ValueError):
        Scenario("X", "x", 0, 1, MiB, total_bytes=MiB)
    with pytest.raises(ValueError):
        Scenario("X", "x", 2, 1, MiB, total_bytes=MiB)
    with pytest.raises(ValueError):
        replace(FULL[4], duration_s=0)


def test_plan_two_cpus() -> None:
    p = plan_cpus([0, 1], receivers=1, publishers=1)
    assert p.receivers == (0,) and p.publishers == (1,)
    p = plan_cpus([0, 1], receivers=2, publishers=4)
    assert p.receivers == (0, 1) and p.publishers is None
    assert "unpinned" in p.note
    assert p.publisher_cpu(3) is None and p.receiver_cpu(3) == 1


def test_plan_many_and_one_cpu() -> None:
    p = plan_cpus([3, 2, 1, 0, 4, 5, 6, 7], receivers=2, publishers=4)
    assert p.receivers == (0, 1) and p.publishers == (2, 3, 4, 5)
    p = plan_cpus([0, 1, 2], receivers=1, publishers=4)
    assert p.publishers == (1, 2, 1, 2) and "sharing" in p.note
    p = plan_cpus([5], receivers=2, publishers=1)
    assert p.receivers == (5, 5) and p.publishers is None
    assert p.to_dict()["publishers"] is None
    with pytest.raises(ValueError):
        plan_cpus([], 1, 1)
