#!/usr/bin/env bash
# Check or raise the kernel's socket-buffer ceilings for a shardbroker node.
#
# Why: a receiver's SO_RCVBUF of 32 MiB is silently capped by net.core.rmem_max (4 MiB by
# default: the kernel doubles the request, then caps it), and setting SO_RCVBUF at all turns
# TCP autotuning off; autotuning itself only grows to tcp_rmem's third field. Raising the
# ceilings lets both paths reach the target. Only values below the target are changed, the
# originals are saved once so --revert can restore them, and nothing here needs the network.
set -euo pipefail

PROG=${0##*/}
DEFAULT_TARGET=67108864 # 64 MiB
DEFAULT_STATE=/var/lib/shardbroker/sysctl-saved.conf
# Overridable so tests can drive --apply/--revert against a fake sysctl instead of the host.
SYSCTL=${SHARDBROKER_SYSCTL:-sysctl}
KEYS=(net.core.rmem_max net.core.wmem_max net.ipv4.tcp_rmem net.ipv4.tcp_wmem)

usage() {
    cat <<EOF
Usage: $PROG [--check | --apply | --revert] [--target BYTES] [--state FILE]

Check or raise the socket-buffer ceilings a shardbroker receiver needs:
  net.core.rmem_max, net.core.wmem_max        at least BYTES
  net.ipv4.tcp_rmem, net.ipv4.tcp_wmem        third (max) field at least BYTES

Modes:
  --check    print current vs target; exit 1 if any is below target, else 0 (default)
  --apply    save current values to the state file (once), raise the low ones with
             sysctl -w, print before/after (root only)
  --revert   restore the values saved by --apply and remove the state file (root only)

Options:
  --target BYTES   target in bytes (default $DEFAULT_TARGET = 64 MiB)
  --state FILE     where --apply saves and --revert reads (default $DEFAULT_STATE)
  -h, --help       show this help

Exit status: 0 ok, 1 below target (--check) or a sysctl failed, 2 bad usage or not root.
Changes made with --apply last until reboot; to persist them, copy the values into
/etc/sysctl.d/90-shardbroker.conf.
Environment: SHARDBROKER_ASSUME_NONROOT=1 makes --apply/--revert refuse as if not root.
EOF
}

die() { # die STATUS MESSAGE: one line on stderr, then exit
    echo "$PROG: $2" >&2
    exit "$1"
}

require_root() {
    if [[ ${SHARDBROKER_ASSUME_NONROOT:-0} == 1 || $EUID -ne 0 ]]; then
        die 2 "$MODE changes kernel settings and needs root; rerun with sudo (or use --check)"
    fi
}

read_key() { # current value with runs of tabs/spaces squeezed to one space
    local value
    value=$("$SYSCTL" -n "$1") || die 1 "cannot read $1 with $SYSCTL; is procfs mounted?"
    echo "$value" | tr -s ' \t' ' '
}

max_field() { # the number compared with the target: field 3 of tcp_*mem, else the value
    local key=$1 value=$2 min def max
    case $key in
        net.ipv4.tcp_*)
            read -r min def max <<<"$value"
            echo "${max:?unexpected $key value: $value}"
            ;;
        *) echo "$value" ;;
    esac
}

raised_value() { # the value --apply writes: only the max is raised, min/default are kept
    local key=$1 value=$2 min def max
    case $key in
        net.ipv4.tcp_*)
            read -r min def max <<<"$value"
            echo "$min $def $TARGET"
            ;;
        *) echo "$TARGET" ;;
    esac
}

is_low() { (($(max_field "$1" "$2") < TARGET)); }

row() { printf '%-20s %-24s %-13s %s\n' "$@"; }
row2() { printf '%-20s %-24s %s\n' "$@"; }

do_check() {
    local key value low=0
    row sysctl current target status
    for key in "${KEYS[@]}"; do
        value=$(read_key "$key")
        if is_low "$key" "$value"; then
            row "$key" "$value" ">= $TARGET" LOW
            low=1
        else
            row "$key" "$value" ">= $TARGET" ok
        fi
    done
    if ((low)); then
        echo "below target: run 'sudo $0 --apply${TARGET_ARG}' to raise them"
    fi
    return "$low"
}

