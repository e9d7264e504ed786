#!/usr/bin/env bash
# Build the LOCAL STAND-IN for python:3.11-slim-bookworm with debootstrap and podman import.
#
# No container registry is reachable from the dev machines, so `FROM python:3.11-slim-bookworm`
# cannot be pulled. With `podman build --pull=never` that FROM resolves to
# localhost/python:3.11-slim-bookworm, which this script builds from Debian bookworm packages
# (Debian's Python 3.11 lives in /usr/bin, the real image's in /usr/local/bin: the Dockerfile
# therefore uses `python -m` inside a venv, never absolute interpreter paths).
#
# The existing image IS the cache: if it exists the script does nothing (use --force to rebuild).
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: tools/container/base_image.sh [--force] [--help]

Builds localhost/python:3.11-slim-bookworm (override with SB_BASE_IMAGE) from
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,
              python-is-python3,ca-certificates bookworm ROOTFS MIRROR
MIRROR is read from the machine's apt sources (/etc/apt/sources.list.d/*.sources, then
/etc/apt/sources.list); override with MIRROR=http://... . Then it removes
/usr/lib/python3*/EXTERNALLY-MANAGED, copies /usr/local/share/ca-certificates/ in and runs
update-ca-certificates (pip inside builds fails TLS on machines with an intercepting CA
otherwise), and imports the tree with `podman import`.

Skips everything when the image already exists (that is the cache between runs).
  --force   rebuild even if the image exists
Needs root (debootstrap) and tools/container/setup_podman.sh to have been run.
USAGE
}

force=0
for arg in "$@"; do
    case "$arg" in
        -h|--help) usage; exit 0 ;;
        --force) force=1 ;;
        *) usage >&2; echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

# shellcheck source=tools/container/lib.sh
source "$(dirname "$0")/lib.sh"
sb_load_env

if ((!force)) && podman image exists "$SB_BASE_IMAGE"; then
    sb_log "$SB_BASE_IMAGE already exists: skipping (cached; --force rebuilds)"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || sb_die "debootstrap needs root: rerun as root (or import a python:3.11-slim-bookworm image yourself as $SB_BASE_IMAGE)"
command -v debootstrap >/dev/null 2>&1 || sb_die "debootstrap missing: run tools/container/setup_podman.sh"

# --- the Debian mirror this machine already uses --------------------------------------------
find_mirror() {
    local f uri
    shopt -s nullglob
    # deb822 sources: first URIs: of a stanza whose Suites mention bookworm (not -security).
    for f in /etc/apt/sources.list.d/*.sources; do
        uri=$(awk '
            /^[[:space:]]*$/ { if (uri != "" && suites ~ /(^| )bookworm( |$)/ && types ~ /(^| )deb( |$)/) { print uri; exit } uri=""; suites=""; types=""; next }
            /^URIs:/   { uri=$2 }
            /^Suites:/ { $1=""; suites=$0 " " }
            /^Types:/  { $1=""; types=$0 " " }
            END { if (uri != "" && suites ~ /(^| )bookworm( |$)/ && types ~ /(^| )deb( |$)/) print uri }
        ' "$f" | head -n1)
        [[ -n "$uri" ]] && { echo "$uri"; return 0; }
    done
    # one-line format: deb [opts] URI bookworm main
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r "$f" ]] || continue
        uri=$(awk '$1 == "deb" { i=2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } if ($(i+1) == "bookworm") { print $i; exit } }' "$f")
        [[ -n "$uri" ]] && { echo "$uri"; return 0; }
    done
    return 1
}
MIRROR="${MIRROR:-$(find_mirror || true)}"
[[ -n "$MIRROR" ]] || sb_die "no bookworm 'deb' mirror found in /etc/apt/sources.list*: set MIRROR=http://deb.debian.org/debian (or your mirror) and rerun"

t0=$(sb_now)
mkdir -p "$SB_PODMAN_STATE/tmp"
ROOTFS=$(mktemp -d "$SB_PODMAN_STATE/tmp/rootfs.XXXXXX")

cleanup() {
    # debootstrap mounts proc/sys inside the tree; never rm -rf through a live mount.
    local m
    if [[ -d "$ROOTFS" ]]; then
        for m in $(findmnt -rn -o TARGET | grep -F "$ROOTFS" | sort -r); do umount -l "$m" 2>/dev/null || true; done
        if findmnt -rn -o TARGET | grep -qF "$ROOTFS"; then
            sb_log "WARNING: mounts remain under $ROOTFS; not deleting it (unmount, then rm -rf it)"
        else
            rm -rf "$ROOTFS"
        fi
    fi
}
trap cleanup EXIT

sb_log "debootstrap bookworm from $MIRROR into $ROOTFS (minbase + python3)"
if ! debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
        bookworm "$ROOTFS" "$MIRROR" >"$SB_PODMAN_STATE/debootstrap.log" 2>&1; then
    tail -n 20 "$SB_PODMAN_STATE/debootstrap.log" >&2
    sb_die "debootstrap failed (full log: $SB_PODMAN_STATE/debootstrap.log); check the mirror ($MIRROR) is reachable or set MIRROR=..."
fi
t_boot=$(sb_elapsed "$t0")

# Let pip install into the venv-less system interpreter too (the real image allows it).
rm -f "$ROOTFS"/usr/lib/python3*/EXTERNALLY-MANAGED

# Local CAs (e.g. an intercepting egress proxy's) so pip inside builds can verify TLS.
if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
    mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
    cp -a /usr/local/share/ca-certificates/. "$ROOTFS/usr/local/share/ca-certificates/"
fi
# env.sh points TMPDIR into the state dir, which does not exist inside the new tree.
in_chroot() { env TMPDIR=/tmp chroot "$ROOTFS" "$@"; }
in_chroot update-ca-certificates >"$SB_PODMAN_STATE/update-ca.log" 2>&1 \
    || { cat "$SB_PODMAN_STATE/update-ca.log" >&2; sb_die "update-ca-certificates failed inside $ROOTFS (output above)"; }

# Trim what a slim image does not carry.
in_chroot apt-get clean >/dev/null 2>&1 || true
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/log/*.log \
       "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*

# Environment of the real image, so the Dockerfile behaves the same on both.
sb_log "importing as $SB_BASE_IMAGE"
tar --numeric-owner -C "$ROOTFS" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "stand-in for python:3.11-slim-bookworm (debootstrap $MIRROR)" \
    --quiet - "$SB_BASE_IMAGE" >/dev/null \
    || sb_die "podman import failed; check 'podman info' works after sourcing $SB_PODMAN_STATE/env.sh"

size=$(podman image inspect --format '{{.Size}}' "$SB_BASE_IMAGE")
sb_log "built $SB_BASE_IMAGE in $(sb_elapsed "$t0") s (debootstrap ${t_boot} s), size ${size} bytes ($((size / 1024 / 1024)) MiB)"
