"""What the README must tell a new user, found where they look for it (not only in --help)."""

from __future__ import annotations

from pathlib import Path

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_the_readme_says_how_a_grpc_caller_sends_its_key():
    assert "authorization: Bearer <key>" in README


def test_the_readme_documents_quota_lease_brainhands_brain_and_the_scripted_model():
    assert "`quota_lease` (gateway config, seconds, default 30)" in README
    assert "`BRAINHANDS_BRAIN`" in README
    assert "--model scripted:FILE.json" in README


def test_the_readme_says_the_demo_folder_ignores_itself_and_where_its_session_goes():
    assert "ignores itself in git" in README and "`brainhands sessions list` shows it" in README


def test_the_readme_says_up_prints_the_metrics_address():
    assert "`brainhands up` prints each service's address and the gateway's metrics endpoint" in README
