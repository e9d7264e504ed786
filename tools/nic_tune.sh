#!/usr/bin/env bash
# Check or set the receive-side NIC knobs a shardbroker node cares about, on ONE interface.
#
# Why each one: GRO merges segments before TCP sees them (fewer, larger skbs per recv);
# interrupt coalescing (rx-usecs) trades latency for fewer interrupts; BIG TCP raises the
# GSO/GRO aggregate above 64 KiB (on loopback in a netns it took one publisher from 9.8 to
# 13.4 GB/s); busy polling lets a receiver spin on the queue instead of sleeping. --check
# changes nothing; --apply changes only what was asked for, on the named interface only
# (busy polling is a host-wide sysctl, and says so).
set -euo pipefail

PROG=${0##*/}
# Overridable so tests can simulate a machine without ethtool.
ETHTOOL=${SHARDBROKER_ETHTOOL:-ethtool}

usage() {
    cat <<EOF
Usage: $PROG IFACE [--check | --apply] [--rx-usecs N] [--big-tcp BYTES] [--busy-poll USEC]

Report (--check, the default) or set (--apply, root only) on IFACE:
  GRO                    ethtool -k/-K IFACE gro on       (--apply turns it on if off)
  interrupt coalescing   ethtool -c/-C IFACE rx-usecs N   (only with --rx-usecs)
  BIG TCP                ip link set dev IFACE gso_max_size BYTES gro_max_size BYTES
                         (and the IPv4 variants where iproute2 reports them; only with
                         --big-tcp; at most the device's tso_max_size, e.g. 262144)
  busy polling           sysctl net.core.busy_poll and net.core.busy_read = USEC
                         (host-wide, not per interface; only with --busy-poll; e.g. 50)

Exit status: 0 nothing to change (--check) or all applied (--apply); 1 --check found
something --apply would change, or a requested change failed or is unsupported; 2 bad
usage, unknown interface, ethtool missing, or --apply without root.
Environment: SHARDBROKER_ASSUME_NONROOT=1 makes --apply refuse as if not root.
EOF
}

die() { # die STATUS MESSAGE: one line on stderr, then exit
    echo "$PROG: $2" >&2
    exit "$1"
}

row() { printf '%-26s %-14s %-14s %s\n' "$@"; }

# ------------------------------------------------------------------ argument handling

IFACE=""
MODE=check
RX_USECS=""
BIG_TCP=""
BUSY_POLL=""
PENDING=0 # --check: how many settings --apply would change
FAILED=0  # requested changes that failed or are unsupported

need_number() { # need_number OPTION VALUE
    [[ $2 =~ ^[0-9]{1,9}$ ]] || die 2 "$1 needs a non-negative whole number, got '$2'"
}

parse_args() {
    while (($#)); do
        case $1 in
            --check) MODE=check ;;
            --apply) MODE=apply ;;
            --rx-usecs | --big-tcp | --busy-poll)
                (($# >= 2)) || die 2 "$1 needs a value; see --help"
                need_number "$1" "$2"
                case $1 in
                    --rx-usecs) RX_USECS=$2 ;;
                    --big-tcp) BIG_TCP=$2 ;;
                    --busy-poll) BUSY_POLL=$2 ;;
                esac
                shift
                ;;
            -h | --help)
                usage
                exit 0
                ;;
            -*) die 2 "unknown option '$1'; see --help" ;;
            *)
                [[ -z $IFACE ]] || die 2 "one interface only (got '$IFACE' and '$1')"
                IFACE=$1
                ;;
        esac
        shift
    done
    [[ -n $IFACE ]] || die 2 "no interface given; usage: $PROG IFACE [--check|--apply] ..."
    # 65536 is the pre-BIG-TCP size; 524280 (8 x 65535) is the kernel's GSO/GRO maximum.
    if [[ -n $BIG_TCP ]] && ((BIG_TCP < 65536 || BIG_TCP > 524280)); then
        die 2 "--big-tcp must be between 65536 and 524280 bytes (e.g. 262144)"
    fi
}

iface_exists() {
    # Names are at most 15 bytes and never contain '/': refuse anything that could escape
    # /sys/class/net or be read by ip as a keyword.
    [[ $IFACE =~ ^[^/[:space:]]{1,15}$ && $IFACE != . && $IFACE != .. ]] || return 1
    if command -v ip >/dev/null; then
        ip link show dev "$IFACE" >/dev/null 2>&1 # netlink: right even inside a netns
    else
        [[ -e /sys/class/net/$IFACE ]]
    fi
}

