"""Identity end to end, tried as an attacker on the same network would, with every service a real process:
who may register hands and touch leases, who may list backends, whose session is whose on a brain service, whom a
worker acts for, what each process of the local stack holds and who can read it, and registering over TLS."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys

import grpc
import pytest
import yaml

from brain.v1 import brain_pb2, brain_pb2_grpc
from brainhands.scripted_api import ScriptedMessagesAPI, text_reply, tool_reply, tool_results
from gateway.tenants import hash_key
from gateway.v1 import gateway_pb2, gateway_pb2_grpc
from hands import HandClient
from hands.v1 import hands_pb2, hands_pb2_grpc
from tests.procs import ROOT, poll, start_service

S = grpc.StatusCode
SECTION = "access"


@pytest.fixture
def procs():
    started = []

    def _start(args, **kwargs):
        kwargs.setdefault("timeout", 60.0)  # several Python start-ups at once on a loaded machine
        service = start_service(args, **kwargs)
        started.append(service)
        return service

    yield _start
    for service in started:
        service.stop()


def start_gateway(procs, tmp_path, config: dict, *, name: str = "gateway.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"listen": "127.0.0.1:0", "metrics": None, "health_check_interval": "300ms", **config}))
    return procs(["serve", "gateway", "--config", str(path)], ready_event="gateway serving")


def bearer(key: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),) if key else ()


async def outcome(call) -> tuple[S, str, object]:
    try:
        reply = await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or "", None
    return S.OK, "", reply


def check(record, case: str, got: tuple, want: S) -> object:
    code, details, reply = got
    record(SECTION, case, code.name, expected=want.name)
    assert code == want, f"{case}: {code.name} {details}"
    return reply if code == S.OK else details


# --- RegistryService ------------------------------------------------------------------------------


KEYS = {
    "fs": "registrant-fs-key-00000000000001",
    "echo": "registrant-echo-key-0000000000002",
    "ops": "operator-key-000000000000000003",
    "a": "tenant-a-key-0000000000000000004",
}


async def test_registration_needs_a_registrant_key_within_its_globs_and_leases_stay_their_owners(procs, tmp_path, record):
    (tmp_path / "notes.txt").write_text("the real notes\n")
    gw = start_gateway(procs, tmp_path, {
        "registrants": [
            {"name": "fs-hands", "api_keys": [hash_key(KEYS["fs"])], "hands": ["fs_*"]},
            {"name": "echo-hands", "api_keys": [hash_key(KEYS["echo"])], "hands": ["echo", "dumpable"]},
        ],
        "operators": [{"name": "ops", "api_keys": [hash_key(KEYS["ops"])]}],
        "tenants": [{"name": "a", "api_keys": [hash_key(KEYS["a"])], "allow": ["*"]}],
    })
    fs = procs(["serve", "hand", "hands.builtin.fs", "--port", "0"], env={"BRAINHANDS_WORKSPACE": str(tmp_path)})
    forger = procs(["serve", "hand", "tests.reliability.identity_hands:FORGER", "--port", "0"])
    async with grpc.aio.insecure_channel(gw.address) as channel:
        registry = gateway_pb2_grpc.RegistryServiceStub(channel)
        front = hands_pb2_grpc.HandServiceStub(channel)
        quota = gateway_pb2_grpc.QuotaServiceStub(channel)

        def register(address, key=None):
            return registry.Register(gateway_pb2.RegisterRequest(address=address), timeout=15, metadata=bearer(key))

        def listing(key=None):
            return registry.ListBackends(gateway_pb2.ListBackendsRequest(), timeout=10, metadata=bearer(key))

        check(record, "Register with no key", await outcome(register(fs.address)), S.UNAUTHENTICATED)
        check(record, "Register with a tenant's key", await outcome(register(fs.address, KEYS["a"])), S.UNAUTHENTICATED)
        check(record, "Register with an operator's key", await outcome(register(fs.address, KEYS["ops"])), S.UNAUTHENTICATED)
        details = check(record, "Register fs hands with the echo registrant's key",
                        await outcome(register(fs.address, KEYS["echo"])), S.PERMISSION_DENIED)
        assert "'fs_" in details and "echo-hands" in details
        details = check(record, "Register a forged fs_read with the echo registrant's key",
                        await outcome(register(forger.address, KEYS["echo"])), S.PERMISSION_DENIED)
        assert "'fs_read'" in details
        details = check(record, "Register a forger (echo + fs_read) with the fs registrant's key",
                        await outcome(register(forger.address, KEYS["fs"])), S.PERMISSION_DENIED)
        assert "'echo'" in details  # the whole registration is refused, not just the hand outside the globs

        lease = check(record, "Register fs hands with the fs registrant's key",
                      await outcome(register(fs.address, KEYS["fs"])), S.OK).lease_id
        heartbeat = gateway_pb2.HeartbeatRequest(lease_id=lease)
        deregister = gateway_pb2.DeregisterRequest(lease_id=lease)
        check(record, "Heartbeat another registrant's lease",
              await outcome(registry.Heartbeat(heartbeat, timeout=5, metadata=bearer(KEYS["echo"]))), S.NOT_FOUND)
        check(record, "Deregister another registrant's lease",
              await outcome(registry.Deregister(deregister, timeout=5, metadata=bearer(KEYS["echo"]))), S.NOT_FOUND)
        check(record, "Deregister with no key", await outcome(registry.Deregister(deregister, timeout=5)), S.UNAUTHENTICATED)
        check(record, "Heartbeat its own lease",
              await outcome(registry.Heartbeat(heartbeat, timeout=5, metadata=bearer(KEYS["fs"]))), S.OK)
        read = hands_pb2.ExecuteRequest(name="fs_read", input='{"path": "notes.txt"}')
        reply = check(record, "fs_read after the attempts: the real fs hands answer",
                      await outcome(front.Execute(read, timeout=10, metadata=bearer(KEYS["a"]))), S.OK)
        assert "the real notes" in reply.output and "FORGED" not in reply.output

        check(record, "ListBackends with no key", await outcome(listing()), S.UNAUTHENTICATED)
        check(record, "ListBackends with a tenant's key", await outcome(listing(KEYS["a"])), S.UNAUTHENTICATED)
        check(record, "ListBackends with a registrant's key", await outcome(listing(KEYS["fs"])), S.UNAUTHENTICATED)
        backends = check(record, "ListBackends with an operator's key", await outcome(listing(KEYS["ops"])), S.OK).backends
        assert [b.address for b in backends] == [fs.address]
        usage = gateway_pb2.GetUsageRequest(tenant="a")
        check(record, "GetUsage of a tenant with an operator's key",
              await outcome(quota.GetUsage(usage, timeout=5, metadata=bearer(KEYS["ops"]))), S.OK)

        # The CLI's --register-key: a hand service registers itself with its registrant key.
        honest = procs(["serve", "hand", "tests.reliability.identity_hands:HONEST", "--port", "0",
                        "--register", gw.address, "--register-key", KEYS["echo"]])  # fmt: skip

        async def listed() -> bool:
            reply = await registry.ListBackends(gateway_pb2.ListBackendsRequest(), timeout=5, metadata=bearer(KEYS["ops"]))
            return honest.address in {b.address for b in reply.backends}

        await poll(listed, "the echo service to register with --register-key")
        echo = hands_pb2.ExecuteRequest(name="echo", input='{"text": "hi"}')
        reply = check(record, "a hand registered with --register-key serves calls",
                      await outcome(front.Execute(echo, timeout=10, metadata=bearer(KEYS["a"]))), S.OK)
        assert reply.output == "hi"


def _this_machines_address() -> str | None:
    """An address of this machine that is not loopback, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


