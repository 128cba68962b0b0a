"""The console's calls to BrainService and the gateway, each made with the signed-in person's key."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from brain.sessions import Event, SessionInfo
from brain.v1 import brain_pb2, brain_pb2_grpc
from gateway.v1 import gateway_pb2, gateway_pb2_grpc

_STATUS_PREFIX = "SESSION_STATUS_"


def status_name(value: int) -> str:
    """'running', 'finished', ... from the enum; statuses the brain adds later come through by their own name."""
    try:
        return brain_pb2.SessionStatus.Name(value).removeprefix(_STATUS_PREFIX).lower()
    except ValueError:
        return "unknown"


def status_names() -> list[str]:
    """Every status a session can have, as the filter offers them."""
    return [status_name(v) for v in brain_pb2.SessionStatus.values() if v != brain_pb2.SESSION_STATUS_UNSPECIFIED]


def status_value(name: str) -> int:
    """The enum value of a status name; ValueError for a name the brain does not know."""
    return brain_pb2.SessionStatus.Value(_STATUS_PREFIX + name.upper())


def has_rpc(name: str) -> bool:
    """Whether this build's BrainService contract has an RPC (Decide and Say came later than the rest)."""
    return name in brain_pb2.DESCRIPTOR.services_by_name["BrainService"].methods_by_name


def to_info(session: brain_pb2.Session) -> SessionInfo:
    return SessionInfo(
        id=session.session_id,
        task=session.task,
        status=status_name(session.status),
        created_at=session.create_time.ToNanoseconds() / 1e9,
        updated_at=session.update_time.ToNanoseconds() / 1e9,
        last_seq=session.last_seq,
        parent_id=session.parent_session_id or None,
        config=json.loads(session.config_json or "{}"),
        lease_owner=session.lease_owner or None,
        lease_expires_at=session.lease_expire_time.ToNanoseconds() / 1e9 if session.lease_owner else None,
    )


def to_event(event: brain_pb2.SessionEvent) -> Event:
    return Event(
        session_id=event.session_id,
        seq=event.seq,
        type=event.type,
        data=json.loads(event.data_json or "{}"),
        ts=event.timestamp.ToNanoseconds() / 1e9,
    )


@dataclass(frozen=True)
class SessionView:
    """A session as GetSession tells it: its info, its outcome totals and its tenant (when the brain says)."""

    info: SessionInfo
    tenant: str
    totals: dict
    result: str
    reason: str


class ConsoleClients:
    """One channel to the brain and one to the gateway, shared by every request; the key goes with each call."""

    def __init__(self, brain: str, gateway: str | None, *, timeout: float = 10.0):
        self.brain_address, self.gateway_address = brain, gateway
        self.timeout = timeout
        self._brain_channel = grpc.aio.insecure_channel(brain)
        self.brain = brain_pb2_grpc.BrainServiceStub(self._brain_channel)
        self._gateway_channel = grpc.aio.insecure_channel(gateway) if gateway else None
        self.registry = gateway_pb2_grpc.RegistryServiceStub(self._gateway_channel) if gateway else None
        self.quotas = gateway_pb2_grpc.QuotaServiceStub(self._gateway_channel) if gateway else None

    async def close(self) -> None:
        await self._brain_channel.close()
        if self._gateway_channel is not None:
            await self._gateway_channel.close()

    # --- sessions ---------------------------------------------------------------------------------

    async def list_sessions(self, key: str, status: str = "", page_size: int = 200) -> list[brain_pb2.Session]:
        request = brain_pb2.ListSessionsRequest(page_size=page_size, status=status_value(status) if status else 0)
        response = await self.brain.ListSessions(request, metadata=_auth(key), timeout=self.timeout)
        return list(response.sessions)

    async def get_session(self, key: str, session_id: str) -> SessionView:
        got = await self.brain.GetSession(brain_pb2.GetSessionRequest(session_id=session_id),
                                          metadata=_auth(key), timeout=self.timeout)
        outcome = got.outcome
        return SessionView(to_info(got.session), getattr(got.session, "tenant", ""),
                           json.loads(outcome.totals_json or "{}"), outcome.result, outcome.reason)

    async def events_so_far(self, key: str, session_id: str) -> list[Event]:
        """The session's log up to now, without waiting for what comes next."""
        view = await self.get_session(key, session_id)
        last = view.info.last_seq
        events: list[Event] = []
        if last == 0:
            return events
        stream = self.session_events(key, session_id, 0)
        try:
            async for event in stream:
                events.append(event)
                if event.seq >= last:
                    break
        finally:
            await stream.aclose()
        return events

    async def session_events(self, key: str, session_id: str, after_seq: int) -> AsyncIterator[Event]:
        """The session's events after after_seq, then new ones live until it ends (BrainService Watch): the one
        place the console follows a log."""
        call = self.brain.Watch(brain_pb2.WatchRequest(session_id=session_id, after_seq=after_seq), metadata=_auth(key))
        try:
            async for response in call:
                yield to_event(response.event)
        finally:
            call.cancel()

    # --- what a person does to a session -------------------------------------------------------------

    async def cancel(self, key: str, session_id: str, reason: str) -> None:
        await self.brain.Cancel(brain_pb2.CancelRequest(session_id=session_id, reason=reason),
                                metadata=_auth(key), timeout=self.timeout)

    async def decide(self, key: str, session_id: str, call_id: str, approve: bool, reason: str) -> None:
        request = brain_pb2.DecideRequest(session_id=session_id, call_id=call_id, approve=approve, reason=reason)
        await self.brain.Decide(request, metadata=_auth(key), timeout=self.timeout)

    async def say(self, key: str, session_id: str, text: str, interrupt: bool) -> None:
        request = brain_pb2.SayRequest(session_id=session_id, text=text, interrupt=interrupt)
        await self.brain.Say(request, metadata=_auth(key), timeout=self.timeout)

    # --- the gateway --------------------------------------------------------------------------------

    async def backends(self, key: str) -> list[gateway_pb2.Backend]:
        if self.registry is None:
            return []
        response = await self.registry.ListBackends(gateway_pb2.ListBackendsRequest(), metadata=_auth(key),
                                                    timeout=self.timeout)
        return sorted(response.backends, key=lambda b: b.address)

    async def usage(self, key: str) -> gateway_pb2.GetUsageResponse | None:
        if self.quotas is None:
            return None
        return await self.quotas.GetUsage(gateway_pb2.GetUsageRequest(), metadata=_auth(key), timeout=self.timeout)


def _auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


@contextlib.asynccontextmanager
async def open_clients(brain: str, gateway: str | None) -> AsyncIterator[ConsoleClients]:
    clients = ConsoleClients(brain, gateway)
    try:
        yield clients
    finally:
        await clients.close()
