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

# Writes up to 4 GiB in 16 MB files (under the 16 MiB file size limit) until a write fails; stops itself at
# 640 MB, five times the budget, so that code without the budget is caught without filling the host.
FILL = ('i=0; while [ $i -lt 256 ]; do head -c 16000000 /dev/zero > {dir}/f$i || break; i=$((i+1)); '
        'if [ $i -ge 40 ]; then echo OVER BUDGET; break; fi; done; echo "wrote $i files"')

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
    ("fill /tmp past the disk budget", "sandbox_shell", FILL.format(dir="/tmp"), 60,
     lambda out, err: err and "No space left" in out and "OVER BUDGET" not in out and "disk budget" in out,
     "ENOSPC at the run's disk budget (128 MiB here, shared with the working directory), said in the result"),
    ("fill the working directory past the disk budget", "sandbox_shell", FILL.format(dir="."), 60,
     lambda out, err: err and "No space left" in out and "OVER BUDGET" not in out and "disk budget" in out,
     "ENOSPC at the run's disk budget, said in the result"),
    ("a hundred thousand files", "sandbox_python",
     "n = 0\ntry:\n    while n < 100_000:\n        open(f'f{n}', 'w').close()\n        n += 1\n"
     "except OSError as e:\n    print('stopped at', n, e)", 60,
     lambda out, err: err and "stopped at" in out and "files and directories was reached" in out,
     "the file-count limit (2000 here)"),
    ("write to /dev and /", "sandbox_shell", "echo x > /dev/pwned; echo x > /pwned; mkdir /pwned-dir; echo ---; ls / /dev", 10,
     lambda out, err: "pwned" not in out.split("---")[-1], "read-only /dev and /: only the bounded mounts take files"),
    ("exhaust file descriptors", "sandbox_python",
     "fs = []\ntry:\n    while True: fs.append(open('/dev/null'))\nexcept OSError as e: print('stopped at', len(fs), e)", 10,
     lambda out, err: "stopped at" in out, "RLIMIT_NOFILE"),
]


DISK_BUDGET = 128 << 20  # the fixture's BRAINHANDS_SANDBOX_DISK_BYTES
MAX_FILES = 2000


@pytest.fixture
async def start_sandbox():
    """start(**env) -> (client, proc, isolation, uids) for a sandbox service process; ends every one at teardown."""
    started = []

    async def start(**extra_env):
        work_root = Path(tempfile.mkdtemp(prefix="brainhands-rel-sandbox-"))
        work_root.chmod(0o711)
        env = {**os.environ, "ANTHROPIC_API_KEY": SECRET, "BRAINHANDS_LOG_FORMAT": "json", "PYTHONPATH": str(ROOT),
               "BRAINHANDS_SANDBOX_WORK_ROOT": str(work_root), "BRAINHANDS_SANDBOX_MAX_PROCESSES": "32",
               "BRAINHANDS_SANDBOX_MEMORY_BYTES": str(512 * 1024 * 1024),
               "BRAINHANDS_SANDBOX_MAX_FILE_BYTES": str(16 << 20),
               "BRAINHANDS_SANDBOX_DISK_BYTES": str(DISK_BUDGET), "BRAINHANDS_SANDBOX_MAX_FILES": str(MAX_FILES),
               **extra_env}
        log = tempfile.NamedTemporaryFile(prefix="brainhands-rel-sandbox-", suffix=".log")  # noqa: SIM115
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hands.builtin.sandbox", "--port", "0",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=log, env=env, cwd=ROOT,
        )
        entry = {"proc": proc, "log": log, "work_root": work_root, "client": None}
        started.append(entry)
        address, isolation, uids = "", "", ""
        async with asyncio.timeout(30):
            while not address:
                for line in Path(log.name).read_text().splitlines():
                    record = json.loads(line) if line.startswith("{") else {}
                    isolation = record.get("isolation", isolation)
                    uids = record.get("uids", uids)
                    address = record.get("address", "") if record.get("event") == "serving hands" else address
                if proc.returncode is not None:
                    return None, proc, Path(log.name).read_text(), ""
                await asyncio.sleep(0.05)
        entry["client"] = HandClient(address)
        return entry["client"], proc, isolation, uids

    yield start
    for entry in started:
        if entry["client"] is not None:
            await entry["client"].close()
        if entry["proc"].returncode is None:
            entry["proc"].kill()
        await entry["proc"].wait()
        entry["log"].close()
        shutil.rmtree(entry["work_root"], ignore_errors=True)


@pytest.fixture
async def sandbox_service(start_sandbox):
    """The sandbox service (auto isolation) as a process with a secret in its environment: (client, pid, ...)."""
    client, proc, isolation, uids = await start_sandbox()
    assert client is not None, isolation[-2000:]
    return client, proc, isolation, uids


async def test_escape_attempts_are_contained_and_reported(sandbox_service, record):
    client, proc, isolation, uids = sandbox_service
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
        while (left := await asyncio.to_thread(_sandbox_processes, *_uid_range(uids))) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        assert not left, f"sandbox processes outlived their runs: {left}"


