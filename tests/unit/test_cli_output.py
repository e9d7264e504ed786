"""What the operator commands print: stats/top at 80 columns, text vs --json, key file modes,
no prefix-matched flags, size units, dump text, and the README's reader snippet."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from shardbroker import cli
from shardbroker.control.metrics import MetricsAggregator
from shardbroker.control.top import render, run_top
from shardbroker.segment import layout, shm
from shardbroker.segment.inspect import dump_segment, render_dump
from shardbroker.segment.writer import ShardWriter
from shardbroker.wire.protocol import encode_messages

README = Path(__file__).parents[2] / "README.md"
WIDE_ONLY = ("pid", "msgs", "msg/s", "wake/b", "rcvbuf", "RSS", "rej", "held", "parked")


def _snap(shard: int, t: float, scale: float) -> dict[str, Any]:
    """A receiver after days of traffic: counters in the tera range, big rates."""
    return {
        "shard": shard, "pid": 4_194_000 + shard, "time": t,
        "bytes": int(987_654_321_098_765 * scale), "batches": int(470_000_000 * scale),
        "messages": int(960_000_000_000 * scale), "recv_calls": int(2_000_000_000 * scale),
        "eagain": int(1_500_000_000 * scale), "wakeups": int(480_000_000 * scale),
        "recv_calls_hist": {"1": 12_345_678, "2": 98_765, "4": 4321, "8": 0, "16": 0, "32": 7,
                            ">32": 1},
        "rejected": {"batch.total_size_too_large": 3, "handshake.bad_topic": 12_345},
        "connections_open": 1234, "parked_connections": 2, "backpressured_s": 12.5,
        "rcvbuf_min": 6 << 20, "rcvbuf_max": 32 << 20, "rss_bytes": 5 << 30,
        "commit_latency_us": {"p50": 35.2 + shard, "p99": 123_456.0, "samples": 4096},
        "cpu_user_s": 50_000.0 * scale, "cpu_sys_s": 7_000.0 * scale,
    }


@pytest.fixture
def report() -> dict[str, Any]:
    """Three shards, two snapshots each one second apart: totals and non-zero rates."""
    agg = MetricsAggregator()
    for shard in range(3):
        agg.update(_snap(shard, 100.0, 1.0))
        agg.update(_snap(shard, 101.0, 1.004))
    return agg.report()


def _printed(renderable: Any, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def _header(text: str) -> list[str]:
    return next(ln for ln in text.splitlines() if ln.startswith("shard")).split()


def _assert_fits_80(text: str) -> None:
    assert "…" not in text
    too_long = [ln for ln in text.splitlines() if len(ln) > 80]
    assert not too_long, too_long


def test_stats_fits_80_columns_with_totals_beside_rates(report: dict[str, Any]) -> None:
    text = _printed(render(report), 80)
    _assert_fits_80(text)
    header = _header(text)
    assert header.index("GB/s") == header.index("bytes") + 1  # total, then its rate
    assert header.index("bat/s") == header.index("batches") + 1
    total = next(ln for ln in text.splitlines() if ln.startswith("total")).split()
    col = dict(zip(header, total, strict=True))
    # 3 x 987.65 TB (x1.004), and 3 x 0.004 x 987.65 TB per second = 11.9 TB/s = 11.9k GB/s
    assert col["bytes"] == "2.97P" and col["GB/s"] == "11.9k"
    assert col["batches"] == "1.42G" and col["bat/s"] == "5.64M"
    assert col["EAGAIN"] == "4.52G" and col["recv/b"] == "4.25"
    assert col["p50"] == "0.037" and col["p99"] == "123"  # worst shard's, in ms
    # what the README promises beyond the table: histogram, wakeups, SO_RCVBUF, rejections, RSS
    for needed in ("recv/b histogram: 1:37.0M 2:296k 4:13.0k 8:0", "wakeups per batch 1.02",
                   "effective SO_RCVBUF 6Mi-32Mi", "handshake.bad_topic 37.0k",
                   "batch.total_size_too_large 9", "RSS 15Gi", "p50/p99: commit latency in ms"):
        assert needed in text, needed
    assert not set(WIDE_ONLY) & set(header)


def test_stats_wide_shows_the_extra_columns(report: dict[str, Any]) -> None:
    header = _header(_printed(render(report, wide=True), 200))
    assert set(WIDE_ONLY) <= set(header)
    row0 = next(ln for ln in _printed(render(report, wide=True), 200).splitlines()
                if ln.startswith("    0"))
    assert "4194000" in row0 and "6Mi-32Mi" in row0 and "5Gi" in row0


def test_top_fits_80_columns(report: dict[str, Any]) -> None:
    out = io.StringIO()
    console = Console(width=80, record=True, file=out)
    fetched = []

    def fetch() -> dict[str, Any]:
        fetched.append(1)
        return report

    run_top(fetch, interval_s=0.0, iterations=2, console=console)
    text = console.export_text()
    assert len(fetched) == 3
    _assert_fits_80(text)
    assert "bytes" in _header(text) and "GB/s" in _header(text)


def test_top_wide_shows_the_extra_columns(report: dict[str, Any]) -> None:
    console = Console(width=200, record=True, file=io.StringIO())
    run_top(lambda: report, interval_s=0.0, iterations=0, wide=True, console=console)
    assert {"pid", "RSS", "wake/b", "rcvbuf"} <= set(_header(console.export_text()))


def test_the_largest_u64_counters_still_fit_80_columns() -> None:
    """Every counter at its limit and 1000 receivers: no cell may push the table past 80."""
    big = 2**64 - 1
    agg = MetricsAggregator()
    for shard in range(1000):
        for t, scale in ((1.0, 0.5), (2.0, 1.0)):
            agg.update(dict(_snap(shard, t, 1.0), **{k: int(big * scale) for k in (
                "bytes", "batches", "messages", "recv_calls", "eagain", "wakeups")},
                cpu_user_s=9.9e9 * scale, connections_open=99_999,
                commit_latency_us={"p50": 9.9e12, "p99": 9.9e15}))
    text = _printed(render(agg.report()), 80)
    _assert_fits_80(text)
    assert "total" in text and "  999  " in text  # the last shard's row is there


def test_empty_broker_renders(report: dict[str, Any]) -> None:
    text = _printed(render(MetricsAggregator().report()), 80)
    _assert_fits_80(text)
    assert "rejected: none" in text


@pytest.mark.parametrize("argv", [
    ["stats", "--wide"], ["top", "--wide"], ["stats", "--json"], ["scale", "2", "--json"],
    ["drain", "--json"], ["stop", "--json"], ["keys", "d", "--json"],
    ["dump", "--segment", "s", "--json"],
])
def test_flags_exist(argv: list[str]) -> None:
    a = cli._build_parser().parse_args(argv)
    assert getattr(a, argv[-1].lstrip("-"))


@pytest.mark.parametrize("argv", [
    ["run", "--thread", "2"], ["stats", "--wid"], ["tail", "--fol"], ["bench", "--qui"],
    ["publish", "--connect", "h:1", "--total", "1", "--conn", "2"],
])
def test_abbreviated_flags_are_rejected(argv: list[str], capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    with pytest.raises(SystemExit):
        cli._build_parser().parse_args(argv)
    assert "unrecognized arguments" in capsys.readouterr().err


def test_full_flag_still_parses() -> None:
    assert cli._build_parser().parse_args(["run", "--threads", "2"]).threads == 2


SCALE_REPLY = {"threads": 2, "receivers": [
    {"shard": 0, "pid": 11, "state": "active", "cpu": 0, "open_connections": 3},
    {"shard": 1, "pid": 12, "state": "active", "cpu": 1, "open_connections": 1}]}


@pytest.mark.parametrize("argv, reply, words", [
    (["scale", "2"], SCALE_REPLY, "scaled to 2 receivers"),
    (["drain"], {"draining": True}, "draining: no new connections"),
    (["stop"], {"stopping": True}, "stopping:"),
])
def test_control_commands_print_text_or_json(
        argv: list[str], reply: dict[str, Any], words: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "_control", lambda a, cmd, **kw: reply)
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert text.startswith(words) and not text.startswith("{")
    if argv[0] == "scale":
        assert "shard 1: pid 12 active cpu 1, 1 connections" in text
    assert cli.main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == reply


def _mode(p: Path | str) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_keys_secret_is_0600_and_new_dir_0700(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "keys"
    assert cli.main(["keys", str(d), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert _mode(out["secret"]) == 0o600
    assert _mode(out["public"]) == 0o644
    assert _mode(d) == 0o700


def test_keys_fixes_the_mode_of_an_old_secret(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "broker.key_secret"
    secret.write_text("old")
    secret.chmod(0o644)
    assert cli.main(["keys", str(tmp_path)]) == 0
    assert _mode(secret) == 0o600
    text = capsys.readouterr().out
    assert f"secret key (mode 0600): {secret}" in text and not text.startswith("{")


def test_size_help_and_errors_name_the_units(capsys: pytest.CaptureFixture[str]) -> None:
    assert "MiB" in cli.SIZE_HELP and "2^" in cli.SIZE_HELP and "10^" in cli.SIZE_HELP
    a = cli._build_parser().parse_args(["publish", "--connect", "h:1", "--total", "2MB",
                                        "--batch-size", "2MiB"])
    assert (a.total, a.batch_size) == (2_000_000, 2 << 20)
    with pytest.raises(SystemExit):
        cli._build_parser().parse_args(["publish", "--connect", "h:1", "--total", "4G"])
    assert "4GB (4 x 10^9) or 4GiB (4 x 2^30)" in capsys.readouterr().err
    with pytest.raises(argparse.ArgumentTypeError, match="decimal kB"):
        cli._size("lots")


@pytest.fixture
def segment_name() -> Iterator[str]:
    name = f"shardbroker-test-cli-{os.getpid()}-{os.urandom(3).hex()}"
    yield name
    shm.unlink(name)


def _publish(w: ShardWriter, client: int, seq: int, msgs: list[bytes], topic: int) -> None:
    payload = encode_messages(msgs, client, seq)
    r = w.reserve(len(payload))
    w.buf[r.log_idx: r.log_idx + len(payload)] = payload
    w.commit(r, seq, 0, client, len(msgs), 0, topic)


def _segment_with_batches(name: str) -> Any:
    m = shm.create(name, layout.Geometry(2, 16, 1 << 20), broker_id=3)
    w = ShardWriter(m, 1, broker_id=3)
    t = w.topic_index("orders")
    _publish(w, 11, 0, [b"hello", b"world"], t)
    _publish(w, 11, 1, [b"!" * 300], t)
    return m


def test_dump_text_is_prose_not_a_dict(segment_name: str) -> None:
    m = _segment_with_batches(segment_name)
    try:
        text = render_dump(dump_segment(segment_name, verify=True))
    finally:
        m.close()
    assert "{" not in text and "'" not in text
    assert "shard 1: 2 batches committed" in text and "topics orders" in text
    assert "index 0..1, first from client 11 seq 0, last from client 11 seq 1" in text
    assert "shard 0: 0 batches committed" in text and "none in the ring" in text
    assert "verify: 3 messages walked, 0 errors" in text and text.endswith("verify: ok")


def _readme_block(after: str) -> str:
    text = README.read_text()
    start = text.index("```python\n", text.index(after)) + len("```python\n")
    return text[start: text.index("```", start)]


def test_readme_reader_snippet_runs(segment_name: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    snippet = _readme_block("Reading the log from Python")
    assert re.search(r"\bbytes\(m\)", snippet) is None  # a MessageView is not a buffer
    m = _segment_with_batches(segment_name)
    try:
        exec(snippet.replace("shardbroker-1234", segment_name), {})  # noqa: S102
    finally:
        m.close()
    assert capsys.readouterr().out.splitlines()[0].startswith("1 11 0 orders")


@pytest.mark.parametrize("args", [["--duration", "-1"], ["--duration", "0"],
                                  ["--connections", "0"], ["--duration", "soon"]])
def test_demo_refuses_a_run_that_could_prove_nothing(args: list[str]) -> None:
    with pytest.raises(SystemExit) as err:
        cli._build_parser().parse_args(["demo", *args])
    assert err.value.code == 2