preflight() {
    iface_exists || die 2 "interface '$IFACE' does not exist here; list them with 'ip link'"
    command -v "$ETHTOOL" >/dev/null ||
        die 2 "ethtool not found; install it with 'apt-get install ethtool'"
    if [[ $MODE == apply ]] && [[ ${SHARDBROKER_ASSUME_NONROOT:-0} == 1 || $EUID -ne 0 ]]; then
        die 2 "--apply changes $IFACE and needs root; rerun with sudo (or use --check)"
    fi
}

# ------------------------------------------------------------------ GRO

gro_state() { # prints "on", "off", "on [fixed]", ... or "unknown"
    local line
    line=$("$ETHTOOL" -k "$IFACE" 2>/dev/null | grep '^generic-receive-offload:') || {
        echo unknown
        return
    }
    echo "${line#generic-receive-offload: }"
}

section_gro() {
    local before after
    before=$(gro_state)
    case $before in
        on*) row GRO "$before" "$before" "" ;;
        *fixed*) row GRO "$before" "$before" "fixed by the driver; cannot enable" ;;
        off) gro_enable ;;
        *) row GRO "$before" "$before" "ethtool -k $IFACE does not report GRO" ;;
    esac
}

gro_enable() {
    local after
    if [[ $MODE == check ]]; then
        row GRO off on "--apply would enable it"
        PENDING=$((PENDING + 1))
        return
    fi
    if "$ETHTOOL" -K "$IFACE" gro on 2>/dev/null; then
        after=$(gro_state)
        row GRO off "$after" "enabled"
    else
        row GRO off off "ethtool -K $IFACE gro on failed"
        FAILED=$((FAILED + 1))
    fi
}

# ------------------------------------------------------------------ interrupt coalescing

coalesce_field() { # coalesce_field OUTPUT FIELD: value of "FIELD: value" lines
    awk -F': *' -v f="$2" '$1 == f { print $2; exit }' <<<"$1"
}

section_coalesce() {
    local out before adaptive note=""
    if ! out=$("$ETHTOOL" -c "$IFACE" 2>&1); then
        if grep -qi 'not supported' <<<"$out"; then
            row "coalescing rx-usecs" n/a n/a "not supported by $IFACE"
        else
            row "coalescing rx-usecs" n/a n/a "ethtool -c failed: $(head -n1 <<<"$out")"
        fi
        [[ -z $RX_USECS ]] || FAILED=$((FAILED + 1))
        return
    fi
    before=$(coalesce_field "$out" rx-usecs)
    adaptive=$(awk '/^Adaptive RX:/ { print $3; exit }' <<<"$out")
    if [[ $adaptive == on ]]; then
        note="adaptive-rx is on: the driver may override rx-usecs"
    fi
    if [[ -z $RX_USECS || $RX_USECS == "$before" ]]; then
        row "coalescing rx-usecs" "${before:-?}" "${before:-?}" "$note"
    else
        coalesce_set "$before" "$note"
    fi
}

coalesce_set() { # coalesce_set BEFORE NOTE
    local out
    if [[ $MODE == check ]]; then
        row "coalescing rx-usecs" "${1:-?}" "$RX_USECS" "--apply would set it${2:+; $2}"
        PENDING=$((PENDING + 1))
        return
    fi
    if out=$("$ETHTOOL" -C "$IFACE" rx-usecs "$RX_USECS" 2>&1); then
        row "coalescing rx-usecs" "${1:-?}" \
            "$(coalesce_field "$("$ETHTOOL" -c "$IFACE")" rx-usecs)" "$2"
    else
        grep -qi 'not supported' <<<"$out" && out="not supported by $IFACE"
        row "coalescing rx-usecs" "${1:-?}" "${1:-?}" "failed: $(head -n1 <<<"$out")"
        FAILED=$((FAILED + 1))
    fi
}

# ------------------------------------------------------------------ BIG TCP

link_attr() { # link_attr DETAILS NAME: the number after "NAME " in ip -d link show output
    grep -oE "(^|[[:space:]])$2 [0-9]+" <<<"$1" | awk '{ print $2; exit }'
}

