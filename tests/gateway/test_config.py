"""The gateway config file: defaults, durations, and one clear error naming the bad key."""

from __future__ import annotations

import pytest

from gateway.config import Backoff, ConfigError, GatewayConfig, load_config, parse_config


def test_the_documented_example_loads():
    config = load_config("examples/gateway.yaml")
    assert config.listen == "127.0.0.1:50051"
    assert config.routes[2].backends == ("127.0.0.1:50073", "127.0.0.1:50074")
    assert config.eject_backoff == Backoff(base=1.0, max=30.0)


def test_defaults_and_durations_with_units():
    config = parse_config({"health_check_interval": "250ms", "default_lease_ttl": "1m", "eject_backoff": {"base": 2}})
    assert config.health_check_interval == 0.25
    assert config.default_lease_ttl == 60.0
    assert config.eject_backoff == Backoff(base=2.0, max=30.0)
    assert config.max_message_bytes == 4 * 1024 * 1024
    assert parse_config(None) == GatewayConfig()


def test_quota_sections_are_accepted_in_the_same_file():
    config = parse_config({"quota_store": "redis://127.0.0.1:6379/0", "fail_open": True})
    assert (config.quota_store, config.fail_open) == ("redis://127.0.0.1:6379/0", True)


def test_backoff_doubles_up_to_its_max():
    backoff = Backoff(base=1.0, max=5.0)
    assert [backoff.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"routes": [{"hands": ["fs_*"], "backends": "nope"}]}, "routes[0].backends: must be a list of host:port"),
        ({"routes": [{"hands": ["fs_*"]}]}, "routes[0].backends: missing"),
        ({"routes": [{"backends": ["a:1"], "weight": 2}]}, "routes[0].weight: unknown key"),
        ({"listen": "50051"}, "listen: must be host:port"),
        ({"health_check_interval": "soon"}, "health_check_interval: must be a duration"),
        ({"eject_after_failures": 0}, "eject_after_failures: must be an integer >= 1"),
        ({"eject_backoff": {"base": "5s", "max": "1s"}}, "eject_backoff.max: must be at least"),
        ({"lisen": "127.0.0.1:1"}, "lisen: unknown key"),
        ({"fail_open": "yes"}, "fail_open: must be true or false"),
    ],
)
def test_a_bad_value_is_one_error_naming_the_key(raw, message):
    with pytest.raises(ConfigError) as bad:
        parse_config(raw)
    assert str(bad.value).startswith(message)


def test_a_bad_file_names_the_file(tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_text("routes:\n  - {hands: [x], backends: [127.0.0.1:1]\n")
    with pytest.raises(ConfigError, match=r"gw.yaml: not valid YAML at line"):
        load_config(path)
    path.write_text("max_message_bytes: lots\n")
    with pytest.raises(ConfigError, match=r"gw.yaml: max_message_bytes: must be an integer"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read gateway config"):
        load_config(tmp_path / "missing.yaml")


def test_a_changed_copy_is_validated_like_a_new_config():
    config = parse_config({"max_attempts": 5})
    moved = config.replace(listen="0.0.0.0:6000")
    assert (moved.listen, moved.max_attempts, config.listen) == ("0.0.0.0:6000", 5, "127.0.0.1:50051")
    with pytest.raises(ConfigError, match=r"^listen: must be host:port, got 'nowhere'$"):
        config.replace(listen="nowhere")