save_state() { # written once: a second --apply must not overwrite the true originals
    local key tmp
    [[ -e $STATE ]] && return 0
    mkdir -p "$(dirname "$STATE")"
    tmp=$(mktemp "$STATE.XXXXXX")
    {
        echo "# saved by $PROG --apply on $(date -u +%Y-%m-%dT%H:%M:%SZ); restore with --revert"
        for key in "${KEYS[@]}"; do
            echo "$key = $(read_key "$key")"
        done
    } >"$tmp"
    mv "$tmp" "$STATE"
    echo "saved current values to $STATE"
}

write_key() {
    "$SYSCTL" -w "$1=$2" >/dev/null ||
        die 1 "sysctl -w $1 failed; values already changed can be restored with --revert"
}

do_apply() {
    local key value
    local -a low=() before=()
    require_root
    for key in "${KEYS[@]}"; do
        value=$(read_key "$key")
        before+=("$value")
        if is_low "$key" "$value"; then low+=("$key"); fi
    done
    if ((${#low[@]} == 0)); then
        do_check
        echo "nothing to change: every value already meets $TARGET"
        return 0
    fi
    save_state
    for key in "${low[@]}"; do
        write_key "$key" "$(raised_value "$key" "$(read_key "$key")")"
    done
    print_before_after before
    echo "not persistent across reboot; copy the values into /etc/sysctl.d/90-shardbroker.conf"
}

print_before_after() { # print_before_after NAME_OF_ARRAY_OF_OLD_VALUES (in KEYS order)
    local -n old=$1
    local i
    row2 sysctl before after
    for i in "${!KEYS[@]}"; do
        row2 "${KEYS[$i]}" "${old[$i]}" "$(read_key "${KEYS[$i]}")"
    done
}

do_revert() {
    local line key value i
    local -a before=() restore_keys=() restore_values=()
    require_root
    [[ -f $STATE ]] || die 1 "nothing to revert: no saved values at $STATE (run --apply first)"
    while IFS= read -r line; do
        [[ -z ${line//[[:space:]]/} || $line == \#* ]] && continue
        key=${line%%=*}
        key=${key//[[:space:]]/}
        value=${line#*=}
        value=$(echo "$value" | tr -s ' \t' ' ' | sed 's/^ //; s/ $//')
        # Only our own keys: the file is input, and sysctl -w as root must not take orders.
        [[ " ${KEYS[*]} " == *" $key "* ]] || die 1 "unexpected line in $STATE: $line"
        [[ $value =~ ^[0-9]+( [0-9]+ [0-9]+)?$ ]] || die 1 "bad value in $STATE: $line"
        restore_keys+=("$key")
        restore_values+=("$value")
    done <"$STATE"
    for key in "${KEYS[@]}"; do before+=("$(read_key "$key")"); done
    for i in "${!restore_keys[@]}"; do
        write_key "${restore_keys[$i]}" "${restore_values[$i]}"
    done
    rm -f "$STATE"
    print_before_after before
    echo "restored from $STATE and removed it"
}

MODE=--check
TARGET=$DEFAULT_TARGET
TARGET_ARG=""
STATE=$DEFAULT_STATE
while (($#)); do
    case $1 in
        --check | --apply | --revert) MODE=$1 ;;
        --target)
            (($# >= 2)) || die 2 "--target needs a value in bytes"
            TARGET=$2
            TARGET_ARG=" --target $2"
            shift
            ;;
        --state)
            (($# >= 2)) || die 2 "--state needs a file name"
            STATE=$2
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die 2 "unknown argument '$1'; see --help" ;;
    esac
    shift
done
[[ $TARGET =~ ^[1-9][0-9]{0,17}$ ]] || die 2 "--target must be a positive number of bytes"

case $MODE in
    --check) do_check ;;
    --apply) do_apply ;;
    --revert) do_revert ;;
esac
