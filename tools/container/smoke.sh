#!/usr/bin/env bash
# Smoke-test the built image: broker + publisher + dump (+ stats) inside ONE container.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: tools/container/smoke.sh [--help]

Runs tools/container/smoke_inside.sh (bind-mounted read-only) in one container of
localhost/shardbroker:dev (override SB_IMAGE) with
  podman run --rm --pull=never --network none --no-healthcheck --shm-size SIZE ...
Inside: `shardbroker run --listen 127.0.0.1:0 --threads 2 --segment sbsmoke` in the
background, its ready line gives the port; `shardbroker publish --connections 2 --total 64MiB
--json`; `shardbroker dump --segment sbsmoke --json --verify`; `shardbroker stats --json` when
that subcommand exists; SIGTERM and wait (exit 0, segment unlinked).
Then a second container with the image's own ENTRYPOINT/CMD (supervisor as PID 1):
wait for its ready line, `shardbroker status` via podman exec, `podman stop` (SIGTERM to
PID 1): it must exit 0 well before the SIGKILL timeout (the no-tini claim).
The JSON results are checked here with python3; exits non-zero on any failure.
Prints each phase's time and the image size; writes the full result to
out/container/smoke.json (SMOKE_OUT_DIR).

Environment:
  SMOKE_SHM_SIZE   /dev/shm size (default: computed from conf/broker.toml for 2 shards)
  SMOKE_TOTAL      bytes to publish (default 64MiB)
  SMOKE_TIMEOUT_S  limit for the whole container run (default 300)
Needs setup_podman.sh, base_image.sh and build.sh to have run.
USAGE
}
case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    "") ;;
    *) usage >&2; echo "unknown argument: $1" >&2; exit 2 ;;
esac

# shellcheck source=tools/container/lib.sh
source "$(dirname "$0")/lib.sh"
sb_load_env
cd "$SB_REPO_ROOT"
command -v python3 >/dev/null 2>&1 || sb_die "python3 is needed on this machine to check the results"
podman image exists "$SB_IMAGE" || sb_die "image $SB_IMAGE missing: run tools/container/build.sh first"

SMOKE_TOTAL="${SMOKE_TOTAL:-64MiB}"
SMOKE_TIMEOUT_S="${SMOKE_TIMEOUT_S:-300}"
OUT_DIR="${SMOKE_OUT_DIR:-$SB_REPO_ROOT/out/container}"
mkdir -p "$OUT_DIR"

# /dev/shm must hold the whole segment: 2 shards x (PBR ring + BLog) + headers, plus slack.
# Defaults mirror shardbroker/config.py (pbr_slots 16384, blog_bytes_per_shard 512MiB).
if [[ -z "${SMOKE_SHM_SIZE:-}" ]]; then
    SMOKE_SHM_SIZE=$(python3 - conf/broker.toml <<'PY' || echo 2g
import re, sys
try:
    import tomllib
    seg = tomllib.load(open(sys.argv[1], "rb")).get("segment", {})
except Exception:
    seg = {}
units = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
def size(v):
    if isinstance(v, int):
        return v
    m = re.match(r"^\s*(\d+)\s*([KMGT]i?B?|B)?\s*$", str(v), re.I)
    return int(m.group(1)) * units[(m.group(2) or "").upper()[:1]]
blog = size(seg.get("blog_bytes_per_shard", 512 << 20))
slots = int(seg.get("pbr_slots", 16384))
need = 2 * (blog + slots * 128 + (1 << 20)) + (64 << 20)
print(f"{-(-need // (1 << 20))}m")
PY
)
fi

name="sbsmoke-$$"
result="$OUT_DIR/smoke.json"
stdout_file="$OUT_DIR/smoke.stdout"
size=$(podman image inspect --format '{{.Size}}' "$SB_IMAGE")
sb_log "image $SB_IMAGE size ${size} bytes ($((size / 1024 / 1024)) MiB); shm-size $SMOKE_SHM_SIZE; total $SMOKE_TOTAL"