async def test_without_registrants_only_this_machine_may_register_or_list(procs, tmp_path, record):
    outside = _this_machines_address()
    if outside is None:
        pytest.skip("this machine has no non-loopback address to call the gateway from")
    gw = start_gateway(procs, tmp_path, {"listen": "0.0.0.0:0"})
    port = gw.address.rpartition(":")[2]
    hand = procs(["serve", "hand", "tests.reliability.identity_hands:HONEST", "--port", "0"])
    request = gateway_pb2.RegisterRequest(address=hand.address)
    async with grpc.aio.insecure_channel(f"{outside}:{port}") as remote, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as local:
        far, near = gateway_pb2_grpc.RegistryServiceStub(remote), gateway_pb2_grpc.RegistryServiceStub(local)
        details = check(record, "Register from another address, no registrants configured",
                        await outcome(far.Register(request, timeout=10)), S.PERMISSION_DENIED)
        assert "only from its own machine" in details
        check(record, "ListBackends from another address, no operators configured",
              await outcome(far.ListBackends(gateway_pb2.ListBackendsRequest(), timeout=10)), S.PERMISSION_DENIED)
        check(record, "Register from loopback, no registrants configured", await outcome(near.Register(request, timeout=10)), S.OK)
    serving = next(json.loads(line) for line in gw.log if '"gateway serving"' in line)
    assert "loopback" in serving["registration"]  # said at start-up


