"""URL parsing and the SSRF check.

We parse the URL ourselves and connect to the IP we vetted, so what matters is that *our* reading
of the host is the one used for the connection; we are strict where URL parsers disagree (userinfo,
odd IPv4 spellings, percent-encoded or non-ASCII hosts) and refuse rather than guess.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import FetchError, FetchTimeout, UnsafeURLError
from .policy import METADATA_HOSTS, IPAddress, OutboundPolicy, normalise_address

Resolver = Callable[[str, int], Awaitable[list[str]]]

ALLOWED_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_LENGTH = 16 * 1024

_HOST_CHARS = re.compile(r"[a-z0-9._-]+")
_PORT = re.compile(r"[0-9]{1,5}")
# Spelled out because int() also accepts "1_0", " 10" and non-ASCII digits.
_HEX = re.compile(r"0[xX][0-9a-fA-F]*")
_OCT = re.compile(r"0[0-7]+")
_DEC = re.compile(r"0|[1-9][0-9]*")
_DIGITS = re.compile(r"[0-9]+")
# Anything a server or proxy might split on or decode differently from us.
_BAD_URL_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


@dataclass(frozen=True)
class ParsedURL:
    url: str  # as given (fragment included) - for messages and as the redirect base
    scheme: str
    host: str  # normalised: lower-case, IDNA ASCII, no trailing dot; IPv6 without brackets
    ip: IPAddress | None  # set when the host is an IP literal (in any spelling)
    port: int
    target: str  # path + query, as sent on the request line

    @property
    def host_header(self) -> str:
        # The Host header keeps the name the user wrote, so virtual hosting works with our IP pinning.
        host = f"[{self.host}]" if isinstance(self.ip, ipaddress.IPv6Address) else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    def url_for(self, ip: IPAddress) -> str:
        literal = f"[{ip.compressed}]" if ip.version == 6 else str(ip)
        return f"{self.scheme}://{literal}:{self.port}{self.target}"


def _parse_ipv4_number(part: str) -> int | None:
    """One inet_aton component: decimal, 0-prefixed octal or 0x-prefixed hex; None if not numeric."""
    if _HEX.fullmatch(part):
        return int(part[2:] or "0", 16)
    if _OCT.fullmatch(part):
        return int(part, 8)
    if _DEC.fullmatch(part):
        return int(part, 10)
    return None


def parse_ipv4_literal(host: str) -> ipaddress.IPv4Address | None:
    """Read ``host`` like inet_aton/WHATWG: ``2130706433``, ``0177.1``, ``0x7f.0.0.1`` -> 127.0.0.1.

    Returns None when ``host`` is not numeric (a DNS name). Raises ValueError for numeric hosts that
    are not valid addresses: an HTTP client, proxy or libc could read those some other way.
    """
    parts = host.split(".")
    # WHATWG: a host whose last label is numeric is an IPv4 address or invalid, never a DNS name.
    if not (_DIGITS.fullmatch(parts[-1]) or _HEX.fullmatch(parts[-1])):
        return None
    numbers = [_parse_ipv4_number(p) for p in parts]
    if any(n is None for n in numbers) or len(parts) > 4:
        raise ValueError(f"{host!r} is not a valid IPv4 address")
    *head, tail = [n for n in numbers if n is not None]
    if any(n > 255 for n in head) or tail >= 256 ** (5 - len(parts)):
        raise ValueError(f"{host!r} is not a valid IPv4 address")
    value = tail
    for i, n in enumerate(head):
        value |= n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def parse_url(url: str) -> ParsedURL:
    """Validate the shape of ``url`` (scheme, userinfo, host, port). No DNS. Raises UnsafeURLError."""

    def refuse(reason: str) -> UnsafeURLError:
        return UnsafeURLError(url, reason)

    if not isinstance(url, str) or not url.strip():
        raise refuse("the URL is empty")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise refuse(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if _BAD_URL_CHARS.search(url):
        raise refuse("the URL contains control characters or backslashes")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise refuse(f"the URL cannot be parsed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        shown = f"'{parts.scheme}'" if parts.scheme else "no scheme"
        raise refuse(f"only http and https URLs are allowed, got {shown}")
    netloc = parts.netloc
    if "@" in netloc:
        raise refuse("URLs with a user name or password (userinfo) are not allowed")

    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise refuse("unterminated IPv6 address in host")
        raw_host, rest = netloc[1:end], netloc[end + 1 :]
        if rest and not rest.startswith(":"):
            raise refuse("unexpected characters after the IPv6 address")
        raw_port = rest[1:] if rest else None
        if "%" in raw_host:
            raise refuse("IPv6 zone identifiers are not allowed")
        try:
            ipv6 = ipaddress.IPv6Address(raw_host)
        except ValueError:
            raise refuse(f"'{raw_host}' is not a valid IPv6 address") from None
        ip: IPAddress | None = ipv6
        host = ipv6.compressed
    else:
        raw_host, sep, raw_port_str = netloc.rpartition(":")
        if not sep:
            raw_host, raw_port_str = netloc, ""
        raw_port = raw_port_str if sep else None
        host = raw_host
        if not host.isascii():
            try:
                # IDNA also folds look-alikes such as full-width digits, so do it before the IPv4 check.
                host = host.encode("idna").decode("ascii")
            except UnicodeError:
                raise refuse("the host name is not a valid internationalised domain name") from None
        host = host.lower()
        if host.endswith(".") and not host.endswith(".."):
            host = host[:-1]
        if not host:
            raise refuse("the URL has no host")
        if not _HOST_CHARS.fullmatch(host) or any(not label for label in host.split(".")):
            raise refuse(f"'{raw_host}' is not a valid host name")
        try:
            ip = parse_ipv4_literal(host)
        except ValueError as exc:
            raise refuse(str(exc)) from None
        if ip is not None:
            host = str(ip)

    if raw_port is None or raw_port == "":
        port = DEFAULT_PORTS[scheme]
    else:
        if not _PORT.fullmatch(raw_port) or not 1 <= int(raw_port) <= 65535:
            raise refuse(f"port '{raw_port}' is outside 1..65535")
        port = int(raw_port)

    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return ParsedURL(url=url, scheme=scheme, host=host, ip=ip, port=port, target=target)


def _name_refusal(host: str) -> str | None:
    if host == "localhost" or host.endswith(".localhost"):
        return f"the host name '{host}' is refused: it always means this machine"
    if host in METADATA_HOSTS:
        return f"the host name '{host}' is refused: it is a cloud metadata endpoint"
    return None


async def default_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


async def vet(parsed: ParsedURL, policy: OutboundPolicy, resolver: Resolver | None) -> list[IPAddress]:
    """Resolve ``parsed.host`` once and return its addresses if every one of them is allowed.

    Refusing when *any* address is bad (rather than picking a good one) keeps a name that mixes
    public and private records from being a switch an attacker can flip.
    """
    url = parsed.url
    host_allowed = policy.host_allowed(parsed.host, parsed.port)
    if parsed.ip is not None:
        ip = normalise_address(parsed.ip)
        why = policy.refusal(ip, parsed.port)
        if why:
            shown = str(ip) if ip == parsed.ip else f"{parsed.ip} (IPv4 {ip})"
            raise UnsafeURLError(url, f"{shown} is {why}")
        return [ip]

    if not host_allowed:
        why = _name_refusal(parsed.host)
        if why:
            raise UnsafeURLError(url, why)

    resolve = resolver or default_resolver
    try:
        async with asyncio.timeout(policy.connect_timeout):
            raw = await resolve(parsed.host, parsed.port)
    except TimeoutError:
        raise FetchTimeout(url, f"resolving {parsed.host} took longer than {policy.connect_timeout:g}s") from None
    except (OSError, UnicodeError) as exc:
        raise FetchError(url, f"could not resolve {parsed.host}: {exc}") from None

    addresses: list[IPAddress] = []
    for text in raw:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            raise FetchError(url, f"resolver returned a non-address {text!r} for {parsed.host}") from None
        why = policy.refusal(ip, parsed.port, host_allowed=host_allowed)
        if why:
            raise UnsafeURLError(url, f"{parsed.host} resolves to {ip}, {why}")
        ip = normalise_address(ip)
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise FetchError(url, f"could not resolve {parsed.host}: no addresses")
    return addresses


async def check_url(url: str, policy: OutboundPolicy, resolver: Resolver | None = None) -> list[str]:
    """Validate ``url`` and resolve it once; return the vetted IPs.

    Raises UnsafeURLError when refused, FetchError/FetchTimeout when the name does not resolve.
    """
    return [str(ip) for ip in await vet(parse_url(url), policy, resolver)]
