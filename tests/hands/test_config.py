"""Config models of the hand services: durations with units, unknown keys named, bad limits refused at start."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hands import HandServiceConfig
from hands.builtin.sandbox import SandboxConfig
from tests.procs import ROOT


def test_durations_take_a_unit_in_the_environment_and_in_code():
    sandbox = SandboxConfig.from_env({"BRAINHANDS_SANDBOX_TIMEOUT": "1m", "BRAINHANDS_SANDBOX_MAX_TIMEOUT": "2m"})
    assert (sandbox.timeout, sandbox.max_timeout) == (60.0, 120.0)
    assert HandServiceConfig(default_timeout="500ms").default_timeout == 0.5


def test_a_misspelt_setting_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError) as bad:
        HandServiceConfig(max_concurency=3)
    assert str(bad.value) == (
        "max_concurency: unknown key (expected dedupe_store, dedupe_ttl, default_timeout, max_concurrency, max_input_bytes, max_output_bytes)"
    )


def test_a_value_the_caller_passes_wins_over_a_bad_variable():
    config = SandboxConfig.from_env({"BRAINHANDS_SANDBOX_TIMEOUT": "soon"}, timeout=5)
    assert config.timeout == 5.0  # the bad variable is not read when the caller chose the value


@pytest.mark.parametrize(
    ("flags", "key"), [(["--max-concurrency", "0"], "max_concurrency"), (["--timeout", "0"], "default_timeout")]
)
def test_serve_hand_refuses_limits_no_call_could_run_under(flags, key):
    result = subprocess.run(
        [sys.executable, "-m", "brainhands", "serve", "hand", "tests.hands.sample_hands", "--port", "0", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"brainhands: {key}: must be")
    assert len(result.stderr.strip().splitlines()) == 1
