"""Access attacks on a real gateway: wrong and missing keys, tenant A against B's hands and usage, header tricks,
and a direct call to a hand that only the gateway may reach (mTLS between them)."""

from __future__ import annotations

import grpc
import pytest

from gateway.config import parse_config
from gateway.server import start_gateway
from gateway.tenants import hash_key
from gateway.v1 import gateway_pb2, gateway_pb2_grpc
from hands import hand
from hands.v1 import hands_pb2, hands_pb2_grpc

KEY_A, KEY_B = "tenant-a-key-0001", "tenant-b-key-0002"
S = grpc.StatusCode


@hand(description="Echo the text back.")
async def echo(text: str = "") -> str:
    return text


@hand(description="Only tenant B may use this.")
async def b_secret() -> str:
    return "b's data"


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def pki(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    files = {"ca": tmp_path / "ca.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    for name, identity in (("hand", "localhost"), ("gw", "gateway@example.org"), ("rogue", "pod@example.org")):
        cert = ca.issue_cert(identity)
        files[f"{name}_cert"], files[f"{name}_key"] = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        files[f"{name}_cert"].write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(files[f"{name}_key"]))
    other = trustme.CA().issue_cert("pod@example.org")  # a certificate from a CA the hand does not trust
    files["stranger_cert"], files["stranger_key"] = tmp_path / "stranger.pem", tmp_path / "stranger.key"
    files["stranger_cert"].write_bytes(b"".join(blob.bytes() for blob in other.cert_chain_pems))
    other.private_key_pem.write_to_path(str(files["stranger_key"]))
    return {k: str(v) for k, v in files.items()}


@pytest.fixture
async def stack(hand_service, pki):
    """A hand that requires the gateway's client certificate (mTLS), and the gateway in front of it."""
    hand_credentials = grpc.ssl_server_credentials(
        [(read(pki["hand_key"]), read(pki["hand_cert"]))], root_certificates=read(pki["ca"]), require_client_auth=True
    )
    running = await hand_service([echo, b_secret], credentials=hand_credentials)
    gateway = await start_gateway(parse_config({
        "listen": "127.0.0.1:0", "metrics": None,
        "routes": [{"hands": ["*"], "backends": [f"localhost:{running.port}"]}],
        "tls": {"backends": {"ca": pki["ca"], "cert": pki["gw_cert"], "key": pki["gw_key"], "server_name": "localhost"}},
        "tenants": [
            {"name": "a", "api_keys": [hash_key(KEY_A)], "allow": ["echo"], "quotas": [{"hands": "*", "calls": "1000/h"}]},
            {"name": "b", "api_keys": [hash_key(KEY_B)], "allow": ["*"], "quotas": [{"hands": "*", "calls": "1000/h"}]},
        ],
    }))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    yield hands_pb2_grpc.HandServiceStub(channel), gateway_pb2_grpc.QuotaServiceStub(channel), running.port
    await channel.close()
    await gateway.drain(0)


async def code_of(call) -> tuple[S, str]:
    try:
        reply = await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return S.OK, getattr(reply, "output", "")


def bearer(key: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {key}")


async def test_keys_tenants_and_header_tricks(stack, record):
    hands, quota, _ = stack
    run = hands_pb2.ExecuteRequest(name="echo", input='{"text": "hi"}')
    secret = hands_pb2.ExecuteRequest(name="b_secret", input="{}")
    cases = {
        "no key": (hands.Execute(run, timeout=5), S.UNAUTHENTICATED),
        "wrong key": (hands.Execute(run, timeout=5, metadata=[bearer("nope")]), S.UNAUTHENTICATED),
        "key without Bearer": (hands.Execute(run, timeout=5, metadata=[("authorization", KEY_A)]), S.UNAUTHENTICATED),
        "key of A with different case": (hands.Execute(run, timeout=5, metadata=[bearer(KEY_A.upper())]), S.UNAUTHENTICATED),
        "empty Bearer": (hands.Execute(run, timeout=5, metadata=[("authorization", "Bearer ")]), S.UNAUTHENTICATED),
        "A's key on B's hand": (hands.Execute(secret, timeout=5, metadata=[bearer(KEY_A)]), S.PERMISSION_DENIED),
        "A reads B's usage": (quota.GetUsage(gateway_pb2.GetUsageRequest(tenant="b"), timeout=5, metadata=[bearer(KEY_A)]),
                              S.PERMISSION_DENIED),
        "no key reads usage": (quota.GetUsage(gateway_pb2.GetUsageRequest(tenant="b"), timeout=5), S.UNAUTHENTICATED),
        "duplicate authorization: wrong then A's": (
            hands.Execute(secret, timeout=5, metadata=[bearer("nope"), bearer(KEY_A)]), {S.UNAUTHENTICATED, S.PERMISSION_DENIED}),
        "duplicate authorization: A's then B's on B's hand": (
            hands.Execute(secret, timeout=5, metadata=[bearer(KEY_A), bearer(KEY_B)]), {S.UNAUTHENTICATED, S.PERMISSION_DENIED}),
        "duplicate authorization: B's then A's on B's hand": (
            hands.Execute(secret, timeout=5, metadata=[bearer(KEY_B), bearer(KEY_A)]), {S.UNAUTHENTICATED, S.PERMISSION_DENIED, S.OK}),
        "forged x-brainhands-tenant: b": (
            hands.Execute(secret, timeout=5, metadata=[bearer(KEY_A), ("x-brainhands-tenant", "b")]), S.PERMISSION_DENIED),
        "oversized metadata (64 KiB)": (
            hands.Execute(run, timeout=5, metadata=[bearer(KEY_A), ("x-pad", "p" * 65536)]), {S.RESOURCE_EXHAUSTED, S.INTERNAL, S.UNAVAILABLE}),
        "A's key on its own hand": (hands.Execute(run, timeout=5, metadata=[bearer(KEY_A)]), S.OK),
    }
    for name, (call, want) in cases.items():
        code, details = await code_of(call)
        allowed = want if isinstance(want, set) else {want}
        record("access", name, code.name, expected="/".join(sorted(c.name for c in allowed)))
        assert code in allowed, f"{name}: {code} {details}"
        assert code == S.OK or "b's data" not in details
    # B's own calls still work after all of that.
    code, output = await code_of(hands.Execute(secret, timeout=5, metadata=[bearer(KEY_B)]))
    assert (code, output) == (S.OK, "b's data")


async def test_a_hand_behind_mtls_refuses_everyone_but_the_gateway(stack, pki, record):
    hands, _, hand_port = stack
    target = f"localhost:{hand_port}"
    request = hands_pb2.ExecuteRequest(name="b_secret", input="{}")
    attempts = {
        "plaintext": grpc.aio.insecure_channel(target),
        "TLS without a client certificate": grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(read(pki["ca"]))),
        "client certificate from another CA": grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(
            read(pki["ca"]), read(pki["stranger_key"]), read(pki["stranger_cert"]))),
    }
    for name, channel in attempts.items():
        code, details = await code_of(hands_pb2_grpc.HandServiceStub(channel).Execute(request, timeout=5))
        await channel.close()
        record("access", f"direct to the hand: {name}", code.name, expected="UNAVAILABLE")
        assert code == S.UNAVAILABLE, f"{name}: {code} {details}"
    code, output = await code_of(hands.Execute(request, timeout=5, metadata=[bearer(KEY_B)]))
    record("access", "through the gateway (holds the client certificate)", code.name, expected="OK")
    assert (code, output) == (S.OK, "b's data")
