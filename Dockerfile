# syntax=docker/dockerfile:1
#
# shardbroker broker-node image.
#
#   podman build --pull=never --format docker -t localhost/shardbroker:dev .   (tools/container/build.sh)
#   docker build -t shardbroker .                                               (anywhere with a registry)
#
# On the dev machines no registry is reachable: tools/container/base_image.sh builds a local
# stand-in tagged localhost/python:3.11-slim-bookworm, which `--pull=never` resolves this FROM
# to. The stand-in has Debian's Python in /usr/bin, the real image in /usr/local/bin, so every
# step runs `python -m ...` from PATH inside a venv and never names an interpreter path.
# (buildah 1.28 here: no `RUN <<EOF` heredocs; keep RUN lines plain.)
#
# Runtime notes for operators:
#   * The receivers write into a POSIX shared-memory segment under /dev/shm. Container engines
#     default /dev/shm to 64 MiB: run with --shm-size (docker/podman) or an emptyDir
#     medium: Memory (Kubernetes, conf/k8s/daemonset.yaml) at least as large as the segment.
#   * Default seccomp profiles block io_uring; the broker falls back to epoll on its own.

############################ builder: venv with the project ############################
FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PYTHONDONTWRITEBYTECODE=1

# A venv, so the runtime stage copies one self-contained directory; its bin/python links to
# the base image's interpreter, which is identical in the runtime stage (same FROM).
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what `pip install .` needs (see .dockerignore); all runtime deps ship manylinux wheels,
# so no compiler is needed in this stage.
COPY pyproject.toml README.md ./
COPY shardbroker ./shardbroker
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip install . \
 && python -m pip check \
 && shardbroker --help >/dev/null

############################ runtime ############################
FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="shardbroker" \
      org.opencontainers.image.description="Broker node publish-receive path: sharded receivers into a POSIX shm log" \
      org.opencontainers.image.source="https://example.invalid/shardbroker"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# numactl: the supervisor launches receivers under `numactl --cpunodebind/--membind` when a
# NUMA plan asks for it (it runs without numactl too, placing with sched_setaffinity only).
RUN apt-get update \
 && apt-get install -y --no-install-recommends numactl \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

# Fixed numeric ids: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --gid 10001 shardbroker \
 && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /var/lib/shardbroker \
            --no-create-home --shell /usr/sbin/nologin shardbroker \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/shardbroker

COPY --from=builder /opt/venv /opt/venv
COPY conf/broker.toml /etc/shardbroker/broker.toml

USER 10001:10001
WORKDIR /var/lib/shardbroker

# `shardbroker status` exits 0 when a broker answers on its control endpoint.
# (Podman keeps HEALTHCHECK only with `--format docker`; build.sh passes it.)
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["shardbroker", "status"]

# No tini/dumb-init: the shardbroker supervisor is written to be PID 1. It installs its own
# SIGTERM/SIGINT handlers (PID 1 gets no default signal actions), forwards the stop to every
# receiver, reaps all children (including orphans re-parented to it) and unlinks the shm
# segment before exiting.
STOPSIGNAL SIGTERM
ENTRYPOINT ["shardbroker"]
CMD ["run", "--config", "/etc/shardbroker/broker.toml"]
