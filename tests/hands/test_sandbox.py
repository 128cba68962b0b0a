"""The sandbox hands through a real gRPC hand server: no secrets, no network, bounded time, memory, processes and output."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest
import structlog

from hands.builtin.sandbox import SandboxConfig, make_sandbox_hands
from tests.procs import start_service

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-test-secret-0123456789abcdef"
AS_ROOT = os.geteuid() == 0
# Never skipped under CI (.ci/run installs bubblewrap); here it is skipped only where bwrap cannot run at all.
HAVE_BWRAP = shutil.which("bwrap") is not None
needs_bwrap = pytest.mark.skipif(not HAVE_BWRAP, reason="bwrap is not installed (Debian package bubblewrap)")
MODES = [pytest.param("bubblewrap", marks=needs_bwrap), "limits-only"]


@pytest.fixture
async def sandbox(hand_service, hand_client, work_root):
    """sandbox(isolation, **config) -> call(name, **input) on a real hand server with those limits."""

    async def make(isolation: str, **config):
        cfg = SandboxConfig(isolation=isolation, work_root=str(work_root), **config)
        running = await hand_service(make_sandbox_hands(cfg))
        client = hand_client(running.address)

        async def call(name, **kwargs):
            return await client.execute(name, kwargs, timeout=60)

        return call

    return make


def _live_sandbox_processes(config: SandboxConfig = SandboxConfig()) -> list[int]:
    """Pids of processes (not zombies) running as one of the sandbox's per-run uids."""
    uids = set(range(config.uid_base, config.uid_base + config.max_concurrent))
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) in uids and not fields["State"].strip().startswith("Z"):
            found.append(int(entry.name))
    return found


async def _no_sandbox_processes_left(bound: float = 15.0) -> bool:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if not await asyncio.to_thread(_live_sandbox_processes):
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.fixture
def sandbox_process(work_root):
    """Start `python -m hands.builtin.sandbox --port 0` with a secret in its environment: (address, pid)."""
    services = []

    def start(*, isolation: str) -> tuple[str, int]:
        env = {
            "BRAINHANDS_SANDBOX_ISOLATION": isolation,
            "ANTHROPIC_API_KEY": SECRET,
            "BRAINHANDS_SANDBOX_WORK_ROOT": str(work_root),
        }
        service = start_service(["--port", "0"], module="hands.builtin.sandbox", env=env, timeout=60)
        services.append(service)
        return service.address, service.pid

    yield start
    for service in services:
        service.stop(timeout=15)


@pytest.mark.parametrize("isolation", MODES)
async def test_code_cannot_read_the_services_secrets(sandbox_process, hand_client, isolation):
    address, service_pid = sandbox_process(isolation=isolation)
    client = hand_client(address)
    held = await asyncio.to_thread(Path(f"/proc/{service_pid}/environ").read_bytes)
    assert SECRET in held.decode()  # the service does hold it

    python = await client.execute("sandbox_python", {"code": (
        "import os, pathlib\n"
        "print(dict(os.environ))\n"
        "for p in pathlib.Path('/proc').iterdir():\n"
        "    if p.name.isdigit() or p.name == 'self':\n"
        "        try: print(p.name, (p / 'environ').read_bytes())\n"
        "        except OSError as e: print(p.name, 'unreadable', e.errno)\n"
        f"try: print('service', open('/proc/{service_pid}/environ', 'rb').read())\n"
        "except OSError as e: print('service unreadable', e.errno)\n"
    )}, timeout=60)
    shell = await client.execute("sandbox_shell", {"command": "env; cat /proc/self/environ /proc/1/environ | tr '\\0' '\\n'"}, timeout=60)

    assert not python.is_error, python.output
    assert not shell.is_error, shell.output
    assert "HOME" in shell.output and "PATH=" in shell.output  # the output is what we think it is
    for output in (python.output, shell.output):
        assert SECRET not in output
        assert "ANTHROPIC_API_KEY" not in output
    if isolation == "bubblewrap":
        assert "1 b'" in python.output  # pid 1 of the sandbox's own process tree was readable, and clean


async def test_env_holds_only_the_allow_list(sandbox, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)  # in-process: the service's own environment
    call = await sandbox("limits-only")
    result = await call("sandbox_python", code="import os; print(sorted(os.environ))")
    assert result.output.strip() == "['HOME', 'LANG', 'PATH', 'TMPDIR']"


