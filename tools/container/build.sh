#!/usr/bin/env bash
# Build the shardbroker image with podman from the repository's Dockerfile.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: tools/container/build.sh [--no-cache] [--help] [-- EXTRA_PODMAN_BUILD_ARGS...]

Runs, from the repository root:
  podman build --pull=never --format docker -t localhost/shardbroker:dev .
(--pull=never: no registry is reachable; FROM python:3.11-slim-bookworm resolves to the local
stand-in from base_image.sh. --format docker: OCI format would drop the HEALTHCHECK.)
Prints the build time and the image size. Override the tag with SB_IMAGE.
Needs setup_podman.sh and base_image.sh to have run.
USAGE
}

extra=()
while (($#)); do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --no-cache) extra+=(--no-cache); shift ;;
        --) shift; extra+=("$@"); break ;;
        *) usage >&2; echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

# shellcheck source=tools/container/lib.sh
source "$(dirname "$0")/lib.sh"
sb_load_env
cd "$SB_REPO_ROOT"

podman image exists "$SB_BASE_IMAGE" \
    || sb_die "base image $SB_BASE_IMAGE missing: run tools/container/base_image.sh (or load a real python:3.11-slim-bookworm under that name)"
for f in Dockerfile pyproject.toml README.md shardbroker/cli.py conf/broker.toml; do
    [[ -e "$f" ]] || sb_die "$f is missing: the image build copies it; create it (or wait for the package to be complete) and rerun"
done

t0=$(sb_now)
sb_log "podman build --pull=never --format docker -t $SB_IMAGE ."
podman build --pull=never --format docker -t "$SB_IMAGE" "${extra[@]}" -f Dockerfile . \
    || sb_die "podman build failed (output above); the failing step is the last STEP printed"
size=$(podman image inspect --format '{{.Size}}' "$SB_IMAGE")
sb_log "built $SB_IMAGE in $(sb_elapsed "$t0") s; image size ${size} bytes ($((size / 1024 / 1024)) MiB)"