def _uid_range(uids: str) -> tuple[int, int]:
    """(base, count) from the service's log field "61000-61007"."""
    first, last = (int(n) for n in uids.split("-"))
    return first, last - first + 1


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


def _host_usage(path: Path) -> tuple[int, int]:
    """(bytes of shared memory in use on the host, i.e. tmpfs pages; bytes used on path's filesystem)."""
    shmem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Shmem:"):
            shmem = int(line.split()[1]) * 1024
    st = os.statvfs(path)
    return shmem, (st.f_blocks - st.f_bfree) * st.f_frsize


@pytest.mark.parametrize("where", ["/tmp", "the working directory"])
async def test_a_run_writing_4_gib_is_stopped_at_its_budget_and_the_host_stays_within_it(sandbox_service, where, record):
    client, _, isolation, _ = sandbox_service
    target = "/tmp" if where == "/tmp" else "."
    # Hold the files a moment after the last write, so the host-side sampling sees the peak.
    command = FILL.format(dir=target) + "; sleep 1"
    work_disk = Path(tempfile.gettempdir())
    base_shmem, base_disk = await asyncio.to_thread(_host_usage, work_disk)
    peak_shmem = peak_disk = 0
    call = asyncio.create_task(client.execute("sandbox_shell", {"command": command, "timeout": 120}, timeout=150))
    while not call.done():
        shmem, disk = await asyncio.to_thread(_host_usage, work_disk)
        peak_shmem, peak_disk = max(peak_shmem, shmem - base_shmem), max(peak_disk, disk - base_disk)
        await asyncio.sleep(0.05)
    result = call.result()
    stopped = "No space left" in result.output and "OVER BUDGET" not in result.output
    record("sandbox disk budget", f"write 4 GiB to {where}", "stopped at the budget" if stopped else "NOT STOPPED",
           budget_mib=DISK_BUDGET >> 20, host_shmem_peak_mib=round(peak_shmem / (1 << 20)),
           host_disk_peak_mib=round(peak_disk / (1 << 20)), isolation=isolation,
           reported=result.output.strip().splitlines()[-1][:140])
    assert stopped, result.output[-600:]
    assert result.is_error and "disk budget of 128 MiB" in result.output, result.output[-600:]
    slack = 48 << 20  # other processes on the host move both figures a little
    assert peak_shmem <= DISK_BUDGET + slack, f"host shared memory grew {peak_shmem >> 20} MiB"
    assert peak_disk <= slack, f"host disk use grew {peak_disk >> 20} MiB"


@pytest.mark.skipif(os.geteuid() != 0, reason="per-run uids exist only when the service runs as root")
async def test_two_sandbox_services_on_one_host_never_kill_each_others_runs(start_sandbox, record):
    first, _, _, first_uids = await start_sandbox()
    second, _, _, second_uids = await start_sandbox()
    assert first is not None and second is not None, "a second service with the default config did not start"
    long_run = asyncio.create_task(first.execute(
        "sandbox_shell", {"command": "sleep 6; echo long run done", "timeout": 60}, timeout=90))
    await asyncio.sleep(1)  # the long run is under way before the short ones start and end
    shorts = []
    for round_ in range(4):
        shorts += await asyncio.gather(*(
            client.execute("sandbox_shell", {"command": f"echo short {round_}", "timeout": 30}, timeout=60)
            for client in (second, second, first)))
    long_result = await long_run
    killed = [r.output for r in [long_result, *shorts] if r.is_error]
    record("sandbox services side by side", "a 6 s run on one, 12 short runs on both",
           "none killed" if not killed else "KILLED", first_uids=first_uids, second_uids=second_uids,
           killed=len(killed))
    assert long_result.output == "long run done\n" and not long_result.is_error, long_result.output[-400:]
    assert not killed, killed
    assert first_uids != second_uids


@pytest.mark.skipif(os.geteuid() != 0, reason="per-run uids exist only when the service runs as root")
async def test_a_service_pinned_to_a_uid_range_in_use_refuses_to_start(start_sandbox, record):
    pinned = {"BRAINHANDS_SANDBOX_UID_BASE": "63000", "BRAINHANDS_SANDBOX_UID_RANGES": "1"}
    first, _, _, uids = await start_sandbox(**pinned)
    assert first is not None
    second, proc, log, _ = await start_sandbox(**pinned)
    await asyncio.wait_for(proc.wait(), 30)
    last = log.strip().splitlines()[-1] if log.strip() else ""
    record("sandbox services side by side", "a second service pinned to the same uid range",
           f"refused, exit {proc.returncode}", said=last[:160])
    assert second is None and proc.returncode == 2, log[-1000:]
    assert "63000" in last and "held by another sandbox service" in last and "BRAINHANDS_SANDBOX_UID_BASE" in last
    assert "Traceback" not in log
