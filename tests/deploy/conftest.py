"""Fixtures for the container tests: podman present (or a skip, or a failure under CI), the image built once."""

from __future__ import annotations

import pytest

from tests.deploy import podman as pm
from tests.services import IN_CI


@pytest.fixture(scope="session")
def container_timings():
    """Seconds per build and start-up step, printed at the end so a slow step is visible in CI's log."""
    timings = pm.Timings()
    yield timings
    if timings.steps:
        print("\n[containers] " + ", ".join(f"{k}: {v} s" for k, v in timings.steps.items()))


@pytest.fixture(scope="session")
def podman_ready():
    missing = pm.podman_missing()
    if missing:
        if IN_CI:
            pytest.fail(f"{missing}; under CI=true this fails the run: .ci/run must install it")
        pytest.skip(missing)


@pytest.fixture(scope="session")
def brainhands_image(podman_ready, container_timings) -> str:
    """deploy/Dockerfile built with podman on the Debian base (localhost/brainhands-base, reused when present)."""
    return pm.build_image(container_timings)


@pytest.fixture(scope="session")
def compose_images(brainhands_image, container_timings) -> dict[str, str]:
    """The compose file's image names mapped to what runs them here."""
    return {"brainhands:0.1.0": brainhands_image, **pm.ensure_standins(container_timings)}