@needs_bwrap
async def test_no_network_under_bubblewrap(sandbox, hand_service):
    listening = await hand_service([])  # a real port on the host's loopback that the code will try
    call = await sandbox("bubblewrap")
    result = await call("sandbox_python", code=(
        "import socket\n"
        f"try: socket.create_connection(('127.0.0.1', {listening.port}), timeout=3); print('CONNECTED')\n"
        "except OSError as e: print('refused', e)\n"
        "print(socket.if_nameindex())\n"
    ))
    assert "CONNECTED" not in result.output
    assert "refused" in result.output
    assert "[(1, 'lo')]" in result.output  # only a loopback of its own: no route anywhere


@pytest.mark.parametrize("isolation", MODES)
async def test_killed_at_the_timeout_with_partial_output(sandbox, isolation):
    call = await sandbox(isolation)
    python = await call("sandbox_python", code="import time\nprint('started', flush=True)\ntime.sleep(60)\nprint('never')", timeout=1)
    shell = await call("sandbox_shell", command="echo first; setsid sleep 60 & sleep 60; echo never", timeout=1)

    for result in (python, shell):
        assert result.is_error
        assert "killed at the 1s timeout" in result.output
        assert "never" not in result.output
    assert python.output.startswith("started\n")
    assert shell.output.startswith("first\n")
    if AS_ROOT:  # even the setsid'd sleep, which left the process group, is gone
        assert await _no_sandbox_processes_left()


@pytest.mark.parametrize("isolation", MODES)
async def test_background_process_neither_delays_the_result_nor_survives_it(sandbox, isolation):
    call = await sandbox(isolation)
    result = await call("sandbox_shell", command="sleep 60 & echo started in the background", timeout=20)
    assert not result.is_error, result.output  # not held until the timeout by the sleep's open stdout
    assert result.output == "started in the background\n"
    if AS_ROOT:
        assert await _no_sandbox_processes_left()


@pytest.mark.parametrize("isolation", MODES)
async def test_memory_cannot_be_exhausted(sandbox, isolation):
    call = await sandbox(isolation, memory_bytes=512 * 1024 * 1024)
    big = await call("sandbox_python", code="x = bytearray(4 * 1024**3)\nprint('allocated')")
    after = await call("sandbox_python", code="print(sum(range(10)))")
    assert big.is_error
    assert "MemoryError" in big.output and "allocated" not in big.output
    assert after.output == "45\n" and not after.is_error


@pytest.mark.skipif(not AS_ROOT and not HAVE_BWRAP, reason="without root (per-run uid) or bwrap nothing bounds a fork bomb but the timeout")
@pytest.mark.parametrize("isolation", MODES)
async def test_fork_bomb_is_contained(sandbox, isolation):
    call = await sandbox(isolation, max_processes=32)
    bomb = await call("sandbox_python", code=(
        "import os\n"
        "print('forking', flush=True)\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        pass\n"
    ), timeout=2)
    after = await call("sandbox_shell", command="echo still serving")

    assert bomb.is_error and "killed at the 2s timeout" in bomb.output
    assert after.output == "still serving\n"
    if AS_ROOT:
        assert await _no_sandbox_processes_left()


@pytest.mark.skipif(not AS_ROOT, reason="RLIMIT_NPROC binds per uid; the per-run uid exists only when the service is root")
async def test_process_limit_binds(sandbox):
    call = await sandbox("limits-only", max_processes=10)
    result = await call("sandbox_python", code=(
        "import os, time\n"
        "made = 0\n"
        "for _ in range(50):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(5); os._exit(0)\n"
        "        made += 1\n"
        "    except OSError as e:\n"
        "        print('fork refused:', e.strerror); break\n"
        "print('made', made)\n"
    ))
    assert "fork refused: Resource temporarily unavailable" in result.output
    made = int(result.output.split("made ")[1])
    assert made < 10


async def test_output_is_cut_at_the_stated_size(sandbox):
    call = await sandbox("limits-only", max_output_bytes=2000)
    result = await call("sandbox_shell", command="seq 1 200000")
    head, marker_and_tail = result.output.split("\n[... output truncated: ", 1)
    marker, tail = marker_and_tail.split("...]\n", 1)
    assert len(head.encode()) + len(tail.encode()) <= 2000
    assert head.startswith("1\n2\n3\n")
    assert tail.endswith("199999\n200000\n")
    assert "the limit is 2000 bytes" in marker
    assert not result.is_error


async def test_cpu_and_file_size_limits(sandbox):
    call = await sandbox("limits-only", cpu_seconds=1, max_file_bytes=1024 * 1024)
    spin = await call("sandbox_python", code="while True: pass", timeout=30)
    write = await call("sandbox_python", code="open('big', 'wb').write(b'x' * 2 * 1024 * 1024)")
    assert spin.is_error and "SIGXCPU" in spin.output and "CPU limit of 1s" in spin.output
    assert write.is_error and "File too large" in write.output


