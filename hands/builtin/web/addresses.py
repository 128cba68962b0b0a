"""Which addresses web_fetch may connect to: public ones, plus what BRAINHANDS_WEB_ALLOW lets through."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from hands import HandError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: host, port -> the addresses the host resolves to (the system resolver by default; tests pass their own).
Resolver = Callable[[str, int], Awaitable[list[str]]]

_HOSTNAME = re.compile(r"^(\*\.|\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


def _embedded_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo client), so ::ffff:127.0.0.1 counts as loopback."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip.teredo is not None:
            return ip.teredo[1]
    return ip


def why_not_public(ip: IPAddress) -> str | None:
    """Words for why an address is not a public one, or None when it is."""
    ip = _embedded_ipv4(ip)
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "a reserved (not globally routable) address"
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses are allowed; others only when a network or a host of the allow list names them."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: tuple[str, ...] = ()  # exact names; ".example.com" or "*.example.com" for it and its subdomains

    @classmethod
    def parse(cls, raw: str, *, source: str = "BRAINHANDS_WEB_ALLOW") -> AddressPolicy:
        """Entries separated by commas or spaces: CIDRs ("10.0.0.0/8"), addresses ("127.0.0.1") or host names."""
        networks: list[IPNetwork] = []
        hosts: list[str] = []
        for entry in re.split(r"[,\s]+", raw.strip()):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = entry.lower().rstrip(".")
            if not _HOSTNAME.match(name) or "/" in name:
                raise ValueError(f"{source}: {entry!r} is neither a CIDR, an IP address nor a host name")
            hosts.append(name)
        return cls(tuple(networks), tuple(hosts))

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for allowed in self.hosts:
            if allowed.startswith(("*.", ".")):
                suffix = allowed.lstrip("*")
                if host == suffix[1:] or host.endswith(suffix):
                    return True
            elif host == allowed:
                return True
        return False

    def refusal(self, host: str, ip: IPAddress) -> str | None:
        """Why connecting to ip (which host resolved to) is refused, or None when it is allowed."""
        why = why_not_public(ip)
        if why is None or self.host_allowed(host) or any(ip in net for net in self.networks):
            return None
        return why


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


def _dedupe(addresses: Iterable[str]) -> list[IPAddress]:
    seen: dict[IPAddress, None] = {}
    for a in addresses:
        seen.setdefault(ipaddress.ip_address(a.split("%", 1)[0]), None)  # drop an IPv6 zone id
    return list(seen)


async def checked_address(policy: AddressPolicy, resolver: Resolver, host: str, port: int) -> IPAddress:
    """The address to connect to for host: resolved once, every answer checked; HandError when one is refused.

    The caller connects to exactly this address (never resolving the name again), so a name that answers a
    public address to the check and a private one to the connection (DNS rebinding) cannot get through.
    """
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        found = [literal]
    else:
        try:
            found = _dedupe(await resolver(host, port))
        except (OSError, UnicodeError) as exc:
            raise HandError(f"cannot resolve host {host!r}: {getattr(exc, 'strerror', None) or exc}") from None
        if not found:
            raise HandError(f"cannot resolve host {host!r}: no address")
    for ip in found:
        why = policy.refusal(host, ip)
        if why is not None:
            named = f"{host} is" if literal is not None else f"{host} resolves to {ip}, which is"
            raise HandError(
                f"refused: {named} {why}; web_fetch reaches only public addresses "
                "(the operator can allow more with BRAINHANDS_WEB_ALLOW)"
            )
    return found[0]
