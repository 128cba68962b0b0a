"""Delegations: what the gateway signs for a forwarded call, what it accepts back, and that nothing widens."""

from __future__ import annotations

import time

import pytest

from gateway.delegation import Delegation, DelegationError, Delegations, StaticKeys


def test_a_signed_delegation_verifies_and_any_change_or_other_key_does_not():
    delegations = Delegations(StaticKeys(b"k" * 32))
    token = delegations.sign(Delegation("team-a", "s1", 1, time.time() + 60, budget_tokens=500, budget_calls=3))
    got = delegations.verify(token)
    assert (got.tenant, got.session, got.depth, got.budget_tokens, got.budget_calls) == ("team-a", "s1", 1, 500, 3)
    version, payload, mac = token.split(".")
    tampered = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    for bad in (f"{version}.{tampered}.{mac}", f"{version}.{payload}.{mac[:-2]}AA", "v1.x", "v2." + token[3:], ""):
        with pytest.raises(DelegationError):
            delegations.verify(bad)
    with pytest.raises(DelegationError, match="key this gateway does not have"):
        Delegations(StaticKeys()).verify(token)  # another gateway's random key


def test_an_expired_delegation_is_refused():
    delegations = Delegations(StaticKeys(b"k" * 32))
    token = delegations.sign(Delegation("team-a", expires=time.time() + 5))
    with pytest.raises(DelegationError, match="expired"):
        delegations.verify(token, now=time.time() + 6)


def test_a_nested_delegation_never_widens():
    delegations = Delegations(StaticKeys(b"k" * 32), ttl=600)
    now = 1_000_000.0
    outer = Delegation("team-a", "s1", depth=2, expires=now + 30, budget_tokens=1000, budget_calls=5)
    # The nested caller asks for depth 0, a bigger budget and a longer deadline: it gets none of them.
    nested = delegations.for_forward("team-a", incoming=outer, session="", depth=0, time_remaining=3600,
                                     budget_tokens=10**9, budget_calls=100, now=now)  # fmt: skip
    assert (nested.depth, nested.expires, nested.budget_tokens, nested.budget_calls, nested.session) == (
        3, now + 30, 1000, 5, "s1")
    smaller = delegations.for_forward("team-a", incoming=outer, session="s2", depth=7, time_remaining=10,
                                      budget_tokens=10, budget_calls=None, now=now)  # fmt: skip
    assert (smaller.depth, smaller.expires, smaller.budget_tokens, smaller.budget_calls) == (7, now + 10, 10, 5)
    first = delegations.for_forward("team-a", incoming=None, session="s1", depth=0, time_remaining=None,
                                    budget_tokens=None, budget_calls=None, now=now)  # fmt: skip
    assert (first.depth, first.expires, first.budget_tokens) == (0, now + 600, None)