section_big_tcp() {
    local details attr cur want limit
    local -a attrs=(gso_max_size gro_max_size) before=() target=() notes=()
    if ! command -v ip >/dev/null; then
        row "BIG TCP" n/a n/a "ip not found; install it with 'apt-get install iproute2'"
        [[ -z $BIG_TCP ]] || FAILED=$((FAILED + 1))
        return 0
    fi
    details=$(ip -d link show dev "$IFACE")
    if [[ -z $(link_attr "$details" gso_max_size) ]]; then
        row "BIG TCP" n/a n/a "this iproute2 does not report gso_max_size; upgrade iproute2"
        [[ -z $BIG_TCP ]] || FAILED=$((FAILED + 1))
        return 0
    fi
    # IPv4 BIG TCP (kernel >= 6.3) has its own attributes; iproute2 < 6.3 does not show them.
    if [[ -n $(link_attr "$details" gso_ipv4_max_size) ]]; then
        attrs+=(gso_ipv4_max_size gro_ipv4_max_size)
    fi
    limit=$(link_attr "$details" tso_max_size)
    for attr in "${attrs[@]}"; do
        cur=$(link_attr "$details" "$attr")
        want=${BIG_TCP:-$cur}
        notes+=("")
        if [[ $attr == gso* && -n $limit ]] && ((want > limit)); then
            # GSO cannot exceed what the device segments; GRO (the receive side, the one a
            # broker needs) has no such device limit, so it is still raised.
            want=$cur
            notes[-1]="stays: $BIG_TCP is above the device's tso_max_size $limit"
        fi
        before+=("$cur")
        target+=("$want")
    done
    big_tcp_report
}

big_tcp_report() { # uses attrs, before, target, notes from section_big_tcp
    local i changed=0
    local -a after=()
    for i in "${!attrs[@]}"; do
        [[ ${before[$i]} == "${target[$i]}" ]] || changed=1
    done
    if ((!changed)); then
        after=("${before[@]}")
    elif [[ $MODE == check ]]; then
        after=("${target[@]}")
        PENDING=$((PENDING + 1))
    else
        big_tcp_apply || FAILED=$((FAILED + 1))
        for i in "${!attrs[@]}"; do
            after+=("$(link_attr "$(ip -d link show dev "$IFACE")" "${attrs[$i]}")")
        done
    fi
    for i in "${!attrs[@]}"; do
        if [[ -z ${notes[$i]} && ${before[$i]} != "${target[$i]}" ]]; then
            notes[i]=$([[ $MODE == check ]] && echo "--apply would set it" || echo set)
        fi
        row "${attrs[$i]}" "${before[$i]}" "${after[$i]}" "${notes[$i]}"
    done
    if [[ -n $limit ]]; then # set in section_big_tcp (bash scoping is dynamic)
        row "tso_max_size" "$limit" "$limit" "device limit for gso_max_size (read-only)"
    fi
}

big_tcp_apply() { # one ip call for every attribute that changes
    local i out
    local -a args=()
    for i in "${!attrs[@]}"; do
        [[ ${before[$i]} == "${target[$i]}" ]] || args+=("${attrs[$i]}" "${target[$i]}")
    done
    if ! out=$(ip link set dev "$IFACE" "${args[@]}" 2>&1); then
        echo "ip link set dev $IFACE ${args[*]} failed: $(head -n1 <<<"$out")" >&2
        return 1
    fi
}

# ------------------------------------------------------------------ busy polling

section_busy_poll() {
    local name path cur
    for name in busy_poll busy_read; do
        path=/proc/sys/net/core/$name
        if [[ ! -r $path ]]; then
            row "net.core.$name" n/a n/a \
                "not available (kernel without busy polling, or a non-initial netns)"
            [[ -z $BUSY_POLL ]] || FAILED=$((FAILED + 1))
            continue
        fi
        cur=$(<"$path")
        busy_poll_row "$name" "$cur"
    done
}

busy_poll_row() { # busy_poll_row NAME CURRENT
    local name=$1 cur=$2
    if [[ -z $BUSY_POLL || $BUSY_POLL == "$cur" ]]; then
        row "net.core.$name" "$cur" "$cur" "host-wide"
    elif [[ $MODE == check ]]; then
        row "net.core.$name" "$cur" "$BUSY_POLL" "--apply would set it (host-wide)"
        PENDING=$((PENDING + 1))
    elif sysctl -qw "net.core.$name=$BUSY_POLL" >/dev/null 2>&1; then
        row "net.core.$name" "$cur" "$(<"/proc/sys/net/core/$name")" "set (host-wide)"
    else
        row "net.core.$name" "$cur" "$cur" "sysctl -w net.core.$name failed"
        FAILED=$((FAILED + 1))
    fi
}

# ------------------------------------------------------------------ main

main() {
    parse_args "$@"
    preflight
    echo "$IFACE ($MODE)"
    if [[ $MODE == check ]]; then
        row setting now "after --apply" note
    else
        row setting before after note
    fi
    section_gro
    section_coalesce
    section_big_tcp
    section_busy_poll
    if [[ $MODE == check ]] && ((PENDING)); then
        echo "$PENDING setting(s) differ; run 'sudo $0 $IFACE --apply ...' to change them"
    fi
    if ((FAILED)); then
        echo "$FAILED requested setting(s) unsupported or failed on $IFACE (see notes)"
    fi
    ((FAILED + PENDING == 0)) || exit 1
}

main "$@"
