#!/usr/bin/env bash
# Side by side, interleaved: `shardbroker publish` (1 connection, 2 MiB batches, 1 receiver)
# versus `iperf3 -l 1M` (1 stream), REPS times each. Prints one line per run and the medians.
# Usage: [BROKER_ARGS="--blog-size 64MiB"] tools/s1_vs_iperf3.sh [TOTAL=8GiB] [REPS=5]
# (needs iperf3: apt-get install iperf3)
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL=${1:-8GiB}
REPS=${2:-5}
BIN=${BIN:-.venv/bin}
command -v iperf3 >/dev/null || { echo "iperf3 missing: apt-get install -y iperf3" >&2; exit 2; }
bytes=$("$BIN/python" -c "from shardbroker.config import parse_size; print(parse_size('$TOTAL'))")
tmp=$(mktemp -d)
cleanup() { [ -n "${BROKER:-}" ] && kill "$BROKER" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
for i in $(seq "$REPS"); do
    "$BIN/shardbroker" run --threads 1 --listen 127.0.0.1:0 --log-level warning \
        --segment "shardbroker-s1-$$" ${BROKER_ARGS:-} >"$tmp/ready" 2>"$tmp/broker.err" &
    BROKER=$!
    for _ in $(seq 300); do [ -s "$tmp/ready" ] && break; sleep 0.1; done
    port=$("$BIN/python" -c "import json; print(json.load(open('$tmp/ready'))['listen'].rsplit(':',1)[1])")
    "$BIN/shardbroker" publish --connect "127.0.0.1:$port" --connections 1 --batch-size 2MiB \
        --total "$TOTAL" --json >"$tmp/pub.json"
    "$BIN/shardbroker" dump --segment "shardbroker-s1-$$" --json >"$tmp/dump.json"
    kill "$BROKER"; wait "$BROKER" || true; BROKER=
    "$BIN/python" - "$tmp" <<'PY' | tee -a "$tmp/sb.txt"
import json, sys
d = json.load(open(sys.argv[1] + "/pub.json"))
s = json.load(open(sys.argv[1] + "/dump.json"))["shards"][0]
b = s["batches_committed"]
print(f"shardbroker {d['gbps']:.3f} GB/s  recv_calls/batch {s['stats']['recv_calls'] / b:.2f}"
      f"  wakeups/batch {s['stats']['wakeups'] / b:.2f}  batches {b}")
PY
    iperf3 -s -1 -p 5299 >/dev/null 2>&1 &
    srv=$!
    sleep 0.3
    iperf3 -c 127.0.0.1 -p 5299 -l 1M -n "$bytes" -J >"$tmp/iperf.json"
    wait "$srv" || true
    "$BIN/python" -c "
import json; d = json.load(open('$tmp/iperf.json'))
print(f\"iperf3      {d['end']['sum_received']['bits_per_second'] / 8e9:.3f} GB/s\")" | tee -a "$tmp/ip.txt"
done
"$BIN/python" - "$tmp" <<'PY'
import statistics, sys
sb = [float(l.split()[1]) for l in open(sys.argv[1] + "/sb.txt")]
ip = [float(l.split()[1]) for l in open(sys.argv[1] + "/ip.txt")]
m1, m2 = statistics.median(sb), statistics.median(ip)
print(f"median shardbroker {m1:.3f} GB/s (min {min(sb):.3f} max {max(sb):.3f}); "
      f"iperf3 {m2:.3f} GB/s (min {min(ip):.3f} max {max(ip):.3f}); ratio {m1 / m2:.2f}")
PY
