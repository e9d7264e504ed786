#!/usr/bin/env bash
# Validate conf/k8s offline: JSON-schema (kubernetes-validate, strict) + broker-node policy checks.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: tools/container/validate_manifests.sh [--help]

1. Installs the PyPI package kubernetes-validate (it ships the Kubernetes JSON schemas for
   1.25 ... 1.37 inside the wheel) into ./.venv when that exists, else into a reusable venv
   ${SB_VALIDATE_VENV:-${XDG_CACHE_HOME:-/var/tmp}/shardbroker-validate-venv}.
2. Validates every conf/k8s/*.yaml resource with --strict (unknown fields are errors) for each
   Kubernetes version in K8S_VERSIONS (default "1.29.0 1.37.0"); K8S_DIR overrides conf/k8s.
   The Kustomization itself has no schema there; it is checked in step 4.
3. When kubectl is installed, renders `kubectl kustomize conf/k8s` and validates the output.
4. Policy checks no schema can express: every kustomization resource exists; Guaranteed QoS
   (requests == limits, integer CPU); hostNetwork + ClusterFirstWithHostNet; broker-node
   nodeSelector; non-root; RuntimeDefault seccomp; probes run `shardbroker status`; /dev/shm is an
   emptyDir medium Memory whose sizeLimit holds the segment described by the ConfigMap's
   broker.toml, and the memory limit holds that plus the processes.
Steps 2-4 run without network (inside `unshare -n` when this user may create a network
namespace), which proves the schemas really ship with the package.
Exits non-zero on any failure.
USAGE
}
case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    "") ;;
    *) usage >&2; echo "unknown argument: $1" >&2; exit 2 ;;
esac

# shellcheck source=tools/container/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$SB_REPO_ROOT"
K8S_DIR="${K8S_DIR:-conf/k8s}"
K8S_VERSIONS="${K8S_VERSIONS:-1.29.0 1.37.0}"
[[ -d "$K8S_DIR" ]] || sb_die "$K8S_DIR not found (run from a shardbroker checkout)"

# --- 1. the validator ----------------------------------------------------------------------
if [[ -x .venv/bin/python ]]; then
    VENV="$SB_REPO_ROOT/.venv"
else
    VENV="${SB_VALIDATE_VENV:-${XDG_CACHE_HOME:-/var/tmp}/shardbroker-validate-venv}"
    if [[ ! -x "$VENV/bin/python" ]]; then
        command -v python3 >/dev/null 2>&1 || sb_die "python3 is needed to create $VENV"
        python3 -m venv "$VENV" || sb_die "could not create a venv at $VENV (Debian: apt-get install python3-venv)"
    fi
fi
PY="$VENV/bin/python"
if ! "$PY" -c 'import kubernetes_validate, yaml' 2>/dev/null; then
    sb_log "installing kubernetes-validate into $VENV"
    "$PY" -m pip install -q 'kubernetes-validate>=1.29' \
        || sb_die "pip install kubernetes-validate failed: check PyPI access, or install it into $VENV yourself"
fi
KV="$VENV/bin/kubernetes-validate"
[[ -x "$KV" ]] || sb_die "$KV missing after install: reinstall with $PY -m pip install --force-reinstall kubernetes-validate"

# --- run steps 2-4 offline when we can -------------------------------------------------------
offline=()
if command -v unshare >/dev/null 2>&1; then
    if unshare -n true 2>/dev/null; then
        offline=(unshare -n)
    elif unshare -rn true 2>/dev/null; then
        offline=(unshare -rn)
    fi
fi
if ((${#offline[@]})); then
    sb_log "validating with no network (${offline[*]}): schemas must come from the package"
else
    sb_log "cannot create a network namespace here; validating without that isolation"
fi

failed=0
mapfile -t files < <(find "$K8S_DIR" -maxdepth 1 -name '*.yaml' ! -name 'kustomization.yaml' | sort)
((${#files[@]})) || sb_die "no manifests in $K8S_DIR"

# --- 2. schema, per file and version ---------------------------------------------------------
for v in $K8S_VERSIONS; do
    if ! "${offline[@]}" "$KV" --strict --quiet -k "$v" "${files[@]}"; then
        sb_log "FAIL: schema validation against Kubernetes $v"
        failed=1
    else
        sb_log "ok: ${#files[@]} manifests valid (strict) for Kubernetes $v"
    fi
done

# --- 3. kustomize render ---------------------------------------------------------------------
rendered=""
if command -v kubectl >/dev/null 2>&1; then
    rendered=$(mktemp --suffix=.yaml)
    trap 'rm -f "$rendered"' EXIT
    if "${offline[@]}" kubectl kustomize "$K8S_DIR" >"$rendered" 2>"$rendered.err"; then
        for v in $K8S_VERSIONS; do
            if "${offline[@]}" "$KV" --strict --quiet -k "$v" "$rendered"; then
                sb_log "ok: kubectl kustomize output valid (strict) for Kubernetes $v"
            else
                sb_log "FAIL: kustomize output against Kubernetes $v"; failed=1
            fi
        done
    else
        cat "$rendered.err" >&2
        sb_log "FAIL: kubectl kustomize $K8S_DIR"; failed=1
    fi
    rm -f "$rendered.err"
else
    sb_log "kubectl not installed: skipping the kustomize render (resources still checked below)"
fi

# --- 4. policy ---------------------------------------------------------------------------------
if ! "${offline[@]}" "$PY" - "$K8S_DIR" <<'PY'
import os, re, sys, tomllib
import yaml

k8s = sys.argv[1]
problems = []
def check(cond, what):
    if not cond:
        problems.append(what)

docs = {}
for name in sorted(os.listdir(k8s)):
    if name.endswith(".yaml"):
        with open(os.path.join(k8s, name)) as f:
            for d in yaml.safe_load_all(f):
                if d:
                    docs.setdefault(d.get("kind"), []).append((name, d))

kust = docs.get("Kustomization", [])
check(len(kust) == 1, "expected one kustomization.yaml")
for _, k in kust:
    for r in k.get("resources", []):
        check(os.path.exists(os.path.join(k8s, r)), f"kustomization resource {r} does not exist")

def quantity(q):
    """Kubernetes quantity -> number (bytes or cores)."""
    s = str(q)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|m)?", s)
    if not m:
        raise ValueError(f"bad quantity {s!r}")
    mult = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
            "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "m": 1e-3}[m.group(2)]
    return float(m.group(1)) * mult

def size(v):
    if isinstance(v, int):
        return v
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]i?B?|B)?\s*", str(v), re.I)
    return int(m.group(1)) * {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30,
                              "T": 1 << 40}[(m.group(2) or "").upper()[:1]]

cms = {d["metadata"]["name"]: d for _, d in docs.get("ConfigMap", [])}
dss = docs.get("DaemonSet", [])
check(len(dss) == 1, "expected one DaemonSet")
for fname, ds in dss:
    pod = ds["spec"]["template"]["spec"]
    where = f"{fname}"
    check(pod.get("hostNetwork") is True, f"{where}: hostNetwork must be true")
    check(pod.get("dnsPolicy") == "ClusterFirstWithHostNet",
          f"{where}: dnsPolicy must be ClusterFirstWithHostNet with hostNetwork")
    check(any("broker-node" in k for k in (pod.get("nodeSelector") or {})),
          f"{where}: nodeSelector needs a broker-node label")
    psc = pod.get("securityContext") or {}
    check(psc.get("runAsNonRoot") is True, f"{where}: pod securityContext.runAsNonRoot must be true")
    check(isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] > 0,
          f"{where}: runAsUser must be a non-zero uid")
    check((psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault",
          f"{where}: seccompProfile RuntimeDefault expected")
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    cfg_path = None
    for c in pod["containers"]:
        cw = f"{where}: container {c['name']}"
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        for r in ("cpu", "memory"):
            check(r in req and r in lim, f"{cw}: requests and limits need {r}")
            if r in req and r in lim:
                check(quantity(req[r]) == quantity(lim[r]),
                      f"{cw}: {r} requests {req[r]} != limits {lim[r]} (not Guaranteed QoS)")
        if "cpu" in lim:
            cpu = quantity(lim["cpu"])
            check(cpu == int(cpu) and cpu >= 1,
                  f"{cw}: cpu {lim['cpu']} must be a whole number for exclusive cores")
        sc = c.get("securityContext") or {}
        check(sc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation: false")
        check(sc.get("privileged") in (None, False), f"{cw}: must not be privileged")
        check("ALL" in ((sc.get("capabilities") or {}).get("drop") or []),
              f"{cw}: capabilities.drop must include ALL")
        for probe in ("readinessProbe", "livenessProbe"):
            cmd = ((c.get(probe) or {}).get("exec") or {}).get("command")
            check(cmd == ["shardbroker", "status"], f"{cw}: {probe} must exec shardbroker status")
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        shm = vols.get(mounts.get("/dev/shm", ""), {}).get("emptyDir")
        check(shm is not None and shm.get("medium") == "Memory",
              f"{cw}: /dev/shm must be an emptyDir with medium: Memory")
        if "/etc/shardbroker" in mounts:
            cfg_path = vols[mounts["/etc/shardbroker"]]
        # Does /dev/shm hold the segment the ConfigMap describes?
        if shm and cfg_path and "configMap" in cfg_path and "cpu" in lim:
            cm = cms.get(cfg_path["configMap"]["name"])
            check(cm is not None, f"{cw}: ConfigMap {cfg_path['configMap']['name']} not found")
            if cm is not None:
                conf = tomllib.loads(cm["data"]["broker.toml"])
                seg, brk = conf.get("segment", {}), conf.get("broker", {})
                shards = brk.get("threads", 0) or int(quantity(lim["cpu"]))
                blog = size(seg.get("blog_bytes_per_shard", 512 << 20))
                slots = int(seg.get("pbr_slots", 16384))
                need = shards * (blog + slots * 128) + (1 << 20)
                have = quantity(shm.get("sizeLimit", "0"))
                check(have >= need, f"{cw}: /dev/shm sizeLimit {shm.get('sizeLimit')} < segment "
                                    f"{need / 2**20:.0f} MiB ({shards} shards)")
                mem = quantity(lim.get("memory", "0"))
                check(mem >= have + (512 << 20), f"{cw}: memory limit {lim.get('memory')} must "
                      f"cover the shm sizeLimit + >= 512 MiB for the processes")
                print(f"[validate_manifests.sh] segment {need / 2**20:.0f} MiB for {shards} shards; "
                      f"shm sizeLimit {have / 2**20:.0f} MiB; memory limit {mem / 2**20:.0f} MiB")
    check(cfg_path is not None, f"{where}: config volume mounted at /etc/shardbroker expected")

for p in problems:
    print(f"[validate_manifests.sh] FAIL: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
then
    failed=1
else
    sb_log "ok: policy checks"
fi

if ((failed)); then
    sb_die "manifest validation failed (see FAIL lines above)"
fi
sb_log "all manifest checks passed"
