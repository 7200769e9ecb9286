"""Which addresses an outbound request may reach.

The default is "public internet only". Operators widen it with ``SAFELIGHT_OUTBOUND_ALLOW``:
CIDRs and host names, each optionally with a port (``127.0.0.1:9000``, ``[::1]:9000``,
``10.0.0.0/8:443``, ``minio.internal:9000``). An entry without a port opens every port of its
addresses. Explicit allow-list entries win over every built-in refusal, with two exceptions:
cloud metadata endpoints are only unlocked by an entry naming exactly that address
(``169.254.169.254/32``), so allowing a whole link-local or ULA range for some appliance does not
also hand out the instance's cloud credentials; and this server's own listening address is never
a target, since its own files are read from storage and nothing else of its own should be
fetched over HTTP.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Refused by name before any DNS lookup: these resolve to something internal wherever they resolve.
METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)

METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task credentials
        "169.254.169.253",  # AWS DNS / time
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS IPv6 IMDS
        "fd00:ec2::23",  # AWS IPv6 DNS
    )
)


def _nets(*pairs: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(n), why) for n, why in pairs)


# Ordered: the first match gives the reason. Not relying on ipaddress.is_private & co alone because
# their tables changed between Python patch releases; `is_global` is only the final backstop.
_V4_REFUSED = _nets(
    ("0.0.0.0/8", "an unspecified ('this network') address"),
    ("10.0.0.0/8", "a private address"),
    ("100.64.0.0/10", "a carrier-grade NAT (shared) address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address"),
    ("172.16.0.0/12", "a private address"),
    ("192.0.0.0/24", "an IETF protocol-assignment address"),
    ("192.0.2.0/24", "a documentation address"),
    ("192.88.99.0/24", "a reserved 6to4 relay address"),
    ("192.168.0.0/16", "a private address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("224.0.0.0/4", "a multicast address"),
    ("255.255.255.255/32", "the broadcast address"),
    ("240.0.0.0/4", "a reserved address"),
)

_V6_REFUSED = _nets(
    ("::/128", "the unspecified address"),
    ("::1/128", "a loopback address"),
    ("::/96", "an IPv4-compatible (deprecated) address"),
    ("64:ff9b:1::/48", "a local-use NAT64 address"),
    ("100::/64", "a discard-only address"),
    ("2001::/32", "a Teredo tunnelling address"),
    ("2001:2::/48", "a benchmarking address"),
    ("2001:10::/28", "an ORCHID address"),
    ("2001:20::/28", "an ORCHIDv2 address"),
    ("2001:db8::/32", "a documentation address"),
    ("3fff::/20", "a documentation address"),
    ("5f00::/16", "a segment-routing address"),
    ("fc00::/7", "a unique-local (private) address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local (deprecated) address"),
    ("ff00::/8", "a multicast address"),
)

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_6TO4 = ipaddress.ip_network("2002::/16")


def normalise_address(ip: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 (``::ffff:a.b.c.d``) is the IPv4 host on a dual-stack socket; treat it as such."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _embedded_v4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    return None


def address_refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast address, or None if it is. Ignores any allow-list."""
    ip = normalise_address(ip)
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv4Address):
        for net, why in _V4_REFUSED:
            if ip in net:
                return why
    else:
        if ip.scope_id:
            return "a scoped (zone-id) address"
        embedded = _embedded_v4(ip)
        if embedded is not None:
            v4, kind = embedded
            inner = address_refusal(v4)
            return f"a {kind} address embedding {v4}, {inner}" if inner else None
        for net, why in _V6_REFUSED:
            if ip in net:
                return why
    if not ip.is_global:
        return "a non-global address"
    return None


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host:port``, ``[v6]:port``, ``cidr:port`` -> (target, port); a bare IPv6 entry has no port."""
    if entry.startswith("["):
        inside, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"SAFELIGHT_OUTBOUND_ALLOW: {entry!r} is not [IPv6]:port")
        return inside, _port_of(entry, rest[1:]) if rest else None
    target, colon, port = entry.rpartition(":")
    if not colon or ":" in target:  # no port, or an unbracketed IPv6 address or network
        return entry, None
    return target, _port_of(entry, port)


def _port_of(entry: str, text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"SAFELIGHT_OUTBOUND_ALLOW: {entry!r} has a port outside 1..65535")
    return int(text)


def _parse_allow_entry(entry: str) -> IPNetwork | str:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        pass
    host = entry.lower()
    if host.endswith("."):
        host = host[:-1]
    labels = host.split(".")
    ok = (
        bool(host)
        and len(host) <= 253
        and all(
            label and len(label) <= 63 and all(c.isascii() and (c.isalnum() or c in "-_") for c in label)
            for label in labels
        )
    )
    # An entry like "10.0.0.300" or "10.0.0.0/40" is a mistyped network, not a host name.
    if not ok or "/" in entry or labels[-1].isdigit():
        raise ValueError(f"SAFELIGHT_OUTBOUND_ALLOW: {entry!r} is neither a CIDR network nor a host name")
    return host


@dataclass(frozen=True)
class OutboundPolicy:
    # Allow-list entries without a port: every port of these networks and hosts.
    allow_networks: tuple[IPNetwork, ...] = ()
    allow_hosts: frozenset[str] = field(default_factory=frozenset)
    # Entries with a port: only that port.
    allow_network_ports: tuple[tuple[IPNetwork, int], ...] = ()
    allow_host_ports: frozenset[tuple[str, int]] = field(default_factory=frozenset)
    # This server's own listening endpoints, refused whatever the allow-list says: exact
    # (address, port) pairs, and ports at which any loopback address reaches this server.
    own_endpoints: frozenset[tuple[IPAddress, int]] = field(default_factory=frozenset)
    own_loopback_ports: frozenset[int] = field(default_factory=frozenset)
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_redirects: int = 3

    @classmethod
    def from_string(cls, spec: str | None, **kw: Any) -> OutboundPolicy:
        """Parse ``SAFELIGHT_OUTBOUND_ALLOW``: comma-separated CIDRs (bare IPs mean /32, /128) and host
        names, each with an optional ``:port`` (IPv6 in brackets: ``[::1]:9000``)."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        network_ports: list[tuple[IPNetwork, int]] = []
        host_ports: set[tuple[str, int]] = set()
        for raw in (spec or "").split(","):
            entry = raw.strip()
            if not entry:
                continue
            target, port = _split_port(entry)
            parsed = _parse_allow_entry(target)
            if port is None:
                if isinstance(parsed, str):
                    hosts.add(parsed)
                else:
                    networks.append(parsed)
            elif isinstance(parsed, str):
                host_ports.add((parsed, port))
            else:
                network_ports.append((parsed, port))
        return cls(allow_networks=tuple(networks), allow_hosts=frozenset(hosts),
                   allow_network_ports=tuple(network_ports), allow_host_ports=frozenset(host_ports), **kw)

    @classmethod
    def for_server(cls, spec: str | None, *, listen_host: str, listen_port: int, public_url: str,
                   **kw: Any) -> OutboundPolicy:
        """The allow-list of a Safelight process, which also refuses the server's own endpoints:
        the address it listens on (any loopback address when it listens on all or on loopback)
        and the address of its public URL when that is an IP literal."""
        policy = cls.from_string(spec, **kw)
        endpoints: set[tuple[IPAddress, int]] = set()
        loopback_ports: set[int] = set()
        try:
            listen_ip = normalise_address(ipaddress.ip_address(listen_host))
        except ValueError:
            listen_ip = None  # a name ("localhost"): loopback is covered below
        if listen_ip is None or listen_ip.is_unspecified or listen_ip.is_loopback:
            loopback_ports.add(listen_port)
        if listen_ip is not None and not listen_ip.is_unspecified:
            endpoints.add((listen_ip, listen_port))
        public = urlsplit(public_url)
        try:
            public_ip = normalise_address(ipaddress.ip_address(public.hostname or ""))
            public_port = public.port or (443 if public.scheme == "https" else 80)
            endpoints.add((public_ip, public_port))
            if public_ip.is_loopback:
                loopback_ports.add(public_port)
        except ValueError:
            pass
        return replace(policy, own_endpoints=frozenset(endpoints), own_loopback_ports=frozenset(loopback_ports))

    def host_allowed(self, host: str, port: int | None = None) -> bool:
        """Whether an allow-list entry names this host (for every port, or for ``port``)."""
        name = host.lower().rstrip(".")
        return name in self.allow_hosts or (port is not None and (name, port) in self.allow_host_ports)

    def network_allows(self, ip: IPAddress, port: int | None = None) -> bool:
        """True if an allow-list network covers ``ip`` (at ``port``; metadata addresses need an exact entry)."""
        ip = normalise_address(ip)
        exact_only = ip in METADATA_ADDRESSES
        candidates = [*self.allow_networks, *(net for net, only in self.allow_network_ports if only == port)]
        for net in candidates:
            if net.version != ip.version or ip not in net:
                continue
            if not exact_only or net.num_addresses == 1:
                return True
        return False

    def is_own_endpoint(self, ip: IPAddress, port: int) -> bool:
        ip = normalise_address(ip)
        return (ip, port) in self.own_endpoints or (ip.is_loopback and port in self.own_loopback_ports)

    def refusal(self, ip: IPAddress, port: int | None = None, *, host_allowed: bool = False) -> str | None:
        """Why this policy refuses ``ip`` (at ``port``), or None. ``host_allowed``: the name is allow-listed."""
        why = address_refusal(ip)
        allowed = (why is None or self.network_allows(ip, port)
                   or (host_allowed and normalise_address(ip) not in METADATA_ADDRESSES))
        if not allowed:
            return why
        if port is not None and self.is_own_endpoint(ip, port):
            return "this Safelight server's own address"
        return None
