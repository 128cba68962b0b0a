"""The image built from deploy/Dockerfile serves hands from a locked-down container (needs a Docker engine)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from tests.services import _docker_available

ROOT = Path(__file__).resolve().parents[2]
TAG = "brainhands:deploy-test"

# Not a service .ci/run starts: without an engine (here, and in CI) the image is checked by
# reading it, in test_manifests.py.
pytestmark = pytest.mark.skipif(
    not _docker_available(), reason="no Docker engine to build deploy/Dockerfile (checked by reading in test_manifests.py)"
)


@pytest.fixture(scope="module")
def image():
    from testcontainers.core.image import DockerImage

    with DockerImage(path=ROOT, dockerfile_path="deploy/Dockerfile", tag=TAG) as built:
        yield str(built)


@contextlib.contextmanager
def _serving(image: str, module: str, port: int):
    """Run `brainhands serve hand MODULE` in the container, hardened as compose and k8s run it."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    container = (
        DockerContainer(image)
        .with_command(f"serve hand {module} --host 0.0.0.0 --port {port}")
        .with_exposed_ports(port)
        .with_kwargs(read_only=True, tmpfs={"/tmp": "size=64m"}, cap_drop=["ALL"], security_opt=["no-new-privileges:true"])
    )
    with container:
        wait_for_logs(container, "serving hands", timeout=60, raise_on_exit=True)
        yield container, f"{container.get_container_host_ip()}:{container.get_exposed_port(port)}"


@pytest.fixture(scope="module")
def fs_container(image):
    with _serving(image, "hands.builtin.fs", 50071) as served:
        yield served


@pytest.fixture(scope="module")
def sandbox_container(image):
    with _serving(image, "hands.builtin.sandbox", 50072) as served:
        yield served


def test_the_image_runs_as_its_fixed_non_root_user(fs_container):
    container, _ = fs_container
    assert container.get_wrapped_container().attrs["Config"]["User"] == "10001:10001"
    exit_code, output = container.exec(["id", "-u"])
    assert exit_code == 0 and output.decode().strip() == "10001"


async def test_an_fs_hand_in_the_container_writes_and_reads_its_workspace(fs_container, hand_client):
    _, address = fs_container
    client = hand_client(address)
    names = {spec.name for spec in await client.describe(timeout=30)}
    assert {"fs_list", "fs_read", "fs_write", "fs_edit", "fs_grep"} <= names
    written = await client.execute("fs_write", {"path": "notes/hello.txt", "content": "from the image\n"}, timeout=30)
    assert not written.is_error, written.output
    read = await client.execute("fs_read", {"path": "notes/hello.txt"}, timeout=30)
    assert not read.is_error and "from the image" in read.output


async def test_a_sandbox_hand_in_the_container_runs_python(sandbox_container, hand_client):
    _, address = sandbox_container
    result = await hand_client(address).execute("sandbox_python", {"code": "print(6 * 7)"}, timeout=60)
    assert not result.is_error, result.output
    assert "42" in result.output