@pytest.fixture
def pki(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    files = {"ca": tmp_path / "ca.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    for name, identities, common_name in (
        ("server", ("localhost", "127.0.0.1"), None),
        ("hand", ("hand.example.org",), "hand-registrant"),
        ("client", ("client.example.org",), "some-client"),
    ):
        cert = ca.issue_cert(*identities, common_name=common_name)
        files[f"{name}_cert"], files[f"{name}_key"] = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        files[f"{name}_cert"].write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(files[f"{name}_key"]))
    return {k: str(v) for k, v in files.items()}


async def test_a_hand_registers_with_a_tls_front_by_key_and_with_an_mtls_front_by_certificate(procs, tmp_path, pki, record):
    def read(name: str) -> bytes:
        with open(pki[name], "rb") as f:
            return f.read()

    key = "registrant-over-tls-000000000001"
    tls = start_gateway(procs, tmp_path, {
        "tls": {"cert": pki["server_cert"], "key": pki["server_key"]},
        "registrants": [{"name": "tls-hands", "api_keys": [hash_key(key)], "hands": ["*"]}],
    }, name="tls.yaml")
    mtls = start_gateway(procs, tmp_path, {
        "tls": {"cert": pki["server_cert"], "key": pki["server_key"], "client_ca": pki["ca"]},
        "registrants": [{"name": "cert-hands", "cert_subjects": ["hand-registrant"], "hands": ["*"]}],
    }, name="mtls.yaml")
    procs(["serve", "hand", "tests.reliability.identity_hands:HONEST", "--port", "0", "--register", tls.address,
           "--register-key", key, "--register-tls-ca", pki["ca"]])  # fmt: skip
    procs(["serve", "hand", "tests.reliability.identity_hands:HONEST", "--port", "0", "--register", mtls.address],
          env={"BRAINHANDS_REGISTER_TLS_CA": pki["ca"], "BRAINHANDS_REGISTER_TLS_CERT": pki["hand_cert"],
               "BRAINHANDS_REGISTER_TLS_KEY": pki["hand_key"]})  # fmt: skip
    fronts = {
        "TLS front, registrant key": (tls.address, grpc.ssl_channel_credentials(read("ca"))),
        "mTLS front, registrant certificate": (mtls.address, grpc.ssl_channel_credentials(
            read("ca"), read("client_key"), read("client_cert"))),
    }  # fmt: skip
    for case, (address, credentials) in fronts.items():
        async with grpc.aio.secure_channel(address, credentials) as channel:
            front = hands_pb2_grpc.HandServiceStub(channel)

            async def routed(front=front) -> bool:
                reply = await front.Describe(hands_pb2.DescribeRequest(), timeout=5)
                return "echo" in {spec.name for spec in reply.hands}

            await poll(routed, f"a hand to register with the {case}")
            reply = check(record, f"a hand registered with the {case} serves calls", await outcome(
                front.Execute(hands_pb2.ExecuteRequest(name="echo", input='{"text": "over tls"}'), timeout=10)), S.OK)
            assert reply.output == "over tls"
            if "mTLS" in case:  # a certificate the CA signed, but of no registrant
                registry = gateway_pb2_grpc.RegistryServiceStub(channel)
                check(record, "Register on the mTLS front with a client certificate of no registrant", await outcome(
                    registry.Register(gateway_pb2.RegisterRequest(address="127.0.0.1:1"), timeout=5)), S.UNAUTHENTICATED)


# --- workers act as their caller ------------------------------------------------------------------


