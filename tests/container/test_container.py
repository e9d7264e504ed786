"""Deployment artefacts: k8s manifests, systemd unit, and the podman build + smoke flow.

Each check runs the same script an operator would (tools/container/*.sh) in a subprocess with
a hard timeout. The podman flow is skipped, with the reason, when this machine cannot run it
(not root / no podman and no apt-get) or when the package is not complete enough to build.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools" / "container"
SCRIPTS = ["setup_podman.sh", "base_image.sh", "build.sh", "smoke.sh", "smoke_inside.sh",
           "validate_manifests.sh", "verify_systemd.sh"]
# What the Dockerfile copies: without these the image cannot be built.
BUILD_INPUTS = ["pyproject.toml", "README.md", "shardbroker/cli.py", "conf/broker.toml"]


def _run(args: list[str], timeout: float, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    start = time.monotonic()
    try:
        proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        out, err = (x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                    for x in (exc.stdout, exc.stderr))
        pytest.fail(f"{' '.join(args)} did not finish within {timeout:.0f} s\n"
                    f"--- stdout\n{out[-6000:]}\n--- stderr\n{err[-6000:]}")
    took = time.monotonic() - start
    print(f"$ {' '.join(args)}  -> rc={proc.returncode} in {took:.1f} s")
    print(proc.stdout[-4000:])
    print(proc.stderr[-4000:], file=sys.stderr)
    return proc


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, (
        f"{' '.join(proc.args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}"
        f"\n--- stderr\n{proc.stderr[-6000:]}")


# ---------------------------------------------------------------- scripts themselves ----------

@pytest.mark.parametrize("script", SCRIPTS)
def test_script_syntax_and_help(script: str) -> None:
    path = TOOLS / script
    assert path.exists(), f"{path} missing"
    assert os.access(path, os.X_OK), f"{path} is not executable (chmod +x it)"
    text = path.read_text()
    assert "set -euo pipefail" in text, f"{script}: needs set -euo pipefail"
    _ok(_run(["bash", "-n", str(path)], timeout=30))
    proc = _run([str(path), "--help"], timeout=30)
    _ok(proc)
    assert "Usage" in proc.stdout


def test_shellcheck_clean() -> None:
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck not installed (Debian: apt-get install shellcheck)")
    _ok(_run(["shellcheck", "-x", *(str(TOOLS / s) for s in SCRIPTS), str(TOOLS / "lib.sh")],
             timeout=120))


def test_dockerfile_rules() -> None:
    """Rules from DESIGN.md section 6 that buildah 1.28 / the stand-in base impose."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    froms = [ln for ln in lines if ln.upper().startswith("FROM ")]
    assert len(froms) >= 2, "multi-stage build expected (builder + runtime)"
    assert all(ln.split()[1] == "python:3.11-slim-bookworm" for ln in froms), froms
    assert not any("<<" in ln for ln in lines if ln.upper().startswith("RUN")), \
        "RUN heredocs do not work with buildah 1.28"
    for bad in ("/usr/bin/python", "/usr/local/bin/python"):
        assert bad not in "\n".join(lines), f"absolute interpreter path {bad}: use python -m"
    assert 'ENTRYPOINT ["shardbroker"]' in text
    assert 'CMD ["run", "--config", "/etc/shardbroker/broker.toml"]' in text
    assert "HEALTHCHECK" in text and '"shardbroker", "status"' in text
    assert any(ln.startswith("USER ") and not ln.startswith("USER root") for ln in lines)
    ignore = (ROOT / ".dockerignore").read_text().split()
    for needed in (".venv", ".git", "out"):
        assert needed in ignore, f".dockerignore should exclude {needed}"
    for kept in ("README.md", "pyproject.toml", "shardbroker", "conf"):
        assert kept not in ignore, f".dockerignore must not exclude {kept}: the build needs it"


# ---------------------------------------------------------------- manifests / systemd ---------

def test_k8s_manifests_validate_offline() -> None:
    # First run installs kubernetes-validate (PyPI); validation itself runs without network.
    _ok(_run([str(TOOLS / "validate_manifests.sh")], timeout=600))


def test_k8s_validation_rejects_broken_daemonset(tmp_path: Path) -> None:
    bad = tmp_path / "k8s"
    shutil.copytree(ROOT / "conf" / "k8s", bad)
    ds = bad / "daemonset.yaml"
    # Burstable QoS (limits != requests) and an unknown field: both must be caught.
    ds.write_text(ds.read_text().replace("memory: 4Gi", "memory: 3Gi", 1)
                  .replace("hostNetwork: true", "hostNetwork: true\n      hostNetwrk: true"))
    proc = _run([str(TOOLS / "validate_manifests.sh")], timeout=600, env={"K8S_DIR": str(bad)})
    assert proc.returncode != 0
    assert "Guaranteed QoS" in proc.stderr
    assert "hostNetwrk" in proc.stdout + proc.stderr


def _configmap_broker_toml(text: str) -> str:
    """The ``broker.toml: |`` literal block of configmap.yaml (no YAML library needed)."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip() == "broker.toml: |")
    indent = len(lines[start]) - len(lines[start].lstrip()) + 2
    block = []
    for ln in lines[start + 1:]:
        if ln.strip() and len(ln) - len(ln.lstrip()) < indent:
            break
        block.append(ln[indent:])
    return "\n".join(block) + "\n"


def test_configmap_broker_toml_loads_with_the_package_config() -> None:
    """An unknown key in the ConfigMap would crash-loop every broker pod."""
    config = pytest.importorskip("shardbroker.config", reason="shardbroker.config not importable")
    text = _configmap_broker_toml((ROOT / "conf" / "k8s" / "configmap.yaml").read_text())
    assert "[segment]" in text
    path = ROOT / "out" / "container" / "configmap-broker.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    config.load(path)


def test_systemd_unit_verifies() -> None:
    proc = _run([str(TOOLS / "verify_systemd.sh")], timeout=120)
    _ok(proc)
    if proc.stdout.startswith("SKIP"):
        pytest.skip(proc.stdout.strip())


# ---------------------------------------------------------------- podman flow ------------------

def _podman_flow_skip_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "podman flow needs Linux"
    missing = [p for p in BUILD_INPUTS if not (ROOT / p).exists()]
    if missing:
        return f"package not buildable yet: missing {', '.join(missing)}"
    if os.geteuid() != 0:
        return "podman flow needs root here (debootstrap, rootful podman with runc)"
    if not shutil.which("podman") and not shutil.which("apt-get"):
        return "no podman and no apt-get to install it"
    return None


def test_podman_build_and_smoke() -> None:
    reason = _podman_flow_skip_reason()
    if reason:
        pytest.skip(reason)
    timings: dict[str, float] = {}
    for script, limit in (("setup_podman.sh", 600), ("base_image.sh", 900),
                          ("build.sh", 900), ("smoke.sh", 420)):
        start = time.monotonic()
        _ok(_run([str(TOOLS / script)], timeout=limit))
        timings[script] = round(time.monotonic() - start, 1)
    print(f"podman flow timings (s): {timings}")
    result = json.loads((ROOT / "out" / "container" / "smoke.json").read_text())
    assert result["status"] == "ok"
    assert result["publish"]["acked_messages"] == result["publish"]["messages"] > 0
    assert not result["shm_leftover"]
