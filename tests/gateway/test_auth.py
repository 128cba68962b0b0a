"""Tenants on a real gateway: API keys, allow lists, Describe filtering, quotas with rich denials, GetUsage, TLS."""

from __future__ import annotations

import contextlib
import socket
import urllib.request

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gateway.config import parse_config
from gateway.server import start_gateway
from gateway.tenants import hash_key
from gateway.v1 import gateway_pb2, gateway_pb2_grpc
from hands import HandResult, Usage, hand

KEY_A = "alpha-secret-key"
KEY_B = "beta-secret-key"


@hand(description="Echo the text back.")
async def echo(text: str = "") -> str:
    return text


@hand(description="Only tenant B may use this one.")
async def b_only() -> str:
    return "b's secret"


@hand(description="Pretend to be an LLM worker that spends tokens.")
async def llm_fake(tokens: int = 600) -> HandResult:
    return HandResult("done", usage=Usage(input_tokens=tokens // 2, output_tokens=tokens - tokens // 2))


HANDS = [echo, b_only, llm_fake]


def tenants(a_quotas=(), b_quotas=()):
    return [
        {"name": "team-a", "api_keys": [hash_key(KEY_A)], "allow": ["echo", "llm_*"], "quotas": list(a_quotas)},
        {"name": "team-b", "api_keys": ["env:TEAM_B_KEY"], "allow": ["*"], "quotas": list(b_quotas)},
    ]


@pytest.fixture
async def gateway(hand_service, monkeypatch):
    """Start a gateway in front of one hand service: `gw = await gateway(tenants=..., ...)`."""
    monkeypatch.setenv("TEAM_B_KEY", KEY_B)
    started = []

    async def _start(*, hand_kwargs=None, **config):
        backend = await hand_service(HANDS, **(hand_kwargs or {}))
        raw = {
            "listen": "127.0.0.1:0",
            "metrics": "127.0.0.1:0",
            "routes": [{"hands": ["*"], "backends": [backend.address]}],
        }
        raw.update(config)
        gw = await start_gateway(parse_config(raw))
        started.append(gw)
        return gw

    yield _start
    for gw in started:
        await gw.server.stop(0)
        await gw.close()


def code_of(info) -> grpc.StatusCode:
    return info.value.code()


def metrics_text(gw) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=5) as reply:
        return reply.read().decode()


async def test_missing_or_wrong_keys_are_unauthenticated_and_right_keys_work(gateway, hand_client):
    gw = await gateway(tenants=tenants())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await hand_client(gw.address).execute("echo", {"text": "hi"})
    assert code_of(info) == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await hand_client(gw.address, api_key="not-a-key").execute("echo", {"text": "hi"})
    assert code_of(info) == grpc.StatusCode.UNAUTHENTICATED
    assert "not-a-key" not in info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await hand_client(gw.address, api_key="not-a-key").describe()
    assert code_of(info) == grpc.StatusCode.UNAUTHENTICATED
    assert (await hand_client(gw.address, api_key=KEY_A).execute("echo", {"text": "hi"})).output == "hi"
    assert (await hand_client(gw.address, api_key=KEY_B).execute("echo", {"text": "ho"})).output == "ho"
    assert (
        'brainhands_gateway_calls_total{code="UNAUTHENTICATED",hand="unknown",tenant="unauthenticated"} 2.0'
        in metrics_text(gw)
    )


async def test_a_tenant_cannot_call_or_see_another_tenants_hand(gateway, hand_client):
    gw = await gateway(tenants=tenants())
    a, b = hand_client(gw.address, api_key=KEY_A), hand_client(gw.address, api_key=KEY_B)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await a.execute("b_only")
    assert code_of(info) == grpc.StatusCode.PERMISSION_DENIED
    assert "team-a" in info.value.details()
    assert (await b.execute("b_only")).output == "b's secret"
    assert sorted(spec.name for spec in await a.describe()) == ["echo", "llm_fake"]
    assert sorted(spec.name for spec in await b.describe()) == ["b_only", "echo", "llm_fake"]


async def test_a_tenant_reads_its_own_usage_and_not_anothers(gateway, hand_client):
    gw = await gateway(tenants=tenants(a_quotas=[{"hands": "echo", "calls": "10/h", "concurrency": 2}]))
    a = hand_client(gw.address, api_key=KEY_A)
    await a.execute("echo", {"text": "x"})
    quota = gateway_pb2_grpc.QuotaServiceStub(a.channel)
    meta = (("authorization", f"Bearer {KEY_A}"),)
    own = await quota.GetUsage(gateway_pb2.GetUsageRequest(), metadata=meta)
    assert own.tenant == "team-a"
    assert [(q.rule, q.kind, q.limit, q.used) for q in own.quotas] == [
        ("quotas[0].concurrency", gateway_pb2.QUOTA_KIND_CONCURRENCY, 2, 0),  # released after the call
        ("quotas[0].calls", gateway_pb2.QUOTA_KIND_CALLS, 10, 1),
    ]
    assert own.quotas[1].window.seconds == 3600 and 0 < own.quotas[1].resets_in.ToMilliseconds() <= 3_660_000
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await quota.GetUsage(gateway_pb2.GetUsageRequest(tenant="team-b"), metadata=meta)
    assert code_of(info) == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await quota.GetUsage(gateway_pb2.GetUsageRequest(tenant="team-a"))
    assert code_of(info) == grpc.StatusCode.UNAUTHENTICATED


async def test_quota_denials_carry_retry_info_quota_failure_and_retry_after_ms(gateway, hand_client):
    gw = await gateway(tenants=tenants(a_quotas=[{"hands": "echo", "calls": "2/h"}]))
    a = hand_client(gw.address, api_key=KEY_A)
    for _ in range(2):
        await a.execute("echo", {"text": "x"})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await a.execute("echo", {"text": "x"})
    error = info.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "quotas[0].calls" in error.details()
    status = rpc_status.from_call(error)
    retry, failure = error_details_pb2.RetryInfo(), error_details_pb2.QuotaFailure()
    assert status.details[0].Unpack(retry) and status.details[1].Unpack(failure)
    trailing = dict(error.trailing_metadata())
    retry_ms = int(trailing["retry-after-ms"])
    assert retry.retry_delay.ToMilliseconds() == retry_ms
    assert 0 < retry_ms <= 3_660_000  # the window slides: an hour, plus at most one bucket (1/60 of it)
    [violation] = failure.violations
    assert (violation.subject, violation.quota_id) == ("tenant:team-a", "quotas[0].calls")
    # Other tenants and other hands are not affected.
    assert (await hand_client(gw.address, api_key=KEY_B).execute("echo", {"text": "y"})).output == "y"
    assert (await a.execute("llm_fake", {"tokens": 1})).output == "done"
    text = metrics_text(gw)
    assert 'brainhands_gateway_quota_denials_total{hand="echo",rule="quotas[0].calls",tenant="team-a"} 1.0' in text
    assert 'brainhands_gateway_calls_total{code="RESOURCE_EXHAUSTED",hand="echo",tenant="team-a"} 1.0' in text


async def test_tokens_reported_by_a_hand_are_charged_and_stop_the_tenant_at_its_budget(gateway, hand_client):
    gw = await gateway(tenants=tenants(a_quotas=[{"hands": "llm_*", "tokens": "1000/day"}]))
    a = hand_client(gw.address, api_key=KEY_A)
    await a.execute("llm_fake", {"tokens": 600})
    await a.execute("llm_fake", {"tokens": 600})  # admitted: 600 < 1000 when it arrived
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await a.execute("llm_fake", {"tokens": 1})
    assert code_of(info) == grpc.StatusCode.RESOURCE_EXHAUSTED
    usage = await gateway_pb2_grpc.QuotaServiceStub(a.channel).GetUsage(
        gateway_pb2.GetUsageRequest(), metadata=(("authorization", f"Bearer {KEY_A}"),)
    )
    assert [(q.kind, q.used, q.limit) for q in usage.quotas] == [(gateway_pb2.QUOTA_KIND_TOKENS, 1200, 1000)]
    assert (await a.execute("echo", {"text": "still fine"})).output == "still fine"


async def test_without_tenants_the_gateway_is_open(gateway, hand_client):
    gw = await gateway()
    client = hand_client(gw.address)
    assert (await client.execute("b_only")).output == "b's secret"
    assert len(await client.describe()) == 3
    usage = await gateway_pb2_grpc.QuotaServiceStub(client.channel).GetUsage(gateway_pb2.GetUsageRequest())
    assert usage.tenant == "anonymous" and not usage.quotas


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("fail_open", [False, True])
async def test_an_unreachable_quota_store_fails_closed_or_open_as_configured(gateway, hand_client, fail_open):
    gw = await gateway(
        tenants=tenants(a_quotas=[{"hands": "*", "calls": "100/h"}]),
        quota_store=f"redis://127.0.0.1:{closed_port()}/0",
        fail_open=fail_open,
    )
    a = hand_client(gw.address, api_key=KEY_A)
    if fail_open:
        assert (await a.execute("echo", {"text": "through"})).output == "through"
    else:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await a.execute("echo", {"text": "through"})
        assert code_of(info) == grpc.StatusCode.UNAVAILABLE
        assert "quota store is down" in info.value.details()
    action = "admitted" if fail_open else "refused"
    assert f'brainhands_gateway_quota_store_errors_total{{action="{action}"}} 1.0' in metrics_text(gw)
    # Tenants without matching rules never touch the store.
    assert (await hand_client(gw.address, api_key=KEY_B).execute("echo", {"text": "b"})).output == "b"


async def test_an_unreachable_quota_store_is_said_at_start_and_by_the_cli(gateway, tmp_path):
    import asyncio
    import os
    import sys

    from structlog.testing import capture_logs

    url = f"redis://127.0.0.1:{closed_port()}/0"
    with capture_logs() as logs:
        gw = await gateway(tenants=tenants(a_quotas=[{"hands": "*", "calls": "100/h"}]), quota_store=url)
    [warning] = [e for e in logs if e["log_level"] == "warning" and "quota store" in e["event"]]
    assert warning["quota_store"] == url and "refused" in warning["event"]
    env = {**os.environ, "BRAINHANDS_API_KEY": KEY_A}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "brainhands", "hands", "call", "echo", '{"text": "x"}', "--target", gw.address,
        env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    [line] = err.decode().strip().splitlines()
    assert proc.returncode == 2 and "the quota store is down" in line and "running there" not in line


@pytest.fixture
def pki(tmp_path):
    """A CA, a server certificate for localhost, client certificates for a caller and for the gateway."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    files = {"ca": tmp_path / "ca.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    for name, identity in (("server", "localhost"), ("caller", "caller@example.org"), ("gw", "gateway@example.org")):
        cert = ca.issue_cert(identity)
        files[f"{name}_cert"] = tmp_path / f"{name}.pem"
        files[f"{name}_key"] = tmp_path / f"{name}.key"
        files[f"{name}_cert"].write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(files[f"{name}_key"]))
    return {k: str(v) for k, v in files.items()}


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def test_mtls_on_the_front_and_to_the_backends(gateway, hand_client, pki):
    backend_credentials = grpc.ssl_server_credentials(
        [(read(pki["server_key"]), read(pki["server_cert"]))],
        root_certificates=read(pki["ca"]),
        require_client_auth=True,  # the hand accepts only the gateway's certificate
    )
    gw = await gateway(
        hand_kwargs={"credentials": backend_credentials},
        tls={
            "cert": pki["server_cert"],
            "key": pki["server_key"],
            "client_ca": pki["ca"],
            "backends": {"ca": pki["ca"], "cert": pki["gw_cert"], "key": pki["gw_key"], "server_name": "localhost"},
        },
    )
    target = f"localhost:{gw.port}"
    with_cert = grpc.ssl_channel_credentials(read(pki["ca"]), read(pki["caller_key"]), read(pki["caller_cert"]))
    client = hand_client(target, credentials=with_cert)
    assert (await client.execute("echo", {"text": "over mtls"})).output == "over mtls"
    without_cert = hand_client(target, credentials=grpc.ssl_channel_credentials(read(pki["ca"])))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await without_cert.execute("echo", {"text": "x"}, timeout=5)
    assert code_of(info) == grpc.StatusCode.UNAVAILABLE
    plaintext = hand_client(target)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await plaintext.execute("echo", {"text": "x"}, timeout=5)
    assert code_of(info) == grpc.StatusCode.UNAVAILABLE


async def test_bad_tls_and_tenant_config_are_one_clear_error(tmp_path, monkeypatch):
    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match=r"tls\.cert: cannot read .*missing\.pem"):
        parse_config({"tls": {"cert": str(tmp_path / "missing.pem"), "key": str(tmp_path / "k.pem")}})
    monkeypatch.delenv("TEAM_B_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"tenants\[1\]\.api_keys\[0\]: environment variable TEAM_B_KEY is not set"):
        parse_config({"tenants": tenants()})
    with pytest.raises(ConfigError, match=r"quota_store: must be 'memory' or a redis:// URL"):
        parse_config({"quota_store": "mongodb://x"})
    with contextlib.suppress(ConfigError):
        parse_config({"quota_lease": "0s"})
        pytest.fail("a zero quota_lease must be refused")
