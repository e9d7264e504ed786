"""An operator's first hour: starts that would take more than the host has are refused,
SIGTERM stops a start at once, a refused `run` never harms a live broker, and two brokers on
one host stay apart. Real `shardbroker` processes; every test gets its own runtime directory
(other brokers on this host must not count)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shardbroker.control import client
from shardbroker.platform import linux
from shardbroker.segment import shm
from shardbroker.segment.layout import FLAG_SERVING
from shardbroker.supervisor.process import BrokerProcess
from tests.integration.conftest import BrokerFactory

pytestmark = pytest.mark.integration
GiB = 1 << 30

StartBroker = Callable[..., BrokerProcess]


def _segment_name() -> str:
    return f"shardbroker-op-{os.getpid()}-{os.urandom(3).hex()}"


@pytest.fixture
def runtime_env() -> Iterator[dict[str, str]]:
    """An environment whose runtime directory only this test uses; short, because an ipc://
    path must fit in 107 bytes."""
    rundir = tempfile.mkdtemp(prefix="sb-", dir="/tmp")
    env = dict(os.environ, SHARDBROKER_RUNTIME_DIR=rundir)
    env.pop("SHARDBROKER_CONTROL", None)
    try:
        yield env
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


@pytest.fixture
def start_broker(broker: BrokerFactory, runtime_env: dict[str, str]) -> StartBroker:
    """The shared broker fixture, with this module's private runtime directory."""
    return functools.partial(broker, threads=1, blog="32MiB", env=runtime_env)


