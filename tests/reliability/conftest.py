"""Fixtures of the reliability suite: the figures each test records for bench/results/RELIABILITY.md."""

from __future__ import annotations

import json
import os
import time

import pytest

#: Where tests append their figures (JSON lines); bench.reliability sets it and renders the report.
RECORD_ENV = "BRAINHANDS_RELIABILITY_RECORD"


def write_record(test: str, section: str, case: str, outcome: str, **figures) -> None:
    """Append one figure line for the report (nowhere without BRAINHANDS_RELIABILITY_RECORD)."""
    path = os.environ.get(RECORD_ENV)
    if not path:
        return
    line = {"section": section, "case": case, "outcome": outcome, "test": test, "at": time.time(), **figures}
    with open(path, "a") as f:  # one short O_APPEND write per record
        f.write(json.dumps(line, default=str) + "\n")


@pytest.fixture
def record(request):
    """`record(section, case, outcome, **figures)`: note what a test tried and what happened, for the report.

    Without BRAINHANDS_RELIABILITY_RECORD the figures go nowhere; the tests assert them either way.
    """

    def _record(section: str, case: str, outcome: str, **figures) -> None:
        write_record(request.node.nodeid, section, case, outcome, **figures)

    return _record
