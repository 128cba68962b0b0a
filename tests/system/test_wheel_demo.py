"""`brainhands demo` from a built wheel, installed non-editable into a fresh virtualenv, run from an empty folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_runs_from_a_wheel_in_a_fresh_virtualenv_in_an_empty_folder(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("brainhands-*.whl")

    # The dependencies come from this interpreter's site-packages (no network in tests); brainhands itself only
    # from the wheel: --no-deps into the venv's own site-packages, which come before the system's.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BRAINHANDS_", "PYTHONPATH"))}
    env["ANTHROPIC_BASE_URL"] = "http://127.0.0.1:9"  # anything that tried the real API would fail here
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    where = subprocess.run([str(python), "-c", "import brainhands, hands, brain, gateway; "
                            "print(brainhands.__file__, hands.__file__, brain.__file__, gateway.__file__)"],
                           capture_output=True, text=True, cwd=empty, env=env, timeout=60)
    assert where.returncode == 0, where.stderr
    assert all(str(venv) in path for path in where.stdout.split()), where.stdout  # not the checkout

    proc = subprocess.run([str(venv / "bin" / "brainhands"), "demo", "--think-time", "0.05"],
                          capture_output=True, text=True, cwd=empty, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sum(1 for line in proc.stdout.splitlines() if line.startswith("- ledger/")) == 5
    assert (empty / "brainhands-demo" / "timeline.html").exists()