def _cli(env: dict[str, str], *args: str, timeout: float = 60
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shardbroker", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def _error_lines(out: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in out.stderr.splitlines() if ": error: " in ln]


# --------------------------------------------------------------------------- resource guards


def test_segment_larger_than_dev_shm_free_space_is_refused(runtime_env: dict[str, str]
                                                            ) -> None:
    free = linux.fs_free_bytes("/dev/shm")
    assert free is not None
    blog_gib = free // GiB + 1  # one shard's BLog alone exceeds the free space
    seg = _segment_name()
    out = _cli(runtime_env, "run", "--listen", "127.0.0.1:0", "--threads", "1",
               "--segment", seg, "--blog-size", f"{blog_gib}GiB")
    assert out.returncode == 2, out.stderr
    errors = _error_lines(out)
    assert len(errors) == 1, out.stderr
    assert f"{blog_gib}.0 GiB BLog" in errors[0] and "/dev/shm has" in errors[0]
    assert "--threads" in errors[0] and "--blog-size" in errors[0]
    assert not os.path.exists(f"/dev/shm/{seg}")


def test_more_threads_than_cpus_is_refused_in_one_line(runtime_env: dict[str, str]) -> None:
    threads = len(os.sched_getaffinity(0)) + 1
    seg = _segment_name()
    out = _cli(runtime_env, "run", "--listen", "127.0.0.1:0", "--segment", seg,
               "--threads", str(threads), "--blog-size", "32MiB")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert f"--threads {threads} asks for {threads} receivers" in lines[0]
    assert "--oversubscribe" in lines[0]
    assert not os.path.exists(f"/dev/shm/{seg}")


def test_oversubscribe_lets_receivers_share_cpus(start_broker: StartBroker) -> None:
    threads = len(os.sched_getaffinity(0)) + 1
    b = start_broker("--oversubscribe", threads=threads)
    assert b.ready["threads"] == threads


def test_scale_beyond_cpus_needs_oversubscribe(start_broker: StartBroker,
                                              tmp_path: Path) -> None:
    cpus = len(os.sched_getaffinity(0))
    cfg = tmp_path / "spare-shards.toml"
    cfg.write_text(f"[broker]\nmax_threads = {cpus + 1}\n")  # room in the segment, not CPUs
    b = start_broker("--config", str(cfg))
    with pytest.raises(client.ControlError, match=f"scale {cpus + 1} asks for .*--oversubscribe"):
        client.request(b.ready["control"], "scale", threads=cpus + 1, timeout_s=20)
    assert client.request(b.ready["control"], "status")["threads"] == 1


def test_sigterm_during_prefault_exits_at_once_and_unlinks(runtime_env: dict[str, str],
                                                          tmp_path: Path) -> None:
    segment_bytes = 3 * GiB  # ~1.8 s of prefault at the ~1.7 GB/s measured here
    for have in (linux.mem_available_bytes(), linux.fs_free_bytes("/dev/shm")):
        if have is None or have < segment_bytes + 2 * GiB:
            pytest.skip(f"needs {segment_bytes + 2 * GiB} bytes of free memory and /dev/shm")
    cfg = tmp_path / "one-shard.toml"
    cfg.write_text("[broker]\nmax_threads = 1\n")  # one shard: the segment is one BLog
    seg = _segment_name()
    path = f"/dev/shm/{seg}"
    b = BrokerProcess(["--config", str(cfg), "--listen", "127.0.0.1:0", "--threads", "1",
                       "--segment", seg, "--blog-size", "3GiB"], env=runtime_env)
    try:
        b.launch()
        assert b.proc is not None
        deadline = time.monotonic() + 30
        allocated = 0
        while allocated < 16 << 20:  # the prefault is under way (the header is one page)
            assert time.monotonic() < deadline, "the prefault never started"
            assert b.proc.poll() is None, "the broker exited before its prefault"
            time.sleep(0.005)
            try:
                allocated = os.stat(path).st_blocks * 512
            except FileNotFoundError:
                allocated = 0
        sent = time.monotonic()
        b.proc.send_signal(signal.SIGTERM)
        code = b.proc.wait(timeout=20)
        took = time.monotonic() - sent
        assert allocated < segment_bytes, "the prefault had already finished"
        assert code == 128 + signal.SIGTERM
        assert took < 1.0, f"SIGTERM to exit took {took:.3f} s"
        assert not os.path.exists(path)
        assert b.proc.stdout is not None and b.proc.stdout.read() == b""  # never ready
        assert os.listdir(runtime_env["SHARDBROKER_RUNTIME_DIR"]) == []
    finally:
        b.kill()
        shm.unlink(seg)


# --------------------------------------------------------------------------- live neighbours


def test_refused_run_beside_a_live_broker_leaves_it_manageable(
        start_broker: StartBroker, runtime_env: dict[str, str], tmp_path: Path) -> None:
    live = start_broker()
    control_path = live.ready["control"][len("ipc://"):]
    same_endpoint = tmp_path / "same-endpoint.toml"
    same_endpoint.write_text(f'[control]\nendpoint = "{live.ready["control"]}"\n')
    other = _segment_name()
    refusals = {
        "already exists": ["--segment", live.segment],
        "served by a running broker": ["--recover", live.segment],
        "in use by a running broker": ["--segment", other, "--config", str(same_endpoint)],
    }
    for reason, args in refusals.items():
        out = _cli(runtime_env, "run", "--listen", "127.0.0.1:0", "--threads", "1",
                   "--blog-size", "32MiB", *args)
        assert out.returncode == 2 and reason in out.stderr, out.stderr
        assert os.path.exists(control_path), f"a refused run ({reason}) removed the socket"
    assert not os.path.exists(f"/dev/shm/{other}")  # the third one's own segment: gone
    m = shm.attach(live.segment, writable=False)
    try:
        assert m.header.flags & FLAG_SERVING  # not marked closed by a refused --recover
    finally:
        m.close()
    out = _cli(runtime_env, "status", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["segment"] == live.segment
    assert _cli(runtime_env, "stop").returncode == 0
    assert live.proc is not None and live.proc.wait(timeout=20) == 0


def test_two_brokers_on_one_host(start_broker: StartBroker,
                                 runtime_env: dict[str, str]) -> None:
    a, b = start_broker(), start_broker()
    out = _cli(runtime_env, "status")
    assert out.returncode == 0, out.stderr
    for broker in (a, b):
        assert f"segment {broker.segment}  pid {broker.pid}" in out.stdout
        assert broker.ready["control"] in out.stdout
    assert "--segment NAME or --control ENDPOINT" in out.stdout
    listed = json.loads(_cli(runtime_env, "status", "--json").stdout)["brokers"]
    assert sorted(x["segment"] for x in listed) == sorted([a.segment, b.segment])

    out = _cli(runtime_env, "stats")
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert a.segment in out.stderr and b.segment in out.stderr and "--segment" in out.stderr

    out = _cli(runtime_env, "status", "--json", "--segment", a.segment)
    assert out.returncode == 0 and json.loads(out.stdout)["pid"] == a.pid
    assert _cli(runtime_env, "stop", "--segment", a.segment).returncode == 0
    assert a.proc is not None and a.proc.wait(timeout=20) == 0

    out = _cli(runtime_env, "status", "--json")  # no pick needed: one broker is left
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["segment"] == b.segment

    b.kill()  # SIGKILL: its record stays behind, and must not count as a broker
    out = _cli(runtime_env, "status")
    assert out.returncode == 2 and "no local broker found" in out.stderr, out.stderr
