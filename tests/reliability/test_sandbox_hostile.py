"""A corpus of escape attempts through sandbox_python and sandbox_shell on the sandbox service as a real process.

Each attempt must be contained (the check says what containment means for it) and reported
(a result the model can read, never a dead service): after every attempt the service answers
a plain call, and its own process and secret are untouched.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest

from hands import HandClient

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-reliability-secret-9f8e7d6c"
OUTSIDE = Path(tempfile.gettempdir()) / "brainhands-escape-target"

# (name, hand, code, timeout, check(output, is_error) -> bool, what containment means)
CORPUS = [
    ("fork bomb", "sandbox_shell", "f(){ f|f& }; f", 3,
     lambda out, err: True, "the process limit binds; every process killed when the run ends (checked below)"),
    ("python fork bomb", "sandbox_python", "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass", 3,
     lambda out, err: err, "killed; the service lives"),
    ("memory bomb", "sandbox_python", "x = bytearray(8 * 1024**3)\nprint('allocated')", 20,
     lambda out, err: err and "allocated" not in out, "MemoryError under the memory limit"),
    ("infinite loop", "sandbox_python", "while True: pass", 2,
     lambda out, err: err and "timeout" in out, "killed at the wall-clock timeout"),
    ("read /proc/1/environ", "sandbox_shell", "cat /proc/1/environ; echo; cat /proc/self/environ", 10,
     lambda out, err: SECRET not in out, "no secret: pid 1 is the sandbox's own"),
    ("read the hand's environment", "sandbox_python",
     "import os\nfor p in os.listdir('/proc'):\n    try: print(open(f'/proc/{p}/environ','rb').read())\n    except Exception: pass\n"
     "print(os.environ)", 10, lambda out, err: SECRET not in out and "ANTHROPIC_API_KEY" not in out, "no secret anywhere"),
    ("reach the network", "sandbox_python",
     "import socket\nfor host in [('127.0.0.1', {port}), ('1.1.1.1', 53)]:\n"
     "    try: socket.create_connection(host, timeout=2); print('CONNECTED', host)\n"
     "    except OSError as e: print('refused', host, e)", 15,
     lambda out, err: "CONNECTED" not in out, "no route: not even the host's loopback"),
    ("write outside the working directory", "sandbox_shell",
     f"echo pwned > {OUTSIDE}; echo pwned > /tmp/x; echo pwned > /etc/pwned; echo pwned > $HOME/../pwned; ls -la /", 10,
     lambda out, err: not OUTSIDE.exists() and not Path("/etc/pwned").exists(), "read-only system; host files untouched"),
    ("symlink to a host file", "sandbox_shell",
     f"ln -s {OUTSIDE} link && echo pwned > link; ln -s /etc/shadow s && cat s; ln -s /proc/1/root r && ls r/root", 10,
     lambda out, err: not OUTSIDE.exists() and "root:" not in out, "links resolve inside the sandbox only"),
    ("huge output", "sandbox_python", "import sys\nsys.stdout.write('x' * 50_000_000)", 30,
     lambda out, err: len(out) < 200_000, "cut at the stated size"),
    ("binary output", "sandbox_python", "import sys, os\nsys.stdout.buffer.write(os.urandom(100_000))", 10,
     lambda out, err: isinstance(out, str) and len(out) < 200_000, "decoded with replacement, cut at the size"),
    ("kill the parent", "sandbox_shell", "kill -9 $PPID; kill -9 -1; kill -9 1; kill -9 {service_pid}; echo tried", 10,
     lambda out, err: True, "the service survives (checked below)"),
    ("kill the service by pid from python", "sandbox_python",
     "import os, signal\nfor pid in [os.getppid(), 1, {service_pid}]:\n"
     "    try: os.kill(pid, signal.SIGKILL); print('killed', pid)\n    except OSError as e: print('refused', pid, e)", 10,
     lambda out, err: True, "the service survives (checked below)"),
    ("big file", "sandbox_shell", "head -c 2000000000 /dev/zero > big; ls -l big", 20,
     lambda out, err: "File too large" in out and "2000000000" not in out, "the file size limit (16 MiB here)"),
    ("exhaust file descriptors", "sandbox_python",
     "fs = []\ntry:\n    while True: fs.append(open('/dev/null'))\nexcept OSError as e: print('stopped at', len(fs), e)", 10,
     lambda out, err: "stopped at" in out, "RLIMIT_NOFILE"),
]


@pytest.fixture
async def sandbox_service():
    """The sandbox service (auto isolation) as a process with a secret in its environment: (client, pid)."""
    work_root = Path(tempfile.mkdtemp(prefix="brainhands-rel-sandbox-"))
    work_root.chmod(0o711)
    env = {**os.environ, "ANTHROPIC_API_KEY": SECRET, "BRAINHANDS_LOG_FORMAT": "json", "PYTHONPATH": str(ROOT),
           "BRAINHANDS_SANDBOX_WORK_ROOT": str(work_root), "BRAINHANDS_SANDBOX_MAX_PROCESSES": "32",
           "BRAINHANDS_SANDBOX_MEMORY_BYTES": str(512 * 1024 * 1024), "BRAINHANDS_SANDBOX_MAX_FILE_BYTES": str(16 << 20)}
    log = tempfile.NamedTemporaryFile(prefix="brainhands-rel-sandbox-", suffix=".log")  # noqa: SIM115
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hands.builtin.sandbox", "--port", "0",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=log, env=env, cwd=ROOT,
    )
    client = None
    try:
        address, isolation = "", ""
        async with asyncio.timeout(30):
            while not address:
                for line in Path(log.name).read_text().splitlines():
                    record = json.loads(line) if line.startswith("{") else {}
                    isolation = record.get("isolation", isolation)
                    address = record.get("address", "") if record.get("event") == "serving hands" else address
                assert proc.returncode is None, Path(log.name).read_text()[-2000:]
                await asyncio.sleep(0.05)
        client = HandClient(address)
        yield client, proc, isolation
    finally:
        if client is not None:
            await client.close()
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        log.close()
        shutil.rmtree(work_root, ignore_errors=True)


async def test_escape_attempts_are_contained_and_reported(sandbox_service, record):
    client, proc, isolation = sandbox_service
    with socket.socket() as listener:  # a real port on the host's loopback for the network attempt
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        failures = []
        for name, hand_name, code, timeout, contained, meaning in CORPUS:
            code = code.replace("{port}", str(port)).replace("{service_pid}", str(proc.pid))
            key = "code" if hand_name == "sandbox_python" else "command"
            result = await client.execute(hand_name, {key: code, "timeout": timeout}, timeout=timeout + 30)
            ok = contained(result.output, result.is_error)
            alive = proc.returncode is None
            after = await client.execute("sandbox_shell", {"command": "echo still serving"}, timeout=30)
            served = after.output == "still serving\n"
            if not (ok and alive and served):
                failures.append((name, result.output[-300:], alive, served))
            last = result.output.strip().splitlines()[-1][:120] if result.output.strip() else ""
            record("hostile code", name, "contained" if ok and alive and served else "NOT CONTAINED",
                   hand=hand_name, is_error=result.is_error, reported=last, containment=meaning, isolation=isolation)
    assert not failures, failures
    assert not OUTSIDE.exists()
    if os.geteuid() == 0:  # per-run uids exist only as root: then nothing of any attempt may outlive it
        deadline = asyncio.get_running_loop().time() + 15
        while (left := await asyncio.to_thread(_sandbox_processes)) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        assert not left, f"sandbox processes outlived their runs: {left}"


def _sandbox_processes(uid_base: int = 61000, count: int = 8) -> list[int]:
    """Live (not zombie) processes owned by the sandbox's per-run uids."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if uid_base <= int(status["Uid"].split()[0]) < uid_base + count and not status["State"].strip().startswith("Z"):
            found.append(int(entry.name))
    return found
