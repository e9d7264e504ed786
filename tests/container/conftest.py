"""Register the ``container`` marker for the container/deployment tests in this directory."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "container: deployment artefacts (Dockerfile, podman build + smoke, k8s manifests, "
        "systemd unit); the podman flow needs root, apt and a few minutes",
    )
