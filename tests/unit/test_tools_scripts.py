"""The operator scripts: tools/tune_kernel_buffers.sh, tools/nic_tune.sh, numa/launch.sh.

Nothing here changes the host. --apply runs only against fake sysctl/ethtool programs
(SHARDBROKER_SYSCTL / SHARDBROKER_ETHTOOL) or inside a network namespace the test creates
and deletes. The real kernel is only read (--check).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TUNE = REPO / "tools" / "tune_kernel_buffers.sh"
NIC = REPO / "tools" / "nic_tune.sh"
LAUNCH = REPO / "numa" / "launch.sh"
SCRIPTS = [TUNE, NIC, LAUNCH]
DEFAULT_TARGET = 64 * 1024 * 1024
NO_SUCH_IFACE = "sbnope0"

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="the script's root check needs euid 0")
needs_ethtool = pytest.mark.skipif(
    shutil.which("ethtool") is None, reason="ethtool not installed (apt-get install ethtool)"
)


def run(
    script: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        ["bash", str(script), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def write_program(path: Path, body: str) -> Path:
    path.write_text("#!/usr/bin/env bash\nset -eu\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# --------------------------------------------------------------------------- all scripts


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help(script: Path) -> None:
    result = run(script, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_syntax_and_mode(script: Path) -> None:
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    assert os.access(script, os.X_OK), f"chmod +x {script}"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_clean() -> None:
    result = subprocess.run(
        ["shellcheck", *map(str, SCRIPTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


# --------------------------------------------------------------------------- kernel buffers

SYSCTL_FILES = {
    "net.core.rmem_max": "/proc/sys/net/core/rmem_max",
    "net.core.wmem_max": "/proc/sys/net/core/wmem_max",
    "net.ipv4.tcp_rmem": "/proc/sys/net/ipv4/tcp_rmem",
    "net.ipv4.tcp_wmem": "/proc/sys/net/ipv4/tcp_wmem",
}


def below_target(target: int) -> bool:
    """Whether any of the four values is below target, read straight from /proc/sys."""
    for path in SYSCTL_FILES.values():
        fields = Path(path).read_text().split()
        if int(fields[-1]) < target:  # the single value, or tcp_*mem's max field
            return True
    return False


def current_rmem_max() -> int:
    return int(Path(SYSCTL_FILES["net.core.rmem_max"]).read_text())


@pytest.mark.parametrize(
    "target", [None, 4096, "rmem_max", 1 << 40], ids=["default", "tiny", "rmem_max", "huge"]
)
def test_tune_check_exit_code_matches_proc(target: int | str | None) -> None:
    if target == "rmem_max":
        target = current_rmem_max()
    args = ["--check"] if target is None else ["--check", "--target", str(target)]
    result = run(TUNE, *args)
    expected_low = below_target(DEFAULT_TARGET if target is None else int(target))
    assert result.returncode == (1 if expected_low else 0), result.stdout + result.stderr
    for key in SYSCTL_FILES:
        assert key in result.stdout


def test_tune_default_mode_is_check() -> None:
    assert run(TUNE).returncode == (1 if below_target(DEFAULT_TARGET) else 0)


@pytest.mark.parametrize(
    "args", [["--target", "0"], ["--target", "64M"], ["--target"], ["--bogus"], ["--state"]]
)
def test_tune_bad_usage(args: list[str]) -> None:
    result = run(TUNE, *args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("mode", ["--apply", "--revert"])
def test_tune_refuses_without_root(mode: str, tmp_path: Path) -> None:
    state = tmp_path / "saved.conf"
    result = run(TUNE, mode, "--state", str(state), env={"SHARDBROKER_ASSUME_NONROOT": "1"})
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "needs root" in result.stderr
    assert not state.exists()


@pytest.fixture
def fake_sysctl(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A sysctl stand-in that keeps its values in files; yields (values dir, env)."""
    values = tmp_path / "values"
    values.mkdir()
    for key, text in {
        "net.core.rmem_max": "4194304",
        "net.core.wmem_max": "212992",
        "net.ipv4.tcp_rmem": "4096\t131072\t33554432",
        "net.ipv4.tcp_wmem": "4096\t16384\t4194304",
    }.items():
        (values / key).write_text(text)
    program = write_program(
        tmp_path / "sysctl",
        f"d={values}\n"
        "case $1 in\n"
        '  -n) cat "$d/$2"; echo ;;\n'
        '  -w) k=${2%%=*}; v=${2#*=}; [ -e "$d/$k" ] || exit 255\n'
        '      printf %s "$v" > "$d/$k"; echo "$k = $v" ;;\n'
        "  *) exit 99 ;;\n"
        "esac\n",
    )
    yield values, {"SHARDBROKER_SYSCTL": str(program)}


