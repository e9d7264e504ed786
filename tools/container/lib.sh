# shellcheck shell=bash
# shellcheck disable=SC2034  # globals used by the scripts that source this file
# Shared helpers for tools/container/*.sh. Sourced, never executed.
#
# SB_PODMAN_STATE is the private podman state directory (configs, image storage, run state).
# Everything podman-related lives under it; no system-wide file is touched.

SB_PODMAN_STATE="${SB_PODMAN_STATE:-${XDG_STATE_HOME:-/var/tmp}/shardbroker-podman}"
SB_BASE_IMAGE="${SB_BASE_IMAGE:-localhost/python:3.11-slim-bookworm}"
SB_IMAGE="${SB_IMAGE:-localhost/shardbroker:dev}"
SB_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

sb_log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
sb_die() { printf '[%s] ERROR: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# Seconds since the epoch with milliseconds, for phase timings.
sb_now() { date +%s.%N; }
sb_elapsed() { awk -v a="$1" -v b="$(sb_now)" 'BEGIN { printf "%.1f", b - a }'; }

# Load the private podman environment written by setup_podman.sh.
sb_load_env() {
    local env_file="$SB_PODMAN_STATE/env.sh"
    [[ -r "$env_file" ]] || sb_die "no $env_file: run tools/container/setup_podman.sh first (same SB_PODMAN_STATE / XDG_STATE_HOME)"
    # shellcheck disable=SC1090
    source "$env_file"
    command -v podman >/dev/null 2>&1 || sb_die "podman not on PATH: run tools/container/setup_podman.sh (as root) to install it"
}
