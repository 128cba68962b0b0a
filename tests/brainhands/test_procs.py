"""brainhands.procs, the one way the stack, the tests and the benchmarks start and stop services."""

from __future__ import annotations

import signal
import sys

from brainhands.procs import spawn, stop_all, wait_logged

LOGS_ITS_ADDRESS = (
    "import json, sys, time\n"
    "print('not json', file=sys.stderr)\n"
    "print(json.dumps({'event': 'serving hands', 'address': '127.0.0.1:4242'}), file=sys.stderr, flush=True)\n"
    "time.sleep(60)\n"
)


def test_wait_logged_finds_the_address_in_the_childs_log(tmp_path):
    log = tmp_path / "svc.log"
    proc = spawn([sys.executable, "-c", LOGS_ITS_ADDRESS], log)
    try:
        assert wait_logged(log, "serving hands", proc, timeout=60) == "127.0.0.1:4242"
    finally:
        stop_all([proc], grace=5)
    assert proc.returncode == -signal.SIGTERM
    assert "not json" in log.read_text()  # stdout and stderr both land in the log file


def test_wait_logged_gives_up_when_the_child_exits_first(tmp_path):
    log = tmp_path / "svc.log"
    proc = spawn([sys.executable, "-c", "import sys; print('bad config', file=sys.stderr); sys.exit(2)"], log)
    assert wait_logged(log, "serving hands", proc, timeout=60) == ""
    assert proc.wait(10) == 2 and "bad config" in log.read_text()


def test_stop_all_kills_a_child_that_ignores_sigterm_after_the_grace(tmp_path):
    ignores_sigterm = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + LOGS_ITS_ADDRESS
    stubborn = spawn([sys.executable, "-c", ignores_sigterm], tmp_path / "stubborn.log")
    polite = spawn([sys.executable, "-c", LOGS_ITS_ADDRESS], tmp_path / "polite.log")
    assert wait_logged(tmp_path / "stubborn.log", "serving hands", stubborn, timeout=60)  # its handler is set
    stop_all([stubborn, polite], grace=1)
    assert stubborn.returncode == -signal.SIGKILL
    assert polite.returncode == -signal.SIGTERM