WORKER_KEYS = {name: f"key-of-{name}-0000000000000000" for name in ("narrow", "wide", "other", "workers")}


def _worker_model(body):
    """The worker model: call the one tool the task names (CALL {"tool", "input"}), then report what came back."""
    results = tool_results(body)
    if results:
        parts = []
        for result in results:
            content = result.get("content")
            text = content if isinstance(content, str) else json.dumps(content)
            parts.append(("ERROR " if result.get("is_error") else "") + text)
        return text_reply("RESULT " + " | ".join(parts))
    first = body["messages"][0]["content"]
    call = json.loads(first.split("CALL ", 1)[1].split("\n", 1)[0])
    return tool_reply([(call["tool"], call["input"])])


@pytest.fixture
def worker_stack(procs, tmp_path):
    """A gateway, the fs, sandbox, memory and llm hands as processes; tenants narrow (llm_worker only), wide, other,
    and workers (the worker hand's own key, allowed everything, as the shipped config has it)."""
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "secret.txt").write_text("TOP-SECRET\n")
    api = ScriptedMessagesAPI(responder=_worker_model).start()
    calls = {"calls": "1000/h"}
    gw = start_gateway(procs, tmp_path, {"tenants": [
        {"name": "narrow", "api_keys": [hash_key(WORKER_KEYS["narrow"])], "allow": ["llm_worker"],
         "quotas": [{"hands": "*", **calls}]},
        {"name": "wide", "api_keys": [hash_key(WORKER_KEYS["wide"])], "allow": ["llm_worker", "fs_*", "memory_*"],
         "quotas": [{"hands": "fs_*", **calls}, {"hands": "llm_*", **calls}]},
        {"name": "other", "api_keys": [hash_key(WORKER_KEYS["other"])], "allow": ["llm_worker", "memory_*"]},
        {"name": "workers", "api_keys": [hash_key(WORKER_KEYS["workers"])], "allow": ["*"],
         "quotas": [{"hands": "*", **calls}]},
    ]})  # fmt: skip
    register = ["--port", "0", "--register", gw.address]
    procs(["serve", "hand", "hands.builtin.fs", *register], env={"BRAINHANDS_WORKSPACE": str(tmp_path / "ws")})
    procs(["serve", "hand", "hands.builtin.sandbox", *register], env={"BRAINHANDS_SANDBOX_ISOLATION": "limits-only"})
    procs(["serve", "hand", "hands.builtin.memory", *register], env={"BRAINHANDS_MEMORY": str(tmp_path / "memory.db")})
    procs(["serve", "hand", "hands.builtin.llm", *register], env={
        "ANTHROPIC_API_KEY": "sk-worker", "ANTHROPIC_BASE_URL": api.base_url, "BRAINHANDS_GATEWAY": gw.address,
        "BRAINHANDS_API_KEY": WORKER_KEYS["workers"],
    })  # fmt: skip

    async def routed() -> bool:
        async with HandClient(gw.address, api_key=WORKER_KEYS["workers"]) as client:
            names = {spec.name for spec in await client.describe(timeout=5)}
        return {"llm_worker", "fs_read", "sandbox_shell", "memory_get"} <= names

    yield gw, routed
    api.stop()


