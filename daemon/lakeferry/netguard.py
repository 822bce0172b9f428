"""Which network addresses a download may reach: the SSRF guard every network plugin shares.

Download URLs come from outside, so a URL naming ``http://169.254.169.254/`` (cloud metadata),
``http://localhost:9200/`` or a host whose DNS answer points into the private network must not
be fetched. Checking the URL's text is not enough: DNS can answer differently a second later
(rebinding), the same address has many spellings (``2130706433``, ``0x7f000001``,
``0177.0.0.1``, ``[::ffff:127.0.0.1]``), and a redirect can lead anywhere. So a
:class:`NetGuard` works where the connection is made:

1. :meth:`NetGuard.resolve` resolves a host **once** (IP literals in every spelling the C
   library accepts are parsed here, never sent to DNS; ``localhost`` and ``*.localhost`` are
   loopback by definition, RFC 6761) and keeps only the addresses the policy allows;
   none left is ``PermanentError(blocked)``, before any connection is attempted;
2. the caller connects to one of those *addresses*, never to the name again, so what was
   checked is what is used (TLS still verifies the certificate against the host name);
3. :meth:`NetGuard.check_peer` checks the address the socket is actually connected to.

:meth:`NetGuard.connect_tcp` does all three for a plain trio stream; the ``http`` plugin does
them inside httpcore's network backend, so every redirect hop passes the same checks.
:meth:`NetGuard.check_url` is a cheap pre-flight for URL text (literal hosts and ports only,
no DNS), for spellings an HTTP library would otherwise reject with a less useful error.

Refused by default: every address that is not globally routable (loopback, RFC 1918 private,
link-local including cloud metadata, CGNAT ``100.64.0.0/10``, unspecified, documentation,
benchmarking and reserved ranges, IPv6 unique-local ``fc00::/7``, link-local ``fe80::/10`` and
site-local) and multicast, including IPv4 addresses embedded in IPv6 (IPv4-mapped
``::ffff:a.b.c.d``, IPv4-compatible ``::a.b.c.d``, 6to4 ``2002::/16``, Teredo, NAT64
``64:ff9b::/96`` and the local-use NAT64 prefix ``64:ff9b:1::/48``).

Allow-lists, for sites that need them: ``allow_networks`` admits addresses in CIDR networks
(``10.1.0.0/16``); ``allow_hosts`` admits a host name (any address it resolves to) or an IP
literal (any spelling of it), optionally only on one port (``mirror.internal:8443``), and
``*.example.org`` admits every name under ``example.org``.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

import trio

from lakeferry.errors import PermanentError, Reason, TransientError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]
"""``resolver(host, port)``: every address of a host name. Raise OSError when it has none."""

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_LOOPBACK: tuple[IPAddress, ...] = (
    ipaddress.IPv4Address("127.0.0.1"),
    ipaddress.IPv6Address("::1"),
)
_V4_PART = re.compile(r"^(0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*)$")
_HOST_RULE = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>\d{1,5}))?$")


# --- addresses -----------------------------------------------------------------------------------


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


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, in any form ``inet_aton``/``getaddrinfo`` accept; else None.

    IPv4: one to four dot-separated parts, each decimal, octal (leading ``0``) or hex (``0x``),
    the last part filling the remaining bytes (``127.1``, ``2130706433``, ``0x7f.0.0.1``,
    ``0177.0.0.1``), with an optional trailing dot. IPv6: with or without brackets, with an
    optional zone (``fe80::1%25eth0`` as in URLs, or ``%eth0``).
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        address, _, zone = unquote(text).partition("%")
        try:
            v6 = ipaddress.IPv6Address(address)
        except ValueError:
            return None
        try:
            return ipaddress.IPv6Address(f"{v6}%{zone}") if zone else v6
        except ValueError:  # a zone ipaddress cannot represent: the address is what matters
            return v6
    return _parse_ipv4(text)


def _parse_ipv4(text: str) -> ipaddress.IPv4Address | None:
    if text.endswith("."):
        text = text[:-1]
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(_V4_PART.match(p) for p in parts):
        return None
    values = []
    for part in parts:
        if part[:2].lower() == "0x":
            values.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part[0] == "0":
            values.append(int(part, 8))
        else:
            values.append(int(part))
    *leading, last = values
    if any(v > 0xFF for v in leading) or last >= 1 << (8 * (4 - len(leading))):
        return None
    number = last
    for index, value in enumerate(leading):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def _is_localhost_name(name: str) -> bool:
    return name == "localhost" or name.endswith(".localhost")


def _normal_name(host: str) -> str:
    return host.strip().lower().rstrip(".")


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Every address of ``host`` from the system resolver (``getaddrinfo``), in its order."""
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    found: dict[IPAddress, None] = {}
    for *_, sockaddr in infos:
        found[ipaddress.ip_address(sockaddr[0])] = None
    return list(found)


