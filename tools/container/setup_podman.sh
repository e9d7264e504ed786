#!/usr/bin/env bash
# Install podman + runc + debootstrap (when missing) and write a PRIVATE podman configuration.
#
# No system-wide config is edited: containers.conf and storage.conf are written under the state
# dir and selected through CONTAINERS_CONF / CONTAINERS_STORAGE_CONF, exported by the env.sh
# this script writes. Other scripts in this directory source that env.sh.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: tools/container/setup_podman.sh [--help]

Installs podman, runc and debootstrap with apt-get (--no-install-recommends) when any is
missing (needs root), then writes under the state directory
  ${SB_PODMAN_STATE:-${XDG_STATE_HOME:-/var/tmp}/shardbroker-podman}
    containers.conf  runtime runc, cgroupfs, default ulimits nofile/nproc 1024:1024
    storage.conf     overlay driver, graphroot/runroot inside the state dir
    env.sh           exports CONTAINERS_CONF, CONTAINERS_STORAGE_CONF, BUILDAH_ISOLATION=chroot

Use it:   source "$SB_PODMAN_STATE/env.sh" && podman images
Idempotent; safe to rerun. Edits no system-wide configuration.

Why these settings (measured on the dev machines):
  * runc, not crun: crun refuses the hybrid cgroup v1/v2 layout of these kernels.
  * default_ulimits 1024:1024: root lacks CAP_SYS_RESOURCE here, so runc cannot raise
    RLIMIT_NOFILE/NPROC to podman's defaults and container start fails without this.
  * cgroupfs: no systemd is running as PID 1 to act as cgroup manager.
  * BUILDAH_ISOLATION=chroot: RUN steps in `podman build` run chrooted (no nested runtime).
USAGE
}

case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    "") ;;
    *) usage >&2; echo "unknown argument: $1" >&2; exit 2 ;;
esac

# shellcheck source=tools/container/lib.sh
source "$(dirname "$0")/lib.sh"

t0=$(sb_now)

missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        sb_die "missing ${missing[*]}; rerun this script as root, or install them yourself: apt-get install --no-install-recommends podman runc debootstrap"
    fi
    command -v apt-get >/dev/null 2>&1 || sb_die "missing ${missing[*]} and no apt-get: install podman, runc and debootstrap with your package manager"
    sb_log "installing ${missing[*]} (apt-get update + install --no-install-recommends)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || sb_die "apt-get update failed: check network access to the apt mirror in /etc/apt/sources.list*"
    # runc is listed explicitly so apt satisfies podman's "crun | runc" dependency with runc.
    apt-get install -y -qq --no-install-recommends podman runc debootstrap >/dev/null \
        || sb_die "apt-get install podman runc debootstrap failed (see apt output above)"
fi

mkdir -p "$SB_PODMAN_STATE"/{storage,run,tmp,libpod-tmp}
chmod 0700 "$SB_PODMAN_STATE"

cat >"$SB_PODMAN_STATE/containers.conf" <<EOF
# Written by tools/container/setup_podman.sh; private to shardbroker builds. Do not edit:
# rerun the script instead.
[containers]
# Container logs in files (podman logs works without journald).
log_driver = "k8s-file"
# root lacks CAP_SYS_RESOURCE here: the OCI runtime cannot raise limits above these.
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
# crun refuses this kernel's hybrid cgroup v1/v2 setup; runc works.
runtime = "runc"
# No systemd as PID 1 on these machines.
cgroup_manager = "cgroupfs"
# journald is not running; keep podman events in a file inside the state dir.
events_logger = "file"
events_logfile_path = "$SB_PODMAN_STATE/events.log"
tmp_dir = "$SB_PODMAN_STATE/libpod-tmp"
EOF

cat >"$SB_PODMAN_STATE/storage.conf" <<EOF
# Written by tools/container/setup_podman.sh; private to shardbroker builds.
[storage]
driver = "overlay"
runroot = "$SB_PODMAN_STATE/run"
graphroot = "$SB_PODMAN_STATE/storage"
EOF

cat >"$SB_PODMAN_STATE/env.sh" <<EOF
# Written by tools/container/setup_podman.sh. Source it: . "$SB_PODMAN_STATE/env.sh"
export SB_PODMAN_STATE="$SB_PODMAN_STATE"
export CONTAINERS_CONF="$SB_PODMAN_STATE/containers.conf"
export CONTAINERS_STORAGE_CONF="$SB_PODMAN_STATE/storage.conf"
export BUILDAH_ISOLATION=chroot
# podman/buildah stage layers and build contexts in TMPDIR; keep them inside the state dir.
export TMPDIR="$SB_PODMAN_STATE/tmp"
EOF

# shellcheck disable=SC1091
source "$SB_PODMAN_STATE/env.sh"
podman info --format '{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}} {{.Host.CgroupManager}} cgroup{{.Host.CgroupsVersion}}' >/dev/null 2>"$SB_PODMAN_STATE/podman-info.err" \
    || sb_die "podman info failed with the private config: see $SB_PODMAN_STATE/podman-info.err"
sb_log "podman $(podman --version | awk '{print $3}'), runtime/storage/cgroups: $(podman info --format '{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}} {{.Host.CgroupManager}} {{.Host.CgroupsVersion}}' 2>/dev/null)"
sb_log "ready in $(sb_elapsed "$t0") s; use: source $SB_PODMAN_STATE/env.sh"
