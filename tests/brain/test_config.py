"""The brain's config models: limits with units, keys kept out of reprs, the service read from its environment."""

from __future__ import annotations

import pytest

from brain import BrainConfig
from brain.service import BrainServiceConfig


def test_limits_take_durations_with_units_and_refuse_unknown_keys():
    assert BrainConfig(call_timeout="2m", lease_ttl="500ms").call_timeout == 120.0
    with pytest.raises(ValueError, match=r"^brain config: max_turn: unknown key \(expected .*max_turns"):
        BrainConfig(max_turn=5)


def test_the_service_config_keeps_its_keys_out_of_its_repr():
    config = BrainServiceConfig(gateway="127.0.0.1:1", api_key="gw-secret", anthropic_api_key="sk-secret")
    assert "gw-secret" not in repr(config) and "sk-secret" not in repr(config)
    assert "gw-secret" not in str(config) and "sk-secret" not in str(config)


def test_the_service_config_reads_the_environment_under_the_flags():
    env = {"BRAINHANDS_GATEWAY": "10.0.0.1:50051", "BRAINHANDS_MODEL": "scripted:s.json", "ANTHROPIC_API_KEY": "sk"}
    config = BrainServiceConfig.from_env(env, model="claude-x-1", port=0)
    assert (config.gateway, config.model, config.anthropic_api_key, config.port) == ("10.0.0.1:50051", "claude-x-1", "sk", 0)
    with pytest.raises(ValueError, match=r"^gateway: required; pass --gateway ADDR or set BRAINHANDS_GATEWAY$"):
        BrainServiceConfig.from_env({"BRAINHANDS_GATEWAY": " "})


def test_the_brain_configs_tls_files_are_read_relative_to_it_and_must_be_pem(tmp_path):
    from brain.auth import load_access
    from hands.config import ConfigError

    (tmp_path / "brain.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    (tmp_path / "notes.txt").write_text("not a certificate\n")
    config = tmp_path / "brain.yaml"
    config.write_text("tls: {cert: brain.pem, key: brain.pem}\n")
    assert load_access(config).tls.cert.startswith(b"-----BEGIN CERTIFICATE-----")
    config.write_text("tls: {cert: brain.pem, key: notes.txt}\n")
    with pytest.raises(ConfigError, match=r"brain\.yaml: brain config: tls\.key: .*notes\.txt is not a PEM file"):
        load_access(config)
    config.write_text("tls: {cert: brain.pem, key: missing.pem}\n")
    with pytest.raises(ConfigError, match=r"tls\.key: cannot read .*missing\.pem"):
        load_access(config)
