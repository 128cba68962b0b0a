"""`--workers N`: refused (one line, saying why) where limits or registrations would be per process; the workers'
configs share one port and one delegation key."""

from __future__ import annotations

import pytest
import yaml

from gateway.cli import main
from gateway.config import parse_config
from gateway.tenants import hash_key
from gateway.workers import worker_configs

TENANT = {"name": "t", "api_keys": [hash_key("k" * 32)], "quotas": [{"hands": "*", "calls": "10/h"}]}


@pytest.mark.parametrize(
    ("config", "why"),
    [
        ({"tenants": [TENANT]}, "needs a shared quota store: with quota_store: memory each worker would admit"),
        ({}, "needs a shared registry: with registry_store: memory a hand registered with one worker"),
        ({"quota_store": "redis://127.0.0.1:6379/0", "registry_store": "memory"}, "needs a shared registry"),
    ],
)
def test_workers_are_refused_with_a_store_of_one_process(tmp_path, capsys, config, why):
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"listen": "127.0.0.1:0", "metrics": None, **config}))
    assert main(["--config", str(path), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert why in err and err.count("\n") == 1 and err.startswith("python -m gateway: --workers 2 ")


def test_workers_share_a_reserved_port_and_a_delegation_key_and_count_up_metrics_ports():
    config = parse_config({"listen": "127.0.0.1:0", "metrics": "127.0.0.1:9500", "quota_store": "redis://127.0.0.1:6379/0"})
    configs, held = worker_configs(config, 3)
    try:
        port = held.getsockname()[1]
        assert [c.listen for c in configs] == [f"127.0.0.1:{port}"] * 3
        assert [c.metrics for c in configs] == ["127.0.0.1:9500", "127.0.0.1:9501", "127.0.0.1:9502"]
        assert len({c.delegation_key for c in configs}) == 1 and len(configs[0].delegation_key) == 32
    finally:
        held.close()