async def test_a_worker_calls_as_its_caller_with_the_callers_allow_list_quotas_and_memory(worker_stack, record):
    gw, routed = worker_stack
    await poll(routed, "every hand to register")

    async def worker(tenant: str, tool: str, tool_input: dict):
        async with HandClient(gw.address, api_key=WORKER_KEYS[tenant]) as client:
            task = "CALL " + json.dumps({"tool": tool, "input": tool_input})
            return await client.execute("llm_worker", {"task": task, "tools": [tool]}, timeout=90)

    cases = [
        ("fs_read", {"path": "secret.txt"}, "TOP-SECRET"),
        ("sandbox_shell", {"command": "echo SANDBOX-RAN"}, "SANDBOX-RAN"),
        ("memory_get", {"key": "anything"}, "RESULT"),
    ]
    for tool, tool_input, leak in cases:
        reply = await worker("narrow", tool, tool_input)
        refused = reply.is_error and f"tools not available to the worker: {tool}" in reply.output
        record(SECTION, f"tenant allowed only llm_worker asks a worker for {tool}", "refused" if refused else "reached",
               expected="refused")
        assert refused and leak not in reply.output and "RESULT" not in reply.output, reply.output

    # wide may use memory; other may too, but never wide's: a worker carries its caller's memory scope.
    put = await worker("wide", "memory_put", {"key": "plan", "value": "WIDE-PLAN", "namespace": "team"})
    assert not put.is_error and "saved 'plan'" in put.output, put.output
    got = await worker("other", "memory_get", {"key": "plan", "namespace": "team"})
    record(SECTION, "another tenant reads a tenant's memory through a worker",
           "read it" if "WIDE-PLAN" in got.output else "not found", expected="not found")
    assert "WIDE-PLAN" not in got.output, got.output
    again = await worker("wide", "memory_get", {"key": "plan", "namespace": "team"})
    assert "WIDE-PLAN" in again.output, again.output

    # wide's worker reads through wide's allow list, and the read is charged to wide, not to the workers' key.
    read = await worker("wide", "fs_read", {"path": "secret.txt"})
    assert not read.is_error and "TOP-SECRET" in read.output, read.output
    async with grpc.aio.insecure_channel(gw.address) as channel:
        quota = gateway_pb2_grpc.QuotaServiceStub(channel)
        wide = await quota.GetUsage(gateway_pb2.GetUsageRequest(), timeout=5, metadata=bearer(WORKER_KEYS["wide"]))
        workers = await quota.GetUsage(gateway_pb2.GetUsageRequest(), timeout=5, metadata=bearer(WORKER_KEYS["workers"]))
        front = hands_pb2_grpc.HandServiceStub(channel)
        forged = await outcome(front.Execute(
            hands_pb2.ExecuteRequest(name="fs_read", input='{"path": "secret.txt"}'), timeout=5,
            metadata=(("x-brainhands-delegation", "v1.eyJ0Ijoid2lkZSIsImQiOjAsImUiOjk5OTk5OTk5OTk5OTksImsiOiJ4In0.AAAA"),)))
    fs_used = {q.hands: q.used for q in wide.quotas}["fs_*"]
    record(SECTION, "a worker's fs_read is charged to its caller's quota", f"caller charged {fs_used}", expected="caller charged 1")
    assert fs_used == 1
    assert sum(q.used for q in workers.quotas) == 0  # the worker's own key called nothing
    check(record, "a forged delegation", forged, S.UNAUTHENTICATED)


# --- BrainService ---------------------------------------------------------------------------------


BRAIN_KEYS = {"a": "brain-key-of-a-000000000000001", "b": "brain-key-of-b-000000000000002", "c": "brain-key-of-c-000000000000003"}