# --- the policy ----------------------------------------------------------------------------------


class HostRule(NamedTuple):
    """One ``allow_hosts`` entry: a name (``*.`` prefix: its subdomains), or an address."""

    name: str | None
    address: IPAddress | None
    port: int | None
    subdomains: bool = False

    @classmethod
    def parse(cls, entry: str) -> HostRule:
        if entry.count(":") > 1 and "[" not in entry:  # a bare IPv6 address, no port
            bare = parse_ip_literal(entry)
            if bare is None:
                raise ValueError(f"{entry!r}: not an IPv6 address (write [addr]:port for a port)")
            return cls(None, bare, None)
        m = _HOST_RULE.match(entry.strip())
        if m is None:
            raise ValueError(f"{entry!r} is not a host, host:port or [IPv6]:port")
        port = int(m["port"]) if m["port"] is not None else None
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"{entry!r}: port out of range")
        text = m["v6"] or m["host"]
        address = parse_ip_literal(text)
        if address is not None:
            return cls(None, address, port)
        if m["v6"] is not None:
            raise ValueError(f"{entry!r}: not an IPv6 address")
        name = _normal_name(text)
        subdomains = name.startswith("*.")
        if subdomains:
            name = name[2:]
        if not name or "*" in name or not re.fullmatch(r"[a-z0-9_.-]+", name):
            raise ValueError(f"{entry!r}: not a host name (give IDNs in their xn-- form)")
        return cls(name, None, port, subdomains)

    def matches(self, host: str, address: IPAddress | None, port: int) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.address is not None:
            return address is not None and _same_address(self.address, address)
        if address is not None or self.name is None:
            return False
        name = _normal_name(host)
        if self.subdomains:
            return name.endswith("." + self.name)
        return name == self.name


def _same_address(a: IPAddress, b: IPAddress) -> bool:
    def plain(ip: IPAddress) -> IPAddress:
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                return ip.ipv4_mapped
            return ipaddress.IPv6Address(int(ip))  # without the zone
        return ip

    return plain(a) == plain(b)


def rule_of(ip: IPAddress) -> str:
    """Which rule of the SSRF policy refuses ``ip`` (for messages)."""
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    if mapped is not None:
        return f"the IPv4-mapped form of {mapped}, {rule_of(mapped)}"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a carrier-grade NAT address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved or not ip.is_global:
        return "a reserved address"
    return "an address the policy refuses"


def _network_of(ip: IPAddress) -> str:
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    if mapped is not None:
        return f"{mapped}/32"
    return f"{ip}/32" if isinstance(ip, ipaddress.IPv4Address) else f"{ip}/128"


_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")


