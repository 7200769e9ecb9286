"""The SSRF guard: URL parsing, address classification, the allow-list, and a table of hostile URLs
none of which may ever produce a connection."""

from __future__ import annotations

import ipaddress

import pytest

from safelight.net import (
    FetchError,
    OutboundPolicy,
    UnsafeURLError,
    address_refusal,
    check_url,
    fetch,
    parse_url,
    post_json,
)

# {port} is the tripwire listener (127.0.0.1 and ::1), so that any form reaching loopback would be seen.
HOSTILE = [
    # IPv4 loopback in every spelling inet_aton accepts
    "http://127.0.0.1:{port}/",
    "http://2130706433:{port}/",
    "http://0177.0.0.1:{port}/",
    "http://0x7f.0x0.0x0.0x1:{port}/",
    "http://0x7f000001:{port}/",
    "http://0X7F000001:{port}/",
    "http://017700000001:{port}/",
    "http://127.1:{port}/",
    "http://0x7f.1:{port}/",
    "http://127.000.000.001:{port}/",
    "http://127.0.0.1.:{port}/",
    "http://127.0.0.2:{port}/",
    "HTTP://127.0.0.1:{port}/",
    "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:{port}/",  # full-width digits, folded by IDNA
    # IPv6 loopback, mapped and compatible forms
    "http://[::1]:{port}/",
    "http://[0:0:0:0:0:0:0:1]:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://[::ffff:7f00:1]:{port}/",
    "http://[0:0:0:0:0:ffff:127.0.0.1]:{port}/",
    "http://[::127.0.0.1]:{port}/",
    "http://[::1%25lo]:{port}/",
    # unspecified: Linux routes 0.0.0.0 and :: to this machine
    "http://0.0.0.0:{port}/",
    "http://0:{port}/",
    "http://[::]:{port}/",
    # names that mean this machine
    "http://localhost:{port}/",
    "http://localhost.:{port}/",
    "http://LocalHost:{port}/",
    "http://api.localhost:{port}/",
    # userinfo and delimiter tricks
    "http://evil.com@127.0.0.1:{port}/",
    "http://user:pass@127.0.0.1:{port}/",
    "http://127.0.0.1:{port}#@evil.com/",
    "http://127.0.0.1:{port}%2f@evil.com/",
    "http://127.0.0.1%2f@evil.com:{port}/",
    "http://evil.com\\@127.0.0.1:{port}/",
    "http://127.0.0.1:{port}\\@evil.com/",
    "http://127.0.0.1:{port}\t/",
    "http://%31%32%37.0.0.1:{port}/",
    # schemes other than http(s)
    "file:///etc/passwd",
    "gopher://127.0.0.1:{port}/_GET%20/",
    "ftp://127.0.0.1:{port}/",
    "dict://127.0.0.1:{port}/",
    "ws://127.0.0.1:{port}/",
    "javascript:alert(1)",
    "data:image/png;base64,iVBORw0KGgo=",
    "//127.0.0.1:{port}/",
    "/relative/path.png",
    # broken host or port
    "http://:{port}/",
    "http:///etc/passwd",
    "http://127.0.0.1:0/",
    "http://127.0.0.1:65536/",
    "http://127.0.0.1:99999999/",
    "http://127.0.0.1:+80/",
    "http://127.0.0.1:{port}:{port}/",
    "http://1.2.3.4.5:{port}/",
    "http://256.0.0.1/",
    "http://08.0.0.1/",
    "http://evil.123/",
    "http://[::1:{port}/",
    # cloud metadata, by address and by name
    "http://169.254.169.254/latest/meta-data/",
    "http://0xa9fea9fe/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://METADATA.google.internal./computeMetadata/v1/",
    "http://metadata/computeMetadata/v1/",
    "http://instance-data/latest/",
    "http://100.100.100.200/latest/meta-data/",
    # private, shared, link-local, multicast, reserved
    "http://10.0.0.1/",
    "http://10.255.255.255/",
    "http://172.16.0.1/",
    "http://172.31.255.254/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://169.254.1.1/",
    "http://224.0.0.1/",
    "http://239.255.255.250/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://192.0.2.1/",
    "http://198.18.0.1/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://[ff02::1]/",
    "http://[2001:db8::1]/",
    # IPv4 smuggled inside IPv6 transition prefixes
    "http://[64:ff9b::7f00:1]:{port}/",
    "http://[64:ff9b::a00:1]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2002:7f00:1::]:{port}/",
    "http://[2002:c0a8:101::1]/",
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
    # DNS names whose answers are hostile (see RESOLVES)
    "http://loopback.test:{port}/",
    "http://loopback6.test:{port}/",
    "http://mapped.test:{port}/",
    "http://mixed.test:{port}/",
    "http://mixed6.test:{port}/",
    "http://metadata-alias.test/",
    "http://private.test/",
    "http://nat64.test/",
]

