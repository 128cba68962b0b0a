"""The image built from deploy/Dockerfile serves hands from a locked-down container (built and run with podman)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest

from tests.deploy import podman as pm

pytestmark = pytest.mark.container


@contextlib.contextmanager
def _serving(image: str, module: str, port: int):
    """Run `brainhands serve hand MODULE` in the container, hardened as compose and k8s run it."""
    name = f"bhtest-image-{uuid.uuid4().hex[:8]}"
    pm.podman("run", "--detach", "--name", name, *pm.ULIMITS, "--read-only", "--tmpfs", "/tmp:size=64m",
              "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true", "--publish", f"127.0.0.1::{port}",
              # A volume, as compose and k8s give it: the root filesystem is read-only.
              "--volume", "/workspace",
              # As compose and k8s start the sandbox: bubblewrap cannot make its namespaces in the container.
              *(["--env", "BRAINHANDS_SANDBOX_ISOLATION=limits-only"] if module == "hands.builtin.sandbox" else []),
              image, "serve", "hand", module, "--host", "0.0.0.0", "--port", str(port))
    container = pm.Container(None, module, name)
    try:
        deadline = time.monotonic() + 120
        while "serving hands" not in container.logs():
            assert container.inspect()["State"]["Running"], f"{module} exited:\n{container.logs()[-3000:]}"
            assert time.monotonic() < deadline, f"{module} did not start:\n{container.logs()[-3000:]}"
            time.sleep(0.3)
        host = pm.podman("port", name, str(port)).stdout.decode().split()[0]
        yield container, host
    finally:
        pm.podman("rm", "--force", "--volumes", "--time", "0", name, check=False)


@pytest.fixture(scope="module")
def fs_container(brainhands_image):
    with _serving(brainhands_image, "hands.builtin.fs", 50071) as served:
        yield served


@pytest.fixture(scope="module")
def sandbox_container(brainhands_image):
    with _serving(brainhands_image, "hands.builtin.sandbox", 50072) as served:
        yield served


def test_the_image_runs_as_its_fixed_non_root_user(fs_container):
    container, _ = fs_container
    assert container.inspect()["Config"]["User"] == "10001:10001"
    done = pm.podman("exec", container.name, "id", "-u")
    assert done.stdout.decode().strip() == "10001"


def test_the_image_runs_python_3_11_or_newer(fs_container):
    container, _ = fs_container
    done = pm.podman("exec", container.name, "python", "-c", "import sys; print(sys.version_info >= (3, 11))")
    assert done.stdout.decode().strip() == "True"


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


async def test_concurrent_sandbox_runs_in_the_container_report_their_own_exit_status(sandbox_container, hand_client):
    # In the image (non-root, limits-only) a run used to come back "[exit status 255]" after a clean exit: the
    # hand reaped the process itself, racing asyncio's child watcher. Rounds of concurrent runs showed it every time.
    _, address = sandbox_container
    client = hand_client(address)
    for _ in range(3):
        results = await asyncio.gather(*(
            client.execute("sandbox_python", {"code": f"import sys\nprint('run {i}')\nsys.exit({i})"}, timeout=60)
            for i in range(4)
        ))
        assert [r.output for r in results] == ["run 0\n", *(f"run {i}\n[exit status {i}]" for i in range(1, 4))]
