"""Which addresses a download may connect to: a network backend that checks every connection.

Download URLs come from outside, so a URL naming ``http://169.254.169.254/`` (cloud metadata),
``http://localhost:9200/`` or a host whose DNS answer points into the private network must not
be fetched. Checking the URL's host name is not enough: DNS can answer differently later, and a
redirect can lead anywhere. So the check sits where the connection is made: httpcore asks
:class:`GuardedBackend` to connect for the first request *and for every redirect hop*; it
resolves the host once, drops the addresses the :class:`AddressPolicy` refuses, and connects to
an address it checked (TLS still verifies the certificate against the host name).

Refused by default: every address that is not globally routable (loopback, RFC 1918 private,
link-local, CGNAT ``100.64.0.0/10``, unspecified, documentation, benchmarking and reserved
ranges, unique-local and site-local IPv6) and multicast, including IPv4 addresses embedded in
IPv6 (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible, 6to4, Teredo, NAT64 ``64:ff9b::/96``).
``allow_networks`` lists networks to admit anyway (a lab origin, an internal mirror).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Sequence

import httpcore
import trio

from lakeferry.api import PermanentError, Reason

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries for transition mechanisms, if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64 or ip in _IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    """True for a globally routable unicast address (and whatever IPv4 it embeds)."""
    if ip.is_multicast or not ip.is_global:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:
            return False
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return is_public(embedded)
    return True


class AddressPolicy:
    """Public addresses, plus the networks of ``allow_networks``. Raises ValueError when bad."""

    def __init__(self, allow_networks: Iterable[str] = ()) -> None:
        self.allow: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(n.strip(), strict=False) for n in allow_networks
        )

    def _allowed_explicitly(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.allow)

    def allows(self, ip: IPAddress) -> bool:
        if self._allowed_explicitly(ip):
            return True
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        if mapped is not None and self._allowed_explicitly(mapped):
            return True
        return is_public(ip)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's trio backend, connecting only to addresses the policy allows."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.TrioBackend()

    async def _resolve(self, host: str, port: int, limit: float | None) -> list[IPAddress]:
        try:
            with trio.fail_after(math.inf if limit is None else limit):
                infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
        except trio.TooSlowError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        found: dict[IPAddress, None] = {}
        for *_, sockaddr in infos:
            found[ipaddress.ip_address(sockaddr[0])] = None
        return list(found)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._resolve(host, port, timeout)
        allowed = [ip for ip in addresses if self._policy.allows(ip)]
        if not allowed:
            raise PermanentError(
                Reason.BLOCKED,
                f"{host} resolves to {_listing(addresses)}: a blocked network "
                "(loopback, private, link-local, reserved; see allow_networks)",
            )
        error: httpcore.ConnectError | None = None
        for ip in allowed:
            try:
                return await self._inner.connect_tcp(
                    str(ip),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise PermanentError(Reason.BLOCKED, "unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


def _listing(addresses: Sequence[IPAddress]) -> str:
    shown = ", ".join(str(ip) for ip in addresses[:4])
    return shown + (f" and {len(addresses) - 4} more" if len(addresses) > 4 else "")
