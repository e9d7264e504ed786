#!/usr/bin/env bash
# shellcheck disable=SC2317  # emit_result/finish run from the EXIT trap
# Runs INSIDE the shardbroker container (tools/container/smoke.sh bind-mounts it read-only).
#
# broker (background) -> publish 64 MiB over 2 connections -> dump --verify -> stats (if the
# subcommand exists) -> SIGTERM the broker and wait -> the segment must be gone.
# Progress goes to stderr; the LAST stdout line is one JSON object with every phase's result
# and timing, which smoke.sh checks. Exit status: 0 when every phase ran, non-zero otherwise
# (smoke.sh still checks the JSON for content).
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    echo "Usage: smoke_inside.sh   (inside the image; env: SMOKE_SEGMENT, SMOKE_TOTAL, SMOKE_CONFIG)"
    exit 0
fi

SEG="${SMOKE_SEGMENT:-sbsmoke}"
TOTAL="${SMOKE_TOTAL:-64MiB}"
CONFIG="${SMOKE_CONFIG:-/etc/shardbroker/broker.toml}"
READY_TIMEOUT_S="${SMOKE_READY_TIMEOUT_S:-60}"
STOP_TIMEOUT_S="${SMOKE_STOP_TIMEOUT_S:-30}"
W="$(mktemp -d)"