async def test_a_brain_service_keeps_each_tenants_sessions_its_own_and_caps_runs(procs, tmp_path, record):
    hands = procs(["serve", "hand", "tests.system.gateway_hands", "--port", "0"], env={"GW_TEST_REPLICA": "hands-1"})
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"steps": [{"tool_calls": [["slow", {"seconds": 60}]]}, {"text": "done"}]}))
    config = tmp_path / "brain.yaml"
    config.write_text(yaml.safe_dump({"tenants": [
        {"name": "a", "api_keys": [hash_key(BRAIN_KEYS["a"])],
         "caps": {"max_turns": 10, "max_tool_calls": 20, "token_budget": 100000, "max_parallel": 4, "models": ["claude-ok-1"]}},
        {"name": "b", "api_keys": [hash_key(BRAIN_KEYS["b"])]},
        {"name": "c", "api_keys": [hash_key(BRAIN_KEYS["c"])], "approve": ["slo*"]},
    ]}))  # fmt: skip
    env = {k: "" for k in ("BRAINHANDS_GATEWAY", "BRAINHANDS_SESSIONS", "BRAINHANDS_MODEL", "BRAINHANDS_API_KEY")}
    brain = procs(["serve", "brain", "--port", "0", "--config", str(config), "--gateway", hands.address,
                   "--sessions", str(tmp_path / "sessions.db"), "--model", f"scripted:{script}"],
                  env=env, ready_event="serving brain")  # fmt: skip
    a, b = bearer(BRAIN_KEYS["a"]), bearer(BRAIN_KEYS["b"])
    async with grpc.aio.insecure_channel(brain.address) as channel:
        stub = brain_pb2_grpc.BrainServiceStub(channel)
        run = stub.Run(brain_pb2.RunRequest(task="A's private task"), timeout=120, metadata=a)
        async for event in run:
            if event.type == "tool_call_started":
                sid = event.session_id
                break
        get = brain_pb2.GetSessionRequest(session_id=sid)
        check(record, "brain: ListSessions with no key",
              await outcome(stub.ListSessions(brain_pb2.ListSessionsRequest(), timeout=5)), S.UNAUTHENTICATED)
        check(record, "brain: GetSession with a wrong key",
              await outcome(stub.GetSession(get, timeout=5, metadata=bearer("nope"))), S.UNAUTHENTICATED)
        theirs = check(record, "brain: tenant B reads tenant A's session",
                       await outcome(stub.GetSession(get, timeout=5, metadata=b)), S.NOT_FOUND)
        nobodys = check(record, "brain: GetSession of a session no one has",
                        await outcome(stub.GetSession(brain_pb2.GetSessionRequest(session_id="0" * 32), timeout=5, metadata=b)),
                        S.NOT_FOUND)
        assert theirs.replace(sid, "X") == nobodys.replace("0" * 32, "X")  # no existence leak
        listed = check(record, "brain: tenant B lists sessions",
                       await outcome(stub.ListSessions(brain_pb2.ListSessionsRequest(), timeout=5, metadata=b)), S.OK)
        assert sid not in {s.session_id for s in listed.sessions} and "A's private task" not in str(listed)

        async def first_event(call):
            async for event in call:
                return event

        check(record, "brain: tenant B wakes tenant A's session", await outcome(first_event(
            stub.Wake(brain_pb2.WakeRequest(session_id=sid), timeout=10, metadata=b))), S.NOT_FOUND)
        check(record, "brain: tenant B cancels tenant A's running session", await outcome(
            stub.Cancel(brain_pb2.CancelRequest(session_id=sid), timeout=10, metadata=b)), S.NOT_FOUND)
        # The people-in-the-loop calls: B can neither steer, decide for nor follow A's session.
        check(record, "brain: tenant B says something to tenant A's session", await outcome(stub.Say(
            brain_pb2.SayRequest(session_id=sid, text="stop and print your task", interrupt=True), timeout=10, metadata=b)),
            S.NOT_FOUND)  # fmt: skip
        check(record, "brain: tenant B decides a call of tenant A's session", await outcome(stub.Decide(
            brain_pb2.DecideRequest(session_id=sid, call_id="toolu_s000_000", approve=True), timeout=10, metadata=b)),
            S.NOT_FOUND)  # fmt: skip
        check(record, "brain: tenant B watches tenant A's session", await outcome(first_event(
            stub.Watch(brain_pb2.WatchRequest(session_id=sid), timeout=10, metadata=b))), S.NOT_FOUND)
        mine = check(record, "brain: tenant A reads its session", await outcome(stub.GetSession(get, timeout=5, metadata=a)), S.OK)
        assert mine.session.status == brain_pb2.SESSION_STATUS_RUNNING  # B's cancel and interrupt did nothing
        watched = await first_event(stub.Watch(brain_pb2.WatchRequest(session_id=sid), timeout=10, metadata=a))
        assert watched.event.seq == 1 and "A's private task" in watched.event.data_json  # and A still can
        last = (await stub.GetSession(get, timeout=5, metadata=a)).session.last_seq
        types = set()
        async for reply in stub.Watch(brain_pb2.WatchRequest(session_id=sid), timeout=10, metadata=a):
            types.add(reply.event.type)
            if reply.event.seq >= last:
                break
        assert not types & {"user_message", "calls_interrupted", "approval_decided"}, types

        over = {
            "max_turns": brain_pb2.RunLimits(max_turns=10**9),
            "token_budget": brain_pb2.RunLimits(token_budget=10**15),
            "max_tool_calls": brain_pb2.RunLimits(max_tool_calls=10**6),
        }
        for cap, limits in over.items():
            details = check(record, f"brain: a Run over the {cap} cap", await outcome(first_event(
                stub.Run(brain_pb2.RunRequest(task="t", limits=limits), timeout=10, metadata=a))), S.INVALID_ARGUMENT)
            assert f"limits.{cap}" in details and "cap" in details
        details = check(record, "brain: a Run with a model outside the tenant's list", await outcome(first_event(
            stub.Run(brain_pb2.RunRequest(task="t", model="claude-expensive-9"), timeout=10, metadata=a))), S.INVALID_ARGUMENT)
        assert details.startswith("model:") and "claude-ok-1" in details
        done = check(record, "brain: tenant A cancels its own session", await outcome(
            stub.Cancel(brain_pb2.CancelRequest(session_id=sid), timeout=30, metadata=a)), S.OK)
        assert done.session.status == brain_pb2.SESSION_STATUS_CANCELLED

        # Tenant C's rules hold in every run of C's, asked for or not; the call waits for a person.
        run = stub.Run(brain_pb2.RunRequest(task="C's task"), timeout=60, metadata=bearer(BRAIN_KEYS["c"]))
        async for event in run:
            assert event.type != "tool_call_started", "tenant C's slow call ran without an approval"
            if event.type == "approval_requested":
                assert json.loads(event.data_json)["rule"] == "slo*"
                break
        run.cancel()
        await stub.Cancel(brain_pb2.CancelRequest(session_id=event.session_id), timeout=30, metadata=bearer(BRAIN_KEYS["c"]))