RESOLVES = {
    "loopback.test": ["127.0.0.1"],
    "loopback6.test": ["::1"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "mixed.test": ["93.184.216.34", "127.0.0.1"],  # one good answer does not launder a bad one
    "mixed6.test": ["2606:2800:220:1:248:1893:25c8:1946", "::1"],
    "metadata-alias.test": ["169.254.169.254"],
    "private.test": ["192.168.0.10"],
    "nat64.test": ["64:ff9b::c0a8:1"],
}


def test_table_is_big_enough() -> None:
    assert len(HOSTILE) >= 30
    assert len(set(HOSTILE)) == len(HOSTILE)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("template", HOSTILE)
async def test_hostile_url_is_refused_without_connecting(template: str, tripwire, fake_resolver, clients_made) -> None:
    url = template.replace("{port}", str(tripwire.port))
    fake_resolver.table.update(RESOLVES)
    policy = OutboundPolicy(connect_timeout=1, read_timeout=1)

    with pytest.raises(UnsafeURLError) as info:
        await check_url(url, policy, resolver=fake_resolver)
    assert info.value.url.strip() == url.strip()
    assert info.value.reason and str(info.value) == info.value.reason

    with pytest.raises(UnsafeURLError):
        await fetch(url, policy=policy, max_bytes=1024, resolver=fake_resolver, timeout=2)
    with pytest.raises(UnsafeURLError):
        await post_json(url, b"{}", headers={}, policy=policy, timeout=2, resolver=fake_resolver)

    assert tripwire.accepts == []
    assert clients_made == [], "a client was built for a refused URL"
    # Each call resolves a name at most once; IP literals and refused shapes never reach DNS.
    assert len(fake_resolver.calls) <= 3


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/", "127.0.0.1 is a loopback address"),
        ("http://2130706433/", "127.0.0.1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]/", "::ffff:7f00:1 (IPv4 127.0.0.1) is a loopback address"),
        ("http://169.254.169.254/", "169.254.169.254 is a cloud metadata address"),
        ("http://10.1.2.3/", "10.1.2.3 is a private address"),
        ("http://100.64.0.1/", "100.64.0.1 is a carrier-grade NAT (shared) address"),
        ("http://loopback.test/", "loopback.test resolves to 127.0.0.1, a loopback address"),
        ("http://[64:ff9b::a00:1]/", "64:ff9b::a00:1 is a NAT64 address embedding 10.0.0.1, a private address"),
        ("http://metadata.google.internal/", "cloud metadata endpoint"),
        ("http://localhost./", "it always means this machine"),
        ("ftp://example.com/", "only http and https URLs are allowed, got 'ftp'"),
        ("http://a@example.com/", "user name or password"),
        ("http://example.com:0/", "outside 1..65535"),
    ],
)
async def test_refusal_reasons_are_readable(url: str, reason: str, fake_resolver) -> None:
    fake_resolver.table.update(RESOLVES)
    with pytest.raises(UnsafeURLError) as info:
        await check_url(url, OutboundPolicy(), resolver=fake_resolver)
    assert reason in info.value.reason


async def test_names_refused_by_name_are_never_resolved(fake_resolver) -> None:
    fake_resolver.table.update({"metadata.google.internal": ["8.8.8.8"], "x.localhost": ["8.8.8.8"]})
    for url in ("http://metadata.google.internal/", "http://x.localhost/"):
        with pytest.raises(UnsafeURLError):
            await check_url(url, OutboundPolicy(), resolver=fake_resolver)
    assert fake_resolver.calls == []


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/a.png",
        "https://example.com:8443/a.png?x=1",
        "http://EXAMPLE.com./",
        "http://8.8.8.8/",
        "http://[2606:4700:4700::1111]/",
        "http://[::ffff:8.8.8.8]/",
        "http://[64:ff9b::808:808]/",  # NAT64 of a public address is how v6-only networks reach v4
        "http://bücher.example/",
        "http://1e3.example/",
    ],
)
async def test_public_targets_pass(url: str, fake_resolver) -> None:
    fake_resolver.table.update(
        {
            "example.com": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
            "xn--bcher-kva.example": ["93.184.216.35"],
            "1e3.example": ["93.184.216.36"],
        }
    )
    addresses = await check_url(url, OutboundPolicy(), resolver=fake_resolver)
    assert addresses and all(address_refusal(ipaddress.ip_address(a)) is None for a in addresses)
    assert len(fake_resolver.calls) <= 1