pid1_name="sbsmoke-pid1-$$"
cleanup() { podman rm -f -i "$name" "$pid1_name" >/dev/null 2>&1 || true; }
trap cleanup EXIT

t0=$(sb_now)
rc=0
timeout --kill-after=10 "$SMOKE_TIMEOUT_S" \
    podman run --rm --pull=never --network none --no-healthcheck --name "$name" \
        --shm-size "$SMOKE_SHM_SIZE" \
        -e SMOKE_TOTAL="$SMOKE_TOTAL" -e SMOKE_SEGMENT=sbsmoke \
        -v "$SB_REPO_ROOT/tools/container/smoke_inside.sh:/opt/smoke/smoke_inside.sh:ro" \
        --entrypoint bash "$SB_IMAGE" /opt/smoke/smoke_inside.sh \
    >"$stdout_file" || rc=$?
container_s=$(sb_elapsed "$t0")
((rc != 124 && rc != 137)) || sb_log "container run hit SMOKE_TIMEOUT_S=${SMOKE_TIMEOUT_S}s"
sb_log "container exited rc=$rc after ${container_s} s (start + all phases + stop)"


# --- PID 1: the image's own ENTRYPOINT/CMD, stopped the way an engine stops it ----------------
PID1_STOP_TIMEOUT_S=20
pid1_file="$OUT_DIR/pid1.json"
pid1_ready="" pid1_status_rc="" pid1_rc="" pid1_stop_s="" pid1_error=""
t1=$(sb_now)
if cid=$(podman run -d --pull=never --network none --no-healthcheck --name "$pid1_name" \
        --shm-size "$SMOKE_SHM_SIZE" "$SB_IMAGE" \
        run --config /etc/shardbroker/broker.toml --threads 2 --segment sbpid1 2>&1); then
    deadline=$(( $(date +%s) + 60 ))
    while (($(date +%s) < deadline)); do
        pid1_ready=$(podman logs "$pid1_name" 2>/dev/null | grep -m1 '"event": *"ready"' || true)
        [[ -n "$pid1_ready" ]] && break
        [[ "$(podman inspect --format '{{.State.Running}}' "$pid1_name" 2>/dev/null)" == true ]] || break
        sleep 0.2
    done
    pid1_ready_s=$(sb_elapsed "$t1")
    if [[ -z "$pid1_ready" ]]; then
        pid1_error="no ready line from the image's default command"
        podman logs --tail 20 "$pid1_name" >&2 || true
    else
        # `shardbroker status` is the HEALTHCHECK / probe command: exercise it when it exists.
        if podman exec "$pid1_name" shardbroker status --help >/dev/null 2>&1; then
            podman exec "$pid1_name" shardbroker status >/dev/null 2>&1 && pid1_status_rc=0 || pid1_status_rc=$?
        fi
        t2=$(sb_now)
        podman stop -t "$PID1_STOP_TIMEOUT_S" "$pid1_name" >/dev/null 2>&1 || true
        pid1_rc=$(podman wait "$pid1_name" 2>/dev/null || echo -1)
        pid1_stop_s=$(sb_elapsed "$t2")
        [[ "$pid1_rc" == 0 ]] || podman logs --tail 20 "$pid1_name" >&2 || true
    fi
    podman rm -f -i "$pid1_name" >/dev/null 2>&1 || true
else
    pid1_error="podman run -d failed: $cid"
fi
PID1_READY="$pid1_ready" PID1_STATUS_RC="$pid1_status_rc" PID1_RC="$pid1_rc" \
PID1_STOP_S="$pid1_stop_s" PID1_ERROR="$pid1_error" PID1_READY_S="${pid1_ready_s:-}" \
PID1_LIMIT="$PID1_STOP_TIMEOUT_S" python3 - "$pid1_file" <<'PY'
import json, os, sys
e = os.environ
ready = None
if e["PID1_READY"]:
    try:
        ready = json.loads(e["PID1_READY"])
    except ValueError:
        ready = {"_unparsed": e["PID1_READY"]}
