"""Tenants from the gateway config: keys, allow globs, quota rules, and the errors a person sees."""

from __future__ import annotations

import hashlib

import pytest

from gateway.tenants import ANONYMOUS, TenantConfigError, bearer_token, hash_key, parse_tenants

KEY_A = "key-of-team-a"
KEY_B = "key-of-team-b"


def config(**overrides):
    base = [
        {
            "name": "team-a",
            "api_keys": [hash_key(KEY_A)],
            "allow": ["fs_*", "echo"],
            "quotas": [
                {"hands": "*", "rate": "50/s", "burst": 100},
                {"hands": "llm_*", "concurrency": 8, "tokens": "2000000/day"},
                {"hands": "fs_*", "calls": "10000/day"},
            ],
        },
        {"name": "team-b", "api_keys": ["env:TEAM_B_KEY"], "allow": ["*"]},
    ]
    base[0].update(overrides)
    return base


def test_keys_from_hashes_and_environment_authenticate_their_tenant():
    tenants = parse_tenants(config(), environ={"TEAM_B_KEY": KEY_B})
    assert tenants.authenticate(KEY_A).name == "team-a"
    assert tenants.authenticate(KEY_B).name == "team-b"
    assert tenants.authenticate("wrong") is None
    assert tenants.authenticate(None) is None
    assert tenants.authenticate("") is None


def test_no_tenants_means_an_open_gateway_with_an_anonymous_caller():
    tenants = parse_tenants(None)
    assert tenants.open
    anonymous = tenants.authenticate(None)
    assert anonymous.name == ANONYMOUS and anonymous.may_use("anything") and not anonymous.quotas


def test_allow_globs_and_rules_match_hand_names():
    team_a = parse_tenants(config(), environ={"TEAM_B_KEY": KEY_B}).get("team-a")
    assert team_a.may_use("fs_read") and team_a.may_use("echo")
    assert not team_a.may_use("sandbox_shell") and not team_a.may_use("echo2")
    assert [r.id for r in team_a.rules_for("llm_worker")] == [
        "quotas[0].rate",
        "quotas[1].concurrency",
        "quotas[1].tokens",
    ]
    [rate] = [r for r in team_a.quotas if r.kind == "rate"]
    assert (rate.limit, rate.window, rate.burst) == (50, 1.0, 100)
    [tokens] = [r for r in team_a.quotas if r.kind == "tokens"]
    assert (tokens.limit, tokens.window) == (2_000_000, 86400.0)


def test_burst_defaults_to_the_rate():
    [rule] = parse_tenants(config(quotas=[{"rate": "7/m"}]), environ={"TEAM_B_KEY": KEY_B}).get("team-a").quotas
    assert (rule.hands, rule.limit, rule.window, rule.burst) == ("*", 7, 60.0, 7)


def test_windows_may_be_several_units_and_token_rules_may_reserve():
    quotas = [{"calls": "5/2s"}, {"hands": "llm_*", "tokens": "1000/12h", "reserve": 250}]
    calls, tokens = parse_tenants(config(quotas=quotas), environ={"TEAM_B_KEY": KEY_B}).get("team-a").quotas
    assert (calls.limit, calls.window, calls.reserve) == (5, 2.0, 0)
    assert (tokens.limit, tokens.window, tokens.reserve) == (1000, 43200.0, 250)
    assert calls.describe() == "5 calls per 2s to '*'"


@pytest.mark.parametrize(
    ("overrides", "environ", "message"),
    [
        (
            {"quotas": [{"calls": "1/h"}, {"rate": "fast"}]},
            {},
            r"tenants\[0\]\.quotas\[1\]\.rate: expected N/s\|m\|h\|day",
        ),
        ({"quotas": [{"calls": "10/week"}]}, {}, r"tenants\[0\]\.quotas\[0\]\.calls: expected N/s\|m\|h\|day"),
        ({"quotas": [{"concurrency": 0}]}, {}, r"tenants\[0\]\.quotas\[0\]\.concurrency: expected a whole number"),
        ({"quotas": [{"burst": 3}]}, {}, r"tenants\[0\]\.quotas\[0\]\.burst: only meaningful with rate"),
        ({"quotas": [{"calls": "5/0s"}]}, {}, r"tenants\[0\]\.quotas\[0\]\.calls: expected N/s\|m\|h\|day"),
        ({"quotas": [{"calls": "1/h", "reserve": 5}]}, {}, r"quotas\[0\]\.reserve: only meaningful with tokens"),
        ({"quotas": [{"tokens": "9/h", "reserve": -1}]}, {}, r"quotas\[0\]\.reserve: expected a whole number"),
        ({"quotas": [{"limit": 3}]}, {}, r"tenants\[0\]\.quotas\[0\]\.limit: unknown key"),
        ({"api_keys": ["sha256:abc"]}, {}, r"tenants\[0\]\.api_keys\[0\]: expected 'sha256:' followed by 64 hex"),
        ({"api_keys": ["env:NOPE"]}, {}, r"tenants\[0\]\.api_keys\[0\]: environment variable NOPE is not set"),
        ({"api_keys": []}, {}, r"tenants\[0\]\.api_keys: expected a non-empty list"),
        ({"name": "has space"}, {}, r"tenants\[0\]\.name: expected a name"),
        ({"allow": [3]}, {}, r"tenants\[0\]\.allow: expected a list of hand-name globs"),
    ],
)
def test_a_bad_entry_is_one_clear_error_naming_the_key(overrides, environ, message):
    with pytest.raises(TenantConfigError, match=message):
        parse_tenants(config(**overrides), environ={"TEAM_B_KEY": KEY_B, **environ})


def test_a_plain_key_in_the_config_is_refused_without_echoing_it():
    with pytest.raises(TenantConfigError) as info:
        parse_tenants(config(api_keys=["my-secret-plain-key"]), environ={"TEAM_B_KEY": KEY_B})
    assert "my-secret-plain-key" not in str(info.value)


def test_a_missing_env_key_of_the_second_tenant_names_it():
    with pytest.raises(TenantConfigError, match=r"tenants\[1\]\.api_keys\[0\]: environment variable TEAM_B_KEY"):
        parse_tenants(config(), environ={})


def test_duplicate_names_and_shared_keys_are_refused():
    with pytest.raises(TenantConfigError, match=r"tenants\[2\]\.name: duplicate"):
        parse_tenants(config() + [config()[0]], environ={"TEAM_B_KEY": KEY_B})
    with pytest.raises(TenantConfigError, match=r"tenants\[1\]\.api_keys: a key of 'team-b' is also a key of 'team-a'"):
        parse_tenants(config(), environ={"TEAM_B_KEY": KEY_A})


def test_keys_never_appear_in_a_tenant_repr():
    tenant = parse_tenants(config(), environ={"TEAM_B_KEY": KEY_B}).get("team-b")
    assert KEY_B not in repr(tenant) and hashlib.sha256(KEY_B.encode()).hexdigest() not in repr(tenant)


@pytest.mark.parametrize(
    ("header", "key"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None), ("", None), (None, None)],
)
def test_bearer_token(header, key):
    assert bearer_token(header) == key