async def test_mapped_address_is_reported_as_ipv4(fake_resolver) -> None:
    assert await check_url("http://[::ffff:8.8.8.8]/", OutboundPolicy()) == ["8.8.8.8"]


def test_parse_url_normalises_host_and_keeps_target() -> None:
    p = parse_url("HTTP://0x7f.1:8080/a/b.png?x=1&y=%20#frag")
    assert (p.scheme, p.host, p.port, p.target) == ("http", "127.0.0.1", 8080, "/a/b.png?x=1&y=%20")
    assert p.host_header == "127.0.0.1:8080"
    p = parse_url("https://Example.COM./")
    assert (p.host, p.port, p.host_header, p.ip) == ("example.com", 443, "example.com", None)
    p = parse_url("http://[::1]:81")
    assert (p.host, p.target, p.host_header) == ("::1", "/", "[::1]:81")
    assert p.url_for(ipaddress.ip_address("::1")) == "http://[::1]:81/"


# -- allow-list ------------------------------------------------------------------------------------
def test_from_string_parses_networks_and_hosts() -> None:
    policy = OutboundPolicy.from_string(" 127.0.0.1/32, ::1/128 ,Minio.Internal.,10.0.0.7,,", max_redirects=1)
    assert policy.allow_networks == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("10.0.0.7/32"),
    )
    assert policy.allow_hosts == frozenset({"minio.internal"})
    assert policy.max_redirects == 1
    assert OutboundPolicy.from_string("") == OutboundPolicy()


@pytest.mark.parametrize("entry", ["300.1.1.1/8", "10.0.0.0/33", "bad host", "a..b", "10.0.0.300", "x/y", "*"])
def test_from_string_names_the_bad_entry(entry: str) -> None:
    with pytest.raises(ValueError, match=repr(entry).replace("*", r"\*")):
        OutboundPolicy.from_string(f"127.0.0.1/32,{entry}")


async def test_allow_networks_unlock_private_targets(fake_resolver) -> None:
    policy = OutboundPolicy.from_string("127.0.0.1/32,::1/128,10.0.0.0/8")
    assert await check_url("http://127.0.0.1:9/", policy) == ["127.0.0.1"]
    assert await check_url("http://2130706433/", policy) == ["127.0.0.1"]
    assert await check_url("http://[::ffff:127.0.0.1]/", policy) == ["127.0.0.1"]
    assert await check_url("http://[::1]/", policy) == ["::1"]
    assert await check_url("http://10.9.8.7/", policy) == ["10.9.8.7"]
    for refused in ("http://127.0.0.2/", "http://192.168.0.1/", "http://localhost/"):
        with pytest.raises(UnsafeURLError):
            await check_url(refused, policy, resolver=fake_resolver)


async def test_allow_hosts_accept_their_resolved_addresses(fake_resolver) -> None:
    fake_resolver.table.update({"minio.internal": ["10.1.1.1", "fd00::5"], "other.internal": ["10.1.1.1"]})
    policy = OutboundPolicy.from_string("minio.internal")
    assert await check_url("http://MINIO.internal./x", policy, resolver=fake_resolver) == ["10.1.1.1", "fd00::5"]
    with pytest.raises(UnsafeURLError):
        await check_url("http://other.internal/x", policy, resolver=fake_resolver)


async def test_allow_listed_localhost_name_is_honoured(fake_resolver) -> None:
    fake_resolver.table["localhost"] = ["127.0.0.1"]
    assert await check_url("http://localhost/", OutboundPolicy.from_string("localhost"), resolver=fake_resolver)


async def test_metadata_needs_an_exact_allow_entry(fake_resolver) -> None:
    fake_resolver.table["svc.internal"] = ["169.254.169.254"]
    broad = OutboundPolicy.from_string("169.254.0.0/16,fd00::/8,svc.internal")
    for url in ("http://169.254.169.254/", "http://[fd00:ec2::254]/", "http://svc.internal/"):
        with pytest.raises(UnsafeURLError, match="metadata"):
            await check_url(url, broad, resolver=fake_resolver)
    assert await check_url("http://169.254.1.1/", broad) == ["169.254.1.1"]
    exact = OutboundPolicy.from_string("169.254.169.254/32,fd00:ec2::254/128")
    assert await check_url("http://169.254.169.254/", exact) == ["169.254.169.254"]
    assert await check_url("http://[fd00:ec2::254]/", exact) == ["fd00:ec2::254"]