json.dump({
    "ready": ready,
    "ready_s": float(e["PID1_READY_S"]) if e["PID1_READY_S"] else None,
    "status_rc": int(e["PID1_STATUS_RC"]) if e["PID1_STATUS_RC"] else None,
    "exit_rc": int(e["PID1_RC"]) if e["PID1_RC"] else None,
    "stop_s": float(e["PID1_STOP_S"]) if e["PID1_STOP_S"] else None,
    "stop_limit_s": int(e["PID1_LIMIT"]),
    "error": e["PID1_ERROR"] or None,
}, open(sys.argv[1], "w"))
PY

SMOKE_RC="$rc" SMOKE_CONTAINER_S="$container_s" SMOKE_IMAGE_SIZE="$size" SMOKE_TOTAL="$SMOKE_TOTAL" \
python3 - "$stdout_file" "$result" "$pid1_file" <<'PY'
import json, os, re, sys

stdout_path, result_path, pid1_path = sys.argv[1], sys.argv[2], sys.argv[3]
units = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
m = re.match(r"^(\d+)([KMGT]i?B?|B)?$", os.environ["SMOKE_TOTAL"], re.I)
total = int(m.group(1)) * units[(m.group(2) or "").upper()[:1]]
batch = 2 << 20

res = None
for line in reversed(open(stdout_path, errors="replace").read().splitlines()):
    try:
        cand = json.loads(line)
    except ValueError:
        continue
    if isinstance(cand, dict) and cand.get("event") == "smoke":
        res = cand
        break

problems = []
def check(cond, what):
    if not cond:
        problems.append(what)

if res is None:
    print("[smoke.sh] ERROR: no result line from the container (see stderr above)", file=sys.stderr)
    sys.exit(1)

res["container_rc"] = int(os.environ["SMOKE_RC"])
res["container_s"] = float(os.environ["SMOKE_CONTAINER_S"])
res["image_size_bytes"] = int(os.environ["SMOKE_IMAGE_SIZE"])
res["pid1"] = json.load(open(pid1_path))
json.dump(res, open(result_path, "w"), indent=2)

check(res["container_rc"] == 0, f"container exit status {res['container_rc']}")
check(res["status"] == "ok", f"inside script failed in phase {res.get('failed_phase')}")
for phase, rc in sorted(res.get("rc", {}).items()):
    check(rc == 0, f"{phase} exited {rc}")

ready = res.get("ready") or {}
pub = res.get("publish") or {}
dump = res.get("dump")
if not ready:
    problems.append("no ready line from the broker (later phases did not run)")
else:
    check(ready.get("event") == "ready", f"ready line: {ready}")
    check(ready.get("segment") == "sbsmoke", f"ready.segment {ready.get('segment')!r} != 'sbsmoke'")
    check(ready.get("threads") == 2, f"ready.threads {ready.get('threads')!r} != 2")
    port = str(ready.get("listen", ":0")).rpartition(":")[2]
    check(port.isdigit() and int(port) > 0, f"ready.listen {ready.get('listen')!r} has no real port")

    keys = ("bytes", "batches", "messages", "acked_messages", "seconds", "gbps")
    missing = [k for k in keys if k not in pub]
    check(not missing, f"publish summary lacks {missing}: {str(pub)[:300]}")
    if not missing:
        check(pub["bytes"] >= total - batch, f"publish.bytes {pub['bytes']} < {total} - one batch")
        check(pub["batches"] > 0 and pub["messages"] > 0, "publish sent nothing")
        check(pub["acked_messages"] == pub["messages"],
              f"acked_messages {pub['acked_messages']} != messages {pub['messages']}")
        check(pub["gbps"] > 0, "publish.gbps is 0")

    check(isinstance(dump, dict) and "_unparsed" not in dump, f"dump printed no JSON: {dump}")
    def falsy_ok(obj, path="dump"):
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k == "ok" and v is not True:
                    yield f"{path}.ok = {v!r}"
                yield from falsy_ok(v, f"{path}.{k}")
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                yield from falsy_ok(v, f"{path}[{i}]")
    for p in falsy_ok(dump):
        problems.append(f"verify failed: {p}")
    shards = dump.get("shards") if isinstance(dump, dict) else None
    if isinstance(shards, list) and shards and all(isinstance(s, dict) and "messages" in s
                                                   for s in shards):
        in_segment = sum(s["messages"] for s in shards)
        check(in_segment == pub.get("messages"),
              f"segment holds {in_segment} messages, publisher sent {pub.get('messages')}")