@pytest.mark.parametrize("isolation", MODES)
async def test_fresh_working_directory_removed_afterwards(sandbox, work_root, isolation):
    call = await sandbox(isolation)
    first = await call("sandbox_shell", command="ls -A; echo data > left.txt; pwd")
    second = await call("sandbox_shell", command="ls -A")
    stdin = await call("sandbox_python", code="import sys; print(sys.stdin.read().upper())", stdin="hello")
    failed = await call("sandbox_shell", command="echo oops >&2; exit 3")

    workdir = first.output.strip()  # ls -A printed nothing: the directory was empty
    assert workdir == "/sandbox" if isolation == "bubblewrap" else workdir.startswith(str(work_root) + "/")
    assert second.output == "[no output; exit status 0]"
    assert list(work_root.iterdir()) == []  # every run's directory is gone
    assert stdin.output == "HELLO\n"
    assert failed.is_error and failed.output == "oops\n[exit status 3]"


async def test_describe_and_log_say_which_isolation(hand_service, hand_client, monkeypatch, tmp_path):
    with structlog.testing.capture_logs() as logs:
        limited = make_sandbox_hands(SandboxConfig(isolation="limits-only"))
    (line,) = [e for e in logs if e["event"] == "sandbox isolation"]
    assert line["isolation"] == "limits-only"
    # Chosen out loud, and the log says what code can then reach.
    assert "network" in line["code_can_reach"] and "Redis" in line["code_can_reach"]
    specs = await hand_client((await hand_service(limited)).address).describe()
    assert all("LIMITS ONLY" in s.description and "every file the service's user can read" in s.description
               for s in specs)

    # bwrap missing from PATH: auto refuses to start, saying why and how to choose limits-only
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ValueError, match="will not start without bubblewrap: bwrap is not on PATH.*BRAINHANDS_SANDBOX_ISOLATION=limits-only"):
        make_sandbox_hands(SandboxConfig(isolation="auto"))
    with pytest.raises(ValueError, match="bubblewrap was required"):
        make_sandbox_hands(SandboxConfig(isolation="bubblewrap"))


@needs_bwrap
async def test_auto_picks_bubblewrap_when_it_works(hand_service, hand_client):
    with structlog.testing.capture_logs() as logs:
        hands = make_sandbox_hands(SandboxConfig())
    assert [e["isolation"] for e in logs if e["event"] == "sandbox isolation"] == ["bubblewrap"]
    specs = await hand_client((await hand_service(hands)).address).describe()
    assert {s.name for s in specs} == {"sandbox_python", "sandbox_shell"}
    assert all("Isolation: bubblewrap" in s.description for s in specs)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="memory_bytes"):
        SandboxConfig(memory_bytes=0)
    with pytest.raises(ValueError, match="isolation"):
        SandboxConfig(isolation="docker")
    with pytest.raises(ValueError, match="BRAINHANDS_SANDBOX_TIMEOUT"):
        SandboxConfig.from_env({"BRAINHANDS_SANDBOX_TIMEOUT": "soon"})
    assert SandboxConfig.from_env({"BRAINHANDS_SANDBOX_TIMEOUT": "5"}).timeout == 5.0


@pytest.mark.skipif(not AS_ROOT, reason="a per-run tmpfs needs root (CAP_SYS_ADMIN) to mount")
@pytest.mark.parametrize("isolation", MODES)
async def test_disk_budget_and_file_limit_bind_and_are_said(sandbox, isolation, hand_service, hand_client):
    call = await sandbox(isolation, disk_bytes=8 << 20, max_files=100)
    disk = await call("sandbox_shell", command='for i in $(seq 20); do head -c 1048576 /dev/zero > "${TMPDIR}/f$i" || break; '
                                               'done; echo "wrote $i"')
    files = await call("sandbox_shell", command="for i in $(seq 300); do : > f$i || break; done; echo made $i")
    assert disk.is_error and "No space left on device" in disk.output and "disk budget of 8 MiB" in disk.output
    assert files.is_error and "limit of 100 files and directories was reached" in files.output
    described = make_sandbox_hands(SandboxConfig(isolation=isolation, disk_bytes=8 << 20))[0].description
    assert "size-capped tmpfs of 8 MiB" in described


def test_a_sigkill_is_not_blamed_on_the_memory_limit():
    from hands.builtin.sandbox.runner import RunResult
    from hands.builtin.sandbox.service import _render

    result = _render(RunResult("", -9, False, 1.0, 0), 30, SandboxConfig())
    assert result.is_error and "memory limit" not in result.output and "from outside the run" in result.output