async def test_unresolvable_name_is_a_fetch_error_not_unsafe(fake_resolver) -> None:
    with pytest.raises(FetchError, match="could not resolve nowhere.test"):
        await check_url("http://nowhere.test/", OutboundPolicy(), resolver=fake_resolver)
    fake_resolver.table["empty.test"] = []
    with pytest.raises(FetchError, match="no addresses"):
        await check_url("http://empty.test/", OutboundPolicy(), resolver=fake_resolver)


async def test_default_resolver_is_used_when_none_is_given() -> None:
    # Loopback only: the real getaddrinfo path, with the name check switched off by allow_hosts.
    policy = OutboundPolicy(allow_hosts=frozenset({"localhost"}))
    addresses = await check_url("http://localhost:80/", policy)
    assert addresses and all(ipaddress.ip_address(a).is_loopback for a in addresses)


# -- allow-list entries with a port ----------------------------------------------------------------
def test_from_string_reads_ports() -> None:
    policy = OutboundPolicy.from_string("127.0.0.1:9000, [::1]:9000, 10.0.0.0/8:443, Minio.Internal:9000, fd00::/8")
    assert policy.allow_network_ports == (
        (ipaddress.ip_network("127.0.0.1/32"), 9000),
        (ipaddress.ip_network("::1/128"), 9000),
        (ipaddress.ip_network("10.0.0.0/8"), 443),
    )
    assert policy.allow_host_ports == frozenset({("minio.internal", 9000)})
    assert policy.allow_networks == (ipaddress.ip_network("fd00::/8"),)  # unbracketed IPv6: no port
    assert policy.allow_hosts == frozenset()


@pytest.mark.parametrize("entry", ["127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:http", "[::1]x", "[::1", "h:"])
def test_a_bad_port_names_the_entry(entry: str) -> None:
    with pytest.raises(ValueError, match=repr(entry).replace("[", r"\[")):
        OutboundPolicy.from_string(entry)


async def test_an_entry_with_a_port_opens_only_that_port(fake_resolver) -> None:
    fake_resolver.table["minio.internal"] = ["10.1.2.3"]
    policy = OutboundPolicy.from_string("127.0.0.1:9000,[::1]:9000,10.0.0.0/8:443,minio.internal:9000")
    assert await check_url("http://127.0.0.1:9000/", policy) == ["127.0.0.1"]
    assert await check_url("http://[::1]:9000/", policy) == ["::1"]
    assert await check_url("https://10.9.8.7/", policy) == ["10.9.8.7"]
    assert await check_url("http://minio.internal:9000/b", policy, resolver=fake_resolver) == ["10.1.2.3"]
    for url in ("http://127.0.0.1:9001/", "http://127.0.0.1/", "http://[::1]:8000/", "http://10.9.8.7:80/"):
        with pytest.raises(UnsafeURLError, match="loopback|private"):
            await check_url(url, policy)
    with pytest.raises(UnsafeURLError, match="minio.internal resolves to 10.1.2.3, a private address"):
        await check_url("http://minio.internal:8080/", policy, resolver=fake_resolver)


async def test_the_servers_own_address_is_never_a_target(fake_resolver) -> None:
    policy = OutboundPolicy.for_server("127.0.0.0/8,::1/128,localhost", listen_host="0.0.0.0", listen_port=8123,
                                       public_url="http://127.0.0.1:8123")
    for url in ("http://127.0.0.1:8123/api/v1/chat/credit", "http://[::1]:8123/", "http://127.0.0.2:8123/",
                "http://0x7f000001:8123/", "http://[::ffff:127.0.0.1]:8123/"):
        with pytest.raises(UnsafeURLError, match="this Safelight server's own address"):
            await check_url(url, policy)
    fake_resolver.table["localhost"] = ["127.0.0.1"]
    with pytest.raises(UnsafeURLError, match="own address"):
        await check_url("http://localhost:8123/", policy, resolver=fake_resolver)
    assert await check_url("http://127.0.0.1:8124/", policy) == ["127.0.0.1"]  # another service: allowed

    public = OutboundPolicy.for_server("", listen_host="10.0.0.5", listen_port=80, public_url="https://8.8.4.4")
    with pytest.raises(UnsafeURLError, match="own address"):
        await check_url("https://8.8.4.4/files/x", public)
    assert await check_url("https://8.8.8.8/", public) == ["8.8.8.8"]