@needs_root
def test_tune_apply_and_revert_with_fake_sysctl(
    fake_sysctl: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    values, env = fake_sysctl
    state = tmp_path / "state" / "saved.conf"

    applied = run(TUNE, "--apply", "--state", str(state), env=env)
    assert applied.returncode == 0, applied.stderr
    assert (values / "net.core.rmem_max").read_text() == str(DEFAULT_TARGET)
    assert (values / "net.ipv4.tcp_rmem").read_text() == f"4096 131072 {DEFAULT_TARGET}"
    assert "before" in applied.stdout and "after" in applied.stdout
    saved = state.read_text()
    assert "net.core.wmem_max = 212992" in saved
    assert "net.ipv4.tcp_wmem = 4096 16384 4194304" in saved

    assert run(TUNE, "--check", env=env).returncode == 0
    # A second, larger apply must keep the first save: those are the true originals.
    again = run(
        TUNE, "--apply", "--target", str(2 * DEFAULT_TARGET), "--state", str(state), env=env
    )
    assert again.returncode == 0, again.stderr
    assert state.read_text() == saved

    reverted = run(TUNE, "--revert", "--state", str(state), env=env)
    assert reverted.returncode == 0, reverted.stderr
    assert (values / "net.core.wmem_max").read_text() == "212992"
    assert (values / "net.ipv4.tcp_rmem").read_text() == "4096 131072 33554432"
    assert not state.exists()

    nothing = run(TUNE, "--revert", "--state", str(state), env=env)
    assert nothing.returncode == 1
    assert "nothing to revert" in nothing.stderr


@needs_root
def test_tune_apply_when_nothing_is_low_saves_nothing(
    fake_sysctl: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    _, env = fake_sysctl
    state = tmp_path / "saved.conf"
    result = run(TUNE, "--apply", "--target", "4096", "--state", str(state), env=env)
    assert result.returncode == 0
    assert "nothing to change" in result.stdout
    assert not state.exists()


@needs_root
def test_tune_revert_rejects_foreign_keys(
    fake_sysctl: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    values, env = fake_sysctl
    state = tmp_path / "saved.conf"
    state.write_text("net.core.rmem_max = 1\nkernel.panic = 1\n")
    result = run(TUNE, "--revert", "--state", str(state), env=env)
    assert result.returncode == 1
    assert "unexpected line" in result.stderr
    assert (values / "net.core.rmem_max").read_text() == "4194304"  # nothing applied
    assert state.exists()


# --------------------------------------------------------------------------- nic_tune


def lo_gro_is_off() -> bool:
    out = subprocess.run(["ethtool", "-k", "lo"], capture_output=True, text=True, check=False)
    return "generic-receive-offload: off" in out.stdout


def test_nic_refuses_unknown_interface() -> None:
    assert not Path("/sys/class/net", NO_SUCH_IFACE).exists()
    result = run(NIC, NO_SUCH_IFACE, "--check")
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["lo", "eth0"],
        ["lo", "--rx-usecs"],
        ["lo", "--rx-usecs", "x"],
        ["lo", "--big-tcp", "1024"],
        ["lo", "--bogus"],
        ["../lo"],
    ],
)
def test_nic_bad_usage(args: list[str]) -> None:
    result = run(NIC, *args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_nic_without_ethtool_says_how_to_install() -> None:
    result = run(NIC, "lo", "--check", env={"SHARDBROKER_ETHTOOL": "/nonexistent/ethtool"})
    assert result.returncode == 2
    assert "apt-get install ethtool" in result.stderr


@needs_ethtool
def test_nic_apply_refuses_without_root() -> None:
    result = run(NIC, "lo", "--apply", env={"SHARDBROKER_ASSUME_NONROOT": "1"})
    assert result.returncode == 2
    assert "needs root" in result.stderr


@needs_ethtool
def test_nic_check_on_loopback() -> None:
    result = run(NIC, "lo", "--check")
    assert result.returncode == (1 if lo_gro_is_off() else 0), result.stdout + result.stderr
    assert "GRO" in result.stdout
    assert "coalescing rx-usecs" in result.stdout
    assert "net.core.busy_poll" in result.stdout


@needs_ethtool
def test_nic_check_reports_requested_changes_without_making_them() -> None:
    before = subprocess.run(["ip", "-d", "link", "show", "lo"], capture_output=True, text=True)
    result = run(NIC, "lo", "--check", "--big-tcp", "262144")
    after = subprocess.run(["ip", "-d", "link", "show", "lo"], capture_output=True, text=True)
    assert before.stdout == after.stdout
    if "gso_max_size 262144" not in before.stdout and "gso_max_size" in before.stdout:
        assert result.returncode == 1
        assert "--apply would set it" in result.stdout


@pytest.fixture
def fake_ethtool(tmp_path: Path) -> dict[str, str]:
    """An ethtool stand-in with GRO off and coalescing rx-usecs 3, state kept in files."""
    (tmp_path / "gro").write_text("off")
    (tmp_path / "rx").write_text("3")
    program = write_program(
        tmp_path / "ethtool",
        f"d={tmp_path}\n"
        "case $1 in\n"
        '  -k) echo "Features for $2:"; echo "generic-receive-offload: $(cat $d/gro)" ;;\n'
        '  -K) printf %s "$4" > $d/gro ;;\n'
        '  -c) echo "Adaptive RX: off  TX: off"; echo "rx-usecs: $(cat $d/rx)" ;;\n'
        '  -C) printf %s "$4" > $d/rx ;;\n'
        "  *) exit 99 ;;\n"
        "esac\n",
    )
    return {"SHARDBROKER_ETHTOOL": str(program)}


def test_nic_check_with_fake_ethtool(fake_ethtool: dict[str, str]) -> None:
    result = run(NIC, "lo", "--check", "--rx-usecs", "10", env=fake_ethtool)
    assert result.returncode == 1
    assert "--apply would enable it" in result.stdout
    assert "--apply would set it" in result.stdout


@needs_root
def test_nic_apply_with_fake_ethtool(fake_ethtool: dict[str, str], tmp_path: Path) -> None:
    # No --big-tcp / --busy-poll: ip and sysctl are only read, the fake takes every write.
    result = run(NIC, "lo", "--apply", "--rx-usecs", "10", env=fake_ethtool)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "gro").read_text() == "on"
    assert (tmp_path / "rx").read_text() == "10"
    gro_row = next(line for line in result.stdout.splitlines() if line.startswith("GRO"))
    assert gro_row.split()[1:3] == ["off", "on"]


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace of our own, deleted afterwards (skips where it cannot be made)."""
    if not IS_ROOT or shutil.which("ip") is None:
        pytest.skip("creating a network namespace needs root and iproute2")
    name = f"sbtest-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"ip netns add failed here: {made.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@needs_ethtool
def test_nic_apply_big_tcp_in_own_netns(netns: str) -> None:
    def in_ns(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True, timeout=30
        )

    details = in_ns("ip", "-d", "link", "show", "lo").stdout
    if "gso_max_size" not in details:
        pytest.skip("this iproute2 does not report gso_max_size")
    in_ns("ethtool", "-K", "lo", "gro", "off")
    result = in_ns("bash", str(NIC), "lo", "--apply", "--big-tcp", "262144")
    assert result.returncode == 0, result.stdout + result.stderr
    details = in_ns("ip", "-d", "link", "show", "lo").stdout
    assert "gso_max_size 262144" in details and "gro_max_size 262144" in details
    assert "generic-receive-offload: on" in in_ns("ethtool", "-k", "lo").stdout
    assert in_ns("bash", str(NIC), "lo", "--check", "--big-tcp", "262144").returncode == 0


# --------------------------------------------------------------------------- launch.sh


def test_launch_needs_a_command() -> None:
    result = run(LAUNCH, "--node", "0")
    assert result.returncode == 2
    assert "no command" in result.stderr


@pytest.mark.parametrize("args", [["--node", "x", "--", "true"], ["--frob", "--", "true"]])
def test_launch_bad_usage(args: list[str]) -> None:
    assert run(LAUNCH, *args).returncode == 2


@pytest.mark.skipif(
    not Path("/sys/devices/system/node").is_dir(), reason="kernel without NUMA sysfs"
)
def test_launch_refuses_a_missing_node() -> None:
    result = run(LAUNCH, "--node", "4095", "--", "true")
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_launch_runs_the_command_on_node_0() -> None:
    result = run(
        LAUNCH, "--node", "0", "--", "sh", "-c", "grep Cpus_allowed_list /proc/self/status"
    )
    assert result.returncode == 0, result.stderr
    assert "Cpus_allowed_list" in result.stdout
    if shutil.which("numactl") is None:
        assert "apt-get install numactl" in result.stderr
    else:
        assert result.stderr == ""


def test_launch_without_numactl_warns_and_runs() -> None:
    result = run(
        LAUNCH, "--node", "0", "--", "echo", "ran", env={"SHARDBROKER_NUMACTL": "/nonexistent"}
    )
    assert result.returncode == 0
    assert result.stdout.strip() == "ran"
    assert "apt-get install numactl" in result.stderr


def test_launch_passes_the_exit_status_through() -> None:
    assert run(LAUNCH, "--node", "0", "--", "sh", "-c", "exit 7").returncode == 7
    assert run(LAUNCH, "--", "sh", "-c", "exit 5").returncode == 5


@pytest.mark.skipif(shutil.which("numactl") is None, reason="numactl not installed")
def test_launch_binds_memory() -> None:
    result = run(LAUNCH, "--membind", "0", "--", "sh", "-c", "grep -m1 bind: /proc/self/numa_maps")
    assert result.returncode == 0, result.stderr
    assert "bind:0" in result.stdout
