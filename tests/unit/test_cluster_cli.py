"""`shardbroker publish` with several brokers and `tail` over several segments: operator
errors are one line with exit code 2, per-broker summary lines (no broker is started here)."""

from __future__ import annotations

import pytest

from shardbroker import cli
from shardbroker.publisher.loadgen import render_brokers


@pytest.mark.parametrize(("argv", "says"), [
    (["--connect", "127.0.0.1:1214,127.0.0.1"], "'127.0.0.1' is not HOST:PORT"),
    (["--connect", "a:1,b:99999"], "'b:99999' is not HOST:PORT"),
    (["--connect", "127.0.0.1:1,127.0.0.1:2", "--ack", "0"], "a cluster needs --ack 1"),
    (["--connect", "127.0.0.1:1", "--hosts-file", "/x"], "need a cluster"),
    (["--connect", "127.0.0.1:1", "--placement", "round-robin"], "need a cluster"),
    # checked once before any publisher process starts (no broker needed, no DNS asked)
    (["--cluster", "--connect", "127.0.0.1:1", "--hosts-file", "/nonexistent/hosts"],
     "cannot read /nonexistent/hosts"),
])
def test_publish_refuses_bad_cluster_input_in_one_line(
        argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["publish", *argv, "--total", "1MiB"]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and err.startswith("shardbroker publish: error")


@pytest.mark.parametrize("flag", [["--follow"], ["--name", "x"], ["--shard", "0"]])
def test_tail_over_several_segments_refuses_one_segment_flags(
        flag: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # refused before any segment is opened: these names need not exist
    assert cli.main(["tail", "--segment", "nope-a", "--segment", "nope-b", *flag]) == 2
    err = capsys.readouterr().err
    assert f"{flag[0]} reads one segment" in err and err.count("\n") == 1


def test_publish_help_explains_the_cluster_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["publish", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("comma-separated list", "--cluster", "headless Service", "--hosts-file",
                  "least-bytes", "re-resolve"):
        assert words in text


def test_per_broker_lines_and_failover_line() -> None:
    summary = {"brokers": [
        {"broker": "127.0.0.2:1214", "state": "up", "bytes": 3 << 20, "share": 0.75,
         "batches": 3, "acked_batches": 3, "resent_in": 1, "failures": 0, "last_error": ""},
        {"broker": "127.0.0.3:1214", "state": "down", "bytes": 1 << 20, "share": 0.25,
         "batches": 1, "acked_batches": 0, "resent_in": 0, "failures": 1,
         "last_error": "connection refused"}],
        "failovers": [{"broker": "127.0.0.3:1214", "why": "recv: reset", "unacked": 1,
                       "client_id": 9, "down_at": 10.0, "first_resend_at": 10.004,
                       "first_resend_to": "127.0.0.2:1214"}]}
    lines = render_brokers(summary)
    assert lines[0] == ("  broker 127.0.0.2:1214: up, 3.0 MiB (75.0 %) in 3 batches, 3 acked, "
                        "1 re-sent to it, 0 failures")
    assert lines[1].endswith("1 failures; last error: connection refused")
    assert "first re-sent to 127.0.0.2:1214 after 4.0 ms" in lines[2]
    assert render_brokers({"brokers": []}) == []
