#!/usr/bin/env bash
# Start the shardbroker supervisor bound to a NUMA node:
#   numa/launch.sh [--node N] [--membind M] -- shardbroker run ARGS...
#
# Why: receivers should run on the NIC's node and the segment's pages should live on the
# chosen memory node (the NIC's node, or a CPU-less CXL node). Binding the supervisor makes
# everything it creates (the segment, prefaulted from it; its children) inherit that policy.
# Receivers still pin themselves to single CPUs with sched_setaffinity, which may leave the
# node if the placement plan spilled. The command is exec'd, so it keeps this PID and gets
# signals directly (a container's stop signal must reach the supervisor, not a shell).
set -euo pipefail

PROG=${0##*/}
# Overridable so tests can simulate a machine without numactl.
NUMACTL=${SHARDBROKER_NUMACTL:-numactl}
NODE_ROOT=/sys/devices/system/node

usage() {
    cat <<EOF
Usage: $PROG [--node N] [--membind M] -- COMMAND [ARGS...]

Run COMMAND (e.g. 'shardbroker run ...') under
  numactl --cpunodebind=N --membind=M
  --node N      run on the CPUs of NUMA node(s) N (e.g. 1, or 0,1)
  --membind M   allocate memory only on node(s) M; defaults to N (a CPU-less CXL node is
                fine here: it has memory but no CPUs)
Without --node and --membind the command runs unbound. Without numactl the command runs
unbound too, with a warning (install it with 'apt-get install numactl').
Find the NIC's node with: cat /sys/class/net/IFACE/device/numa_node (-1 or missing: unknown).
EOF
}

die() { # die STATUS MESSAGE: one line on stderr, then exit
    echo "$PROG: $2" >&2
    exit "$1"
}

check_nodes() { # check_nodes OPTION LIST: syntax, and existence where sysfs can tell
    local opt=$1 list=$2 id
    [[ $list =~ ^[0-9]+([-,][0-9]+)*$ ]] ||
        die 2 "$opt takes node numbers like 1 or 0,1 or 0-1, got '$list'"
    [[ -d $NODE_ROOT ]] || return 0 # no NUMA in this kernel: let numactl decide
    for id in ${list//[,-]/ }; do
        [[ -d $NODE_ROOT/node$id ]] ||
            die 2 "NUMA node $id does not exist (nodes: $(existing_nodes)); see numactl --hardware"
    done
}

existing_nodes() {
    local d out=()
    for d in "$NODE_ROOT"/node[0-9]*; do [[ -d $d ]] && out+=("${d##*/node}"); done
    local IFS=,
    echo "${out[*]}"
}

NODE=""
MEMBIND=""
while (($#)); do
    case $1 in
        --node | --membind)
            (($# >= 2)) || die 2 "$1 needs a node number; see --help"
            if [[ $1 == --node ]]; then NODE=$2; else MEMBIND=$2; fi
            shift 2
            ;;
        --node=*)
            NODE=${1#*=}
            shift
            ;;
        --membind=*)
            MEMBIND=${1#*=}
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        --)
            shift
            break
            ;;
        -*) die 2 "unknown option '$1'; see --help" ;;
        *) break ;;
    esac
done
(($#)) || die 2 "no command given; usage: $PROG [--node N] [--membind M] -- shardbroker run ..."

MEMBIND=${MEMBIND:-$NODE}
[[ -z $NODE ]] || check_nodes --node "$NODE"
[[ -z $MEMBIND ]] || check_nodes --membind "$MEMBIND"

if [[ -z $NODE && -z $MEMBIND ]]; then
    exec "$@"
fi
if ! command -v "$NUMACTL" >/dev/null; then
    echo "$PROG: warning: numactl not found, running without NUMA binding" \
        "(install it with 'apt-get install numactl')" >&2
    exec "$@"
fi
args=()
[[ -z $NODE ]] || args+=("--cpunodebind=$NODE")
args+=("--membind=$MEMBIND")
exec "$NUMACTL" "${args[@]}" -- "$@"