log() { printf '[smoke-inside] %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }

broker_pid=""
status="ok"
failed_phase=""
declare -A T=()
fail() { status="fail"; failed_phase="${failed_phase:-$1}"; log "FAILED in $1: $2"; }

emit_result() {
    # Combine everything into one JSON line on stdout (python from the image's venv).
    local timings="" k
    for k in "${!T[@]}"; do timings+="${k}=${T[$k]};"; done
    SMOKE_STATUS="$status" SMOKE_FAILED="$failed_phase" SMOKE_TIMINGS="$timings" \
    SMOKE_W="$W" SMOKE_SEG="$SEG" python - <<'PY'
import json, os, pathlib
w = pathlib.Path(os.environ["SMOKE_W"])

def last_json(name):
    p = w / name
    if not p.exists():
        return None
    lines = [l for l in p.read_text(errors="replace").splitlines() if l.strip()]
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return {"_unparsed": lines[-5:]}

def first_json(name):
    p = w / name
    if not p.exists():
        return None
    for line in p.read_text(errors="replace").splitlines():
        if line.strip():
            try:
                return json.loads(line)
            except ValueError:
                return {"_unparsed": [line]}
    return None

def tail(name, n=25):
    p = w / name
    return p.read_text(errors="replace").splitlines()[-n:] if p.exists() else []

timings = dict(kv.split("=", 1) for kv in os.environ["SMOKE_TIMINGS"].split(";") if kv)
rcs = {}
for p in w.glob("*.rc"):
    rcs[p.stem] = int(p.read_text().strip() or -1)
leftover = sorted(n for n in os.listdir("/dev/shm") if os.environ["SMOKE_SEG"] in n)
out = {
    "event": "smoke",
    "status": os.environ["SMOKE_STATUS"],
    "failed_phase": os.environ["SMOKE_FAILED"] or None,
    "timings_s": {k: float(v) for k, v in timings.items()},
    "rc": rcs,
    "ready": first_json("broker.out"),
    "publish": last_json("publish.out"),
    "dump": last_json("dump.out"),
    "stats": last_json("stats.out"),
    "stats_available": (w / "stats.available").exists(),
    "shm_leftover": leftover,
    "broker_stderr_tail": tail("broker.err"),
    "stderr_tails": {n: tail(n + ".err", 10) for n in ("publish", "dump", "stats")},
}
print(json.dumps(out))
PY
}

finish() {
    local rc=$?
    trap - EXIT
    if [[ -n "$broker_pid" ]] && kill -0 "$broker_pid" 2>/dev/null; then
        log "broker still running at exit: SIGKILL"
        kill -KILL "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
        [[ "$status" == ok ]] && fail cleanup "broker had to be killed"
    fi
    ((rc == 0)) || [[ "$status" == fail ]] || fail script "exit status $rc"
    emit_result
    if [[ "$status" == ok ]]; then exit 0; else exit 1; fi
}
trap finish EXIT

# Run a CLI phase, recording stdout/stderr/rc and the elapsed time; never aborts the script.
phase() {
    local name="$1"; shift
    local t; t=$(now)
    log "$name: $*"
    local rc=0
    "$@" >"$W/$name.out" 2>"$W/$name.err" || rc=$?
    echo "$rc" >"$W/$name.rc"
    T[$name]=$(since "$t")
    log "$name: rc=$rc in ${T[$name]} s"
    return "$rc"
}

log "$(shardbroker --version 2>/dev/null || echo 'shardbroker (no --version)'); uid $(id -u); /dev/shm $(df -h /dev/shm | awk 'NR==2 {print $2}')"

# --- 1. broker ---------------------------------------------------------------------------
t=$(now)
shardbroker run --config "$CONFIG" --listen 127.0.0.1:0 --threads 2 --segment "$SEG" \
    >"$W/broker.out" 2>"$W/broker.err" &
broker_pid=$!
ready_line=""
deadline=$(awk -v a="$(now)" -v d="$READY_TIMEOUT_S" 'BEGIN { printf "%d", a + d }')
while :; do
    # A complete first line (newline-terminated) is the ready object.
    if [[ -s "$W/broker.out" ]] && [[ $(head -c 65536 "$W/broker.out" | wc -l) -ge 1 ]]; then
        ready_line=$(head -n1 "$W/broker.out")
        break
    fi
    if ! kill -0 "$broker_pid" 2>/dev/null; then
        wait "$broker_pid" && rc=0 || rc=$?
        broker_pid=""
        echo "$rc" >"$W/broker.rc"
        fail ready "broker exited (rc=$rc) before its ready line; stderr tail follows"
        tail -n 20 "$W/broker.err" >&2 || true
        exit 1
    fi
    if (($(date +%s) >= deadline)); then
        fail ready "no ready line within ${READY_TIMEOUT_S}s"
        exit 1
    fi
    sleep 0.05
done
T[ready]=$(since "$t")
listen=$(printf '%s' "$ready_line" | python -c 'import json,sys; d=json.load(sys.stdin); assert d["event"]=="ready", d; print(d["listen"])') \
    || { fail ready "first stdout line is not a ready object: $ready_line"; exit 1; }
log "ready in ${T[ready]} s: listen $listen"

# --- 2. publish --------------------------------------------------------------------------
phase publish shardbroker publish --connect "$listen" --connections 2 --batch-size 2MiB \
    --message-size 1KiB --total "$TOTAL" --json || fail publish "rc=$(cat "$W/publish.rc")"

# --- 3. dump --verify (segment still live; the broker owns it) ---------------------------
phase dump shardbroker dump --segment "$SEG" --json --verify || fail dump "rc=$(cat "$W/dump.rc")"

# --- 4. stats over the control endpoint: wait (bounded) until the receivers' metrics
#        snapshots cover everything the publisher sent, then keep that reply ------------------
touch "$W/stats.available"
want_batches=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["batches"])' \
    "$W/publish.out" 2>/dev/null || echo -1)
for _ in $(seq 50); do
    phase stats shardbroker stats --json || { fail stats "rc=$(cat "$W/stats.rc")"; break; }
    got=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["total"]["batches"])' \
        "$W/stats.out" 2>/dev/null || echo -2)
    [[ "$got" == "$want_batches" ]] && break
    sleep 0.1
done

# --- 5. SIGTERM and wait -----------------------------------------------------------------
t=$(now)
kill -TERM "$broker_pid"
stop_deadline=$(( $(date +%s) + STOP_TIMEOUT_S ))
while kill -0 "$broker_pid" 2>/dev/null && (($(date +%s) < stop_deadline)); do sleep 0.05; done
if kill -0 "$broker_pid" 2>/dev/null; then
    fail stop "broker still running ${STOP_TIMEOUT_S}s after SIGTERM"
    exit 1
fi
wait "$broker_pid" && rc=0 || rc=$?
broker_pid=""
echo "$rc" >"$W/broker.rc"
T[stop]=$(since "$t")
log "stop: broker rc=$rc in ${T[stop]} s"
((rc == 0)) || fail stop "broker exited with rc=$rc after SIGTERM (expected 0)"
exit 0