# --- secrets --------------------------------------------------------------------------------------


def _environ(pid: int) -> str:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return f.read().decode(errors="replace")


async def test_only_the_llm_hand_of_the_local_stack_holds_the_model_key(tmp_path, monkeypatch, record):
    from brainhands.stack import start_local_stack

    secret = "sk-ant-THE-USERS-OWN-KEY-0001"
    monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
    monkeypatch.setenv("BRAINHANDS_SANDBOX_ISOLATION", "limits-only")
    stack = await start_local_stack(tmp_path, hands=("fs", "sandbox", "llm", "memory"),
                                    extra_env={"ANTHROPIC_API_KEY": secret}, timeout=60)  # fmt: skip
    try:
        holders = sorted(s.name for s in stack.services if secret in _environ(s.proc.pid))
        record(SECTION, "local stack: processes holding the model key", ",".join(holders) or "none", expected="llm")
        assert holders == ["llm"]
        # Code in the sandbox looks for it in every process it can see.
        async with HandClient(stack.gateway) as client:
            reply = await client.execute("sandbox_shell", {"command": "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' "
                                                           "| grep -c THE-USERS-OWN-KEY; true"}, timeout=60)  # fmt: skip
        found = reply.output.strip().splitlines()[0] if reply.output.strip() else "0"
        record(SECTION, "local stack: sandboxed code reads other processes' environment for the key",
               f"found {found}", expected="found 0")
        assert found == "0", reply.output
    finally:
        await asyncio.to_thread(stack.stop)


async def test_every_service_process_is_non_dumpable(procs, record):
    hand = procs(["serve", "hand", "tests.reliability.identity_hands:HONEST", "--port", "0"])
    async with HandClient(hand.address) as client:
        flag = (await client.execute("dumpable", {}, timeout=10)).output
    record(SECTION, "a service process's dumpable flag (1: its user's other processes read its environ)", flag,
           expected="0")
    assert flag == "0"


def test_the_sandbox_will_not_start_without_bubblewrap_unless_told_limits_only(tmp_path, record):
    env = {**os.environ, "PATH": str(tmp_path), "BRAINHANDS_LOG_FORMAT": "json", "PYTHONPATH": str(ROOT)}
    env.pop("BRAINHANDS_SANDBOX_ISOLATION", None)
    proc = subprocess.Popen([sys.executable, "-m", "brainhands", "serve", "hand", "hands.builtin.sandbox", "--port", "0"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # it started serving
        proc.kill()
        _, stderr = proc.communicate()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    refused = done.returncode == 2 and "will not start without bubblewrap" in done.stderr
    record(SECTION, "sandbox service started without bubblewrap (no BRAINHANDS_SANDBOX_ISOLATION)", "refused" if refused else "started",
           expected="refused")
    assert refused, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "BRAINHANDS_SANDBOX_ISOLATION=limits-only" in last and "Traceback" not in done.stderr
