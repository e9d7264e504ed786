"""The demo's verdict and its checker loop, without a broker: the last line says OK or FAILED
and why; an expired checker is reported as unchecked batches, not as a loss; the checker
drains what was committed before the publishers finished."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

from shardbroker.consumer.consumer import Consumer
from shardbroker.demo import Checker, judge, render_summary
from shardbroker.errors import ConsumerExpired
from shardbroker.segment.reader import Batch
from shardbroker.verify import Verifier, VerifyReport


def _summary(**verify: Any) -> dict[str, Any]:
    report = VerifyReport(batches_checked=100, payloads_compared=13)
    for k, v in verify.items():
        setattr(report, k, v)
    return {
        "receivers": 2, "publishers": 4, "retention": "block", "gbps": 1.5, "bytes": 2 << 30,
        "seconds": 10.0, "batches": 100, "acked_messages": 96300, "recv_calls_per_batch": 2.5,
        "payload_recv_calls_per_batch": 1.5, "wakeups_per_batch": 0.2, "rcvbuf_min": 1,
        "rcvbuf_max": 2, "backpressured_s": 0.4, "parks": 12, "broker_log": "/tmp/x.log",
        "checker": {"name": "demo-checker", "batches": 100, "cpu_s": 1.0, "wall_s": 10.5,
                    "busy": 0.25, "expired": 0, "cpus": 2},
        "verify": report.to_dict(), "broker_exit_code": 0, "publisher_errors": [],
    }


def _verdict(s: dict[str, Any]) -> str:
    ok, s["verdict"] = judge(s)
    last = render_summary(s).splitlines()[-1]
    assert last == s["verdict"]  # the verdict is the summary's last line
    assert last.startswith("OK: " if ok else "FAILED: ")
    return last


def test_a_clean_run_says_ok() -> None:
    assert _verdict(_summary()) == ("OK: every acked message (96300) is in the segment exactly "
                                    "once; 100 batches checked, 13 byte for byte")


def test_missing_and_corrupt_batches_say_failed() -> None:
    line = _verdict(_summary(missing_acked_batches=2, corrupt=1))
    assert line == "FAILED: 2 acked batches missing, 1 batches with wrong bytes"


def test_broker_and_publisher_trouble_say_failed() -> None:
    s = _summary()
    s["broker_exit_code"], s["publisher_errors"] = 1, ["connection reset"]
    assert _verdict(s) == "FAILED: 1 publisher errors, broker exit code 1"


def test_an_expired_checker_is_not_reported_as_a_loss() -> None:
    s = _summary(missing_acked_batches=5, lapped=5)
    s["checker"]["expired"] = 1
    line = _verdict(s)
    assert "5 batches went unchecked" in line and "not evidence of loss" in line
    assert "missing" not in line


class _FakeConsumer:
    """Yields the scripted batches; the first call raises ConsumerExpired once if asked."""

    def __init__(self, rounds: list[list[Batch]], expire_first: bool) -> None:
        self.rounds = rounds
        self.expire_first = expire_first
        self.rejoined = 0
        self.timeouts: list[float | None] = []

    def batches(self, idle_timeout_s: float | None = None) -> Iterator[Batch]:
        self.timeouts.append(idle_timeout_s)
        if self.expire_first:
            self.expire_first = False
            raise ConsumerExpired("silent", hint="rejoin")
        yield from (self.rounds.pop(0) if self.rounds else [])

    def rejoin(self) -> None:
        self.rejoined += 1


def test_checker_rejoins_after_expiry_and_still_drains() -> None:
    batch = cast(Batch, SimpleNamespace(client_id=7))  # a client the verifier ignores
    fake = _FakeConsumer([[batch]], expire_first=True)
    seen: list[Batch] = []
    checker = Checker(cast(Consumer, fake), Verifier([]), before_check=seen.append)
    done = threading.Thread(target=lambda: None)
    done.start()
    done.join()
    checker.check_until(done)  # publishing is over: drain, even across an expiry
    assert checker.stats.expired == 1 and fake.rejoined == 1
    assert fake.timeouts == [0.0, 0.0]  # draining passes wait for nothing new
    assert checker.stats.batches == 1 and seen == [batch]