class NetGuard:
    """The SSRF policy: public addresses, plus ``allow_networks`` and ``allow_hosts``.

    Raises ValueError for an allow-list entry it cannot parse. ``resolver`` (default: the
    system's) is a plain attribute so tests and plugins can substitute their own.
    """

    def __init__(
        self,
        *,
        allow_networks: Iterable[str] = (),
        allow_hosts: Iterable[str] = (),
        resolver: Resolver | None = None,
        section: str = "",
    ) -> None:
        self.section = section
        """The settings section of the allow-lists (``downloaders.http``), for messages."""
        self.allow_networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(n.strip(), strict=False) for n in allow_networks
        )
        self.allow_hosts: tuple[HostRule, ...] = tuple(HostRule.parse(h) for h in allow_hosts)
        self.resolver: Resolver = resolver if resolver is not None else system_resolver

    # -- pure checks --------------------------------------------------------------------------

    def _in_allowed_network(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.allow_networks)

    def allows_address(self, ip: IPAddress) -> bool:
        """A public address, or one in ``allow_networks`` (IPv4-mapped forms included)."""
        if self._in_allowed_network(ip):
            return True
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        if mapped is not None and self._in_allowed_network(mapped):
            return True
        return is_public(ip)

    def allows_host(self, host: str, port: int) -> bool:
        """``host`` (a name or any spelling of an address) on ``port`` is in ``allow_hosts``."""
        address = parse_ip_literal(host)
        return any(rule.matches(host, address, port) for rule in self.allow_hosts)

    def check_url(self, url: str) -> None:
        """Pre-flight for URL text, without DNS: refuse a literal host or port the policy refuses.

        PermanentError(``blocked``) for an IP literal (any spelling) or ``localhost`` name that
        is not allowed; PermanentError(``malformed``) for an unparseable URL, a missing host or a
        port outside 1-65535. Names are checked when they are resolved (:meth:`resolve`).
        """
        try:
            parts = urlsplit(url)
            host = parts.hostname
            port = parts.port
        except ValueError as exc:
            raise PermanentError(Reason.MALFORMED, f"unparseable URL: {exc}") from None
        if not host:
            raise PermanentError(Reason.MALFORMED, "URL without a host")
        if port is None:
            port = {"https": 443, "http": 80}.get(parts.scheme.lower(), 0)
        elif not 1 <= port <= 65535:
            raise PermanentError(Reason.MALFORMED, f"port {port} out of range")
        address = parse_ip_literal(host)
        if address is None and not _is_localhost_name(_normal_name(host)):
            return
        if self.allows_host(host, port):
            return
        addresses: list[IPAddress] = [address] if address is not None else list(_LOOPBACK)
        if not any(self.allows_address(ip) for ip in addresses):
            raise self._blocked(host, port, addresses)

    def _blocked(self, host: str, port: int, addresses: Sequence[IPAddress]) -> PermanentError:
        """The refusal: which address, by which rule, and the setting that would allow it."""
        first = addresses[0]
        named = host.strip("[]") if parse_ip_literal(host) is None else None
        what = f"{named} resolves to {_listing(addresses)}" if named else str(first)
        if named and len(addresses) > 1:
            what += f", of which {first} is"
        else:
            what += " is"
        section = f"{self.section}." if self.section else ""
        bare = host.strip("[]")
        host_port = f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"
        return PermanentError(
            Reason.BLOCKED,
            f"{what} {rule_of(first)}, refused against SSRF; to allow it, add "
            f'"{_network_of(first)}" to {section}allow_networks or "{host_port}" to '
            f"{section}allow_hosts",
        )

    # -- resolving and connecting -------------------------------------------------------------

    async def resolve(
        self,
        host: str,
        port: int,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - mirrors the network backends' calls
    ) -> list[IPAddress]:
        """The addresses of ``host`` the policy allows, resolved once; connect to these only.

        PermanentError(``blocked``) when there are none; TransientError(``connection``) when
        the name does not resolve, (``timeout``) when resolving takes longer than ``timeout``.
        """
        address = parse_ip_literal(host)
        if address is not None:
            addresses: Sequence[IPAddress] = [address]
        elif _is_localhost_name(_normal_name(host)):
            addresses = _LOOPBACK
        else:
            addresses = await self._lookup(host, port, timeout)
        if self.allows_host(host, port):
            return list(addresses)
        allowed = [ip for ip in addresses if self.allows_address(ip)]
        if not allowed:
            raise self._blocked(host, port, addresses)
        return allowed

    async def _lookup(
        self,
        host: str,
        port: int,
        timeout: float | None,  # noqa: ASYNC109 - passed on from resolve()
    ) -> Sequence[IPAddress]:
        try:
            with trio.fail_after(math.inf if timeout is None else timeout):
                addresses = await self.resolver(host, port)
        except trio.TooSlowError:
            raise TransientError(Reason.TIMEOUT, f"resolving {host} timed out") from None
        except UnicodeError:
            raise PermanentError(Reason.MALFORMED, f"host name {host!r} is not valid") from None
        except OSError as exc:
            raise TransientError(Reason.CONNECTION, f"cannot resolve {host}: {exc}") from None
        if not addresses:
            raise TransientError(Reason.CONNECTION, f"cannot resolve {host}: no addresses")
        return addresses

    def check_peer(self, host: str, port: int, peer: object, allowed: Sequence[IPAddress]) -> None:
        """Refuse a connection whose peer (a socket address tuple) is not one ``resolve`` gave."""
        try:
            ip = ipaddress.ip_address(peer[0] if isinstance(peer, tuple) else str(peer))
        except (ValueError, IndexError):
            raise PermanentError(
                Reason.BLOCKED, f"{host}: connected to an unknown address {peer!r}"
            ) from None
        if not any(_same_address(ip, a) for a in allowed):
            raise PermanentError(
                Reason.BLOCKED, f"{host}: connected to {ip}, which was not checked"
            )

    async def connect_tcp(
        self,
        host: str,
        port: int,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - mirrors the network backends' calls
    ) -> trio.SocketStream:
        """A TCP stream to ``host``, connected only to an address the policy allows.

        Tries the allowed addresses in order; TransientError(``connection``) when none
        accepts, (``timeout``) when ``timeout`` passes.
        """
        allowed = await self.resolve(host, port, timeout=timeout)
        errors: list[OSError] = []
        with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            for ip in allowed:
                try:
                    stream = await trio.open_tcp_stream(str(ip), port)
                except OSError as exc:
                    errors.append(exc)
                    continue
                try:
                    self.check_peer(host, port, stream.socket.getpeername(), allowed)
                except BaseException:
                    await stream.aclose()
                    raise
                return stream
        if scope.cancelled_caught:
            raise TransientError(Reason.TIMEOUT, f"connecting to {host}:{port} timed out")
        raise TransientError(
            Reason.CONNECTION, f"cannot connect to {host}:{port}: {errors[-1] if errors else '?'}"
        )


def _listing(addresses: Sequence[IPAddress]) -> str:
    shown = ", ".join(str(ip) for ip in addresses[:4])
    return shown + (f" and {len(addresses) - 4} more" if len(addresses) > 4 else "")


def guard_from_settings(
    section: str, allow_networks: Sequence[str], allow_hosts: Sequence[str]
) -> NetGuard:
    """A guard from a plugin's ``allow_networks``/``allow_hosts`` settings; a bad entry is a
    ConfigError naming ``<section>.allow_networks`` or ``<section>.allow_hosts``."""
    from lakeferry.errors import ConfigError

    try:  # the networks alone first, so that an error names the right key
        NetGuard(allow_networks=allow_networks)
    except ValueError as exc:
        raise ConfigError(f"{section}.allow_networks", str(exc)) from exc
    try:
        return NetGuard(allow_networks=allow_networks, allow_hosts=allow_hosts, section=section)
    except ValueError as exc:
        raise ConfigError(f"{section}.allow_hosts", str(exc)) from exc