st = res.get("stats")
check(isinstance(st, dict) and "_unparsed" not in st, f"stats printed no JSON: {st}")
if isinstance(st, dict) and "total" in st:
    for key in ("bytes", "batches", "messages"):
        check(st["total"].get(key) == pub.get(key),
              f"stats total {key} {st['total'].get(key)} != publisher's {pub.get(key)}")

check(not res.get("shm_leftover"), f"segment not unlinked after SIGTERM: {res.get('shm_leftover')}")

p1 = res["pid1"]
check(p1["error"] is None, f"PID-1 run: {p1['error']}")
if p1["error"] is None:
    r1 = p1["ready"] or {}
    check(r1.get("event") == "ready", f"PID-1 run: ready line {r1}")
    check(p1["status_rc"] in (None, 0),
          f"PID-1 run: `shardbroker status` exited {p1['status_rc']} against a running broker")
    if "pid" in r1:
        check(r1["pid"] == 1, f"PID-1 run: supervisor pid is {r1['pid']}, expected 1")
    check(p1["exit_rc"] == 0, f"PID-1 run: exit status {p1['exit_rc']} after podman stop "
                              "(SIGTERM to PID 1), expected 0")
    check(p1["stop_s"] is not None and p1["stop_s"] < p1["stop_limit_s"] - 2,
          f"PID-1 run: podman stop took {p1['stop_s']} s: SIGTERM was not handled, SIGKILL ended it")

t = res.get("timings_s", {})
print("[smoke.sh] phase timings (s): " + ", ".join(
    f"{k} {t[k]:.2f}" for k in ("ready", "publish", "dump", "stats", "stop") if k in t)
    + f"; whole container {res['container_s']:.1f}")
print(f"[smoke.sh] PID-1 run: ready in {p1.get('ready_s')} s, pid {(p1.get('ready') or {}).get('pid')}, "
      f"status rc={p1.get('status_rc', 'n/a') if p1.get('status_rc') is not None else 'n/a (no status subcommand)'}, "
      f"podman stop -> exit {p1.get('exit_rc')} in {p1.get('stop_s')} s")
if "gbps" in pub:
    print(f"[smoke.sh] publish: {pub.get('bytes')} B in {pub.get('seconds')} s = {pub.get('gbps')} GB/s, "
          f"{pub.get('acked_messages')}/{pub.get('messages')} messages acked")
if isinstance(dump, dict):
    print("[smoke.sh] dump: " + json.dumps(dump)[:400])
print(f"[smoke.sh] image size {res['image_size_bytes']} bytes ({res['image_size_bytes'] >> 20} MiB); "
      f"result: {result_path}")
if problems:
    for line in res.get("broker_stderr_tail", [])[-15:]:
        print(f"[smoke.sh]   broker stderr | {line}", file=sys.stderr)
    for name, lines in res.get("stderr_tails", {}).items():
        for line in lines:
            print(f"[smoke.sh]   {name} stderr | {line}", file=sys.stderr)
    for p in problems:
        print(f"[smoke.sh] FAIL: {p}", file=sys.stderr)
    sys.exit(1)
print("[smoke.sh] OK")
PY
