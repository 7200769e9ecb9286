"""fetch / post_json / fetch_image against real servers on loopback, with loopback allow-listed."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

import safelight.net.client as net_client
from safelight.net import (
    BadStatus,
    FetchError,
    FetchTimeout,
    ImageError,
    OutboundPolicy,
    ResponseTooLarge,
    UnsafeURLError,
    fetch,
    fetch_image,
    post_json,
)

LOOPBACK = OutboundPolicy.from_string("127.0.0.1/32,::1/128", connect_timeout=2, read_timeout=2)
V4_ONLY = OutboundPolicy.from_string("127.0.0.1/32", connect_timeout=2, read_timeout=2)
MB = 1024 * 1024


async def test_tripwire_positive_control(tripwire, clients_made) -> None:
    # Proves the zero-accept assertions in the SSRF table could fail: an allowed URL is seen.
    with pytest.raises(BadStatus):
        await fetch(tripwire.url("/"), policy=LOOPBACK, max_bytes=100)
    assert len(tripwire.accepts) == 1 and len(clients_made) == 1


# -- images ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "mime"), [("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp")])
async def test_fetch_image_each_type(server, images, kind: str, mime: str) -> None:
    # Served as octet-stream with a misleading extension: the type comes from the bytes.
    server.serve("/img.bin", images[kind], headers={"Content-Type": "application/octet-stream"})
    data, got_mime, img = await fetch_image(server.url("/img.bin"), policy=LOOPBACK, max_bytes=MB, max_pixels=10_000)
    assert (data, got_mime, img.size) == (images[kind], mime, (32, 24))
    req = server.requests[0]
    assert req.method == "GET" and req.headers["host"] == f"127.0.0.1:{server.port}"
    assert "image/webp" in req.headers["accept"] and req.headers["accept-encoding"] == "identity"


async def test_fetch_image_over_ipv6_loopback(server, images) -> None:
    if not server.has_v6:
        pytest.skip("no IPv6 loopback")
    server.serve("/a.png", images["png"])
    _, mime, _ = await fetch_image(server.url("/a.png", host="[::1]"), policy=LOOPBACK, max_bytes=MB, max_pixels=10**6)
    assert mime == "image/png" and server.accepts[0][0] == "::1"


@pytest.mark.parametrize(
    ("kind", "match"),
    [("text", "not a JPEG, PNG or WebP"), ("gif", "GIF images are not supported"), ("truncated", "truncated")],
)
async def test_fetch_image_refuses_non_images(server, images, kind: str, match: str) -> None:
    body = {"text": b"hello, I am not a picture\n", "gif": images["gif"], "truncated": images["png"][:-30]}[kind]
    server.serve("/photo.png", body, headers={"Content-Type": "image/png"})
    with pytest.raises(ImageError, match=match) as info:
        await fetch_image(server.url("/photo.png"), policy=LOOPBACK, max_bytes=MB, max_pixels=10**6)
    assert server.url("/photo.png") in info.value.reason


async def test_fetch_image_pixel_limit(server, images) -> None:
    server.serve("/a.png", images["png"])
    with pytest.raises(ImageError, match="32x24 = 768 pixels, over the limit of 500"):
        await fetch_image(server.url("/a.png"), policy=LOOPBACK, max_bytes=MB, max_pixels=500)


# -- byte limit ---------------------------------------------------------------------------------------
async def test_exact_limit_passes_and_one_more_byte_fails(server) -> None:
    server.serve("/exact", b"x" * 1000)
    result = await fetch(server.url("/exact"), policy=LOOPBACK, max_bytes=1000)
    assert result.content == b"x" * 1000 and result.status == 200 and not result.truncated
    with pytest.raises(ResponseTooLarge, match="declares 1000 bytes"):
        await fetch(server.url("/exact"), policy=LOOPBACK, max_bytes=999)


@pytest.mark.timeout(10)
async def test_declared_content_length_refused_before_reading(server) -> None:
    # Headers promise 50 MB, then nothing comes: only an up-front check can answer before the read timeout.
    async def handler(req, w):
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 52428800\r\n\r\n")
        await w.drain()
        await asyncio.sleep(30)

    server.route("/big", handler)
    start = time.monotonic()
    with pytest.raises(ResponseTooLarge, match="declares 52428800 bytes"):
        await fetch(server.url("/big"), policy=LOOPBACK, max_bytes=10 * MB)
    assert time.monotonic() - start < 1.5


@pytest.mark.timeout(10)
@pytest.mark.parametrize("framing", ["chunked", "one-huge-chunk", "close-delimited"])
async def test_endless_body_aborted_once_over_limit(server, framing: str) -> None:
    sent = 0

    async def handler(req, w):
        nonlocal sent
        head = {
            "chunked": b"Transfer-Encoding: chunked\r\n",
            "one-huge-chunk": b"Transfer-Encoding: chunked\r\n\r\n40000000",  # a single 1 GiB chunk
            "close-delimited": b"Connection: close\r\n",
        }[framing]
        w.write(b"HTTP/1.1 200 OK\r\n" + head + b"\r\n")
        block = b"y" * 16384
        while True:  # until the client goes away
            w.write(b"4000\r\n" + block + b"\r\n" if framing == "chunked" else block)
            sent += len(block)
            await w.drain()
            await asyncio.sleep(0)

    server.route("/endless", handler)
    with pytest.raises(ResponseTooLarge, match="sent more than the limit of 1048576 bytes"):
        await fetch(server.url("/endless"), policy=LOOPBACK, max_bytes=MB)
    await asyncio.sleep(0.05)
    # Aborted promptly: the server got no further than socket buffers beyond the 1 MB limit.
    assert sent < 20 * MB


# -- timeouts -----------------------------------------------------------------------------------------
@pytest.mark.timeout(10)
async def test_hanging_server_hits_read_timeout(server) -> None:
    async def handler(req, w):
        await asyncio.sleep(30)

    server.route("/hang", handler)
    policy = OutboundPolicy.from_string("127.0.0.1/32", read_timeout=0.5)
    start = time.monotonic()
    with pytest.raises(FetchTimeout):
        await fetch(server.url("/hang"), policy=policy, max_bytes=MB)
    assert 0.4 < time.monotonic() - start < 2.0


@pytest.mark.timeout(10)
async def test_body_that_stalls_hits_read_timeout(server) -> None:
    async def handler(req, w):
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await w.drain()
        await asyncio.sleep(30)

    server.route("/stall", handler)
    policy = OutboundPolicy.from_string("127.0.0.1/32", read_timeout=0.5)
    with pytest.raises(FetchTimeout, match="stopped sending"):
        await fetch(server.url("/stall"), policy=policy, max_bytes=MB)


@pytest.mark.timeout(10)
async def test_dripping_server_hits_overall_deadline(server) -> None:
    # Each byte arrives well inside the read timeout; only the overall deadline stops this.
    async def handler(req, w):
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:
            w.write(b"1\r\nz\r\n")
            await w.drain()
            await asyncio.sleep(0.1)

    server.route("/drip", handler)
    start = time.monotonic()
    with pytest.raises(FetchTimeout, match="did not complete within 0.8s"):
        await fetch(server.url("/drip"), policy=LOOPBACK, max_bytes=MB, timeout=0.8)
    assert time.monotonic() - start < 2.0


async def test_connection_refused_is_a_fetch_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the fetch: nothing listens there
    with pytest.raises(FetchError, match="failed") as info:
        await fetch(f"http://127.0.0.1:{port}/", policy=LOOPBACK, max_bytes=MB)
    assert type(info.value) is FetchError


async def test_client_timeouts_come_from_policy() -> None:
    policy = OutboundPolicy(connect_timeout=1.5, read_timeout=7)
    async with net_client.make_client(policy) as client:
        assert client.timeout == net_client.httpx.Timeout(connect=1.5, read=7, write=7, pool=1.5)
        assert client.follow_redirects is False and client.trust_env is False


async def test_environment_proxy_is_ignored(server, tripwire, monkeypatch) -> None:
    proxy = f"http://127.0.0.1:{tripwire.port}"
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    server.serve("/ok", b"direct")
    result = await fetch(server.url("/ok"), policy=LOOPBACK, max_bytes=MB)
    assert result.content == b"direct" and tripwire.accepts == []


# -- status and redirects ----------------------------------------------------------------------------
async def test_bad_status_raised_for_get_unless_disabled(server) -> None:
    server.serve("/missing", b"nope", status=404)
    with pytest.raises(BadStatus) as info:
        await fetch(server.url("/missing"), policy=LOOPBACK, max_bytes=MB)
    assert info.value.status == 404 and "404" in info.value.reason
    result = await fetch(server.url("/missing"), policy=LOOPBACK, max_bytes=MB, raise_for_status=False)
    assert (result.status, result.content) == (404, b"nope")


async def test_redirect_chain_within_limit_is_followed(server) -> None:
    server.redirect("/r3", "/r2", status=301)
    server.redirect("/r2", "r1", status=307)  # relative to the current URL
    server.redirect("/r1", server.url("/final"), status=308)
    server.serve("/final", b"done")
    result = await fetch(server.url("/r3"), policy=LOOPBACK, max_bytes=MB)
    assert (result.content, result.url) == (b"done", server.url("/final"))
    assert [r.target for r in server.requests] == ["/r3", "/r2", "/r1", "/final"]
    assert result.elapsed_ms > 0


async def test_too_many_redirects(server) -> None:
    for i in range(4, 0, -1):
        server.redirect(f"/r{i}", f"/r{i - 1}")
    server.serve("/r0", b"never reached")
    with pytest.raises(FetchError, match="too many redirects"):
        await fetch(server.url("/r4"), policy=LOOPBACK, max_bytes=MB)
    assert [r.target for r in server.requests] == ["/r4", "/r3", "/r2", "/r1"]


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::1]:{port}/final",  # not in V4_ONLY
        "http://localhost:{port}/final",
        "http://0x7f000002:{port}/final",
        "http://rebound.test:{port}/final",
        "file:///etc/passwd",
    ],
)
async def test_redirect_to_refused_target(server, tripwire, fake_resolver, clients_made, target: str) -> None:
    fake_resolver.table["rebound.test"] = ["10.0.0.1"]
    location = target.replace("{port}", str(tripwire.port))
    server.redirect("/go", location)
    with pytest.raises(UnsafeURLError) as info:
        await fetch(server.url("/go"), policy=V4_ONLY, max_bytes=MB, resolver=fake_resolver)
    assert info.value.url == location
    assert len(server.accepts) == 1 and tripwire.accepts == [] and len(clients_made) == 1


async def test_redirect_drops_credentials_across_origins(server, tripwire) -> None:
    tripwire.serve("/landing", b"ok")
    server.redirect("/go", tripwire.url("/landing"))
    await fetch(
        server.url("/go"),
        policy=LOOPBACK,
        max_bytes=MB,
        headers={"Authorization": "Bearer secret", "X-Trace": "1"},
    )
    assert server.requests[0].headers["authorization"] == "Bearer secret"
    assert "authorization" not in tripwire.requests[0].headers
    assert tripwire.requests[0].headers["x-trace"] == "1"


async def test_caller_cannot_override_host_header(server) -> None:
    server.serve("/h", b"ok")
    await fetch(server.url("/h"), policy=LOOPBACK, max_bytes=MB, headers={"Host": "evil.test"})
    assert server.requests[0].headers["host"] == f"127.0.0.1:{server.port}"


# -- DNS pinning -----------------------------------------------------------------------------------------
async def test_dns_rebinding_cannot_switch_the_address(server, fake_resolver, images) -> None:
    fake_resolver.table["rebind.test"] = lambda n: ["127.0.0.1"] if n == 1 else ["10.0.0.1"]
    server.serve("/img", images["png"])
    url = f"http://rebind.test:{server.port}/img"
    _, mime, _ = await fetch_image(url, policy=V4_ONLY, max_bytes=MB, max_pixels=10**6, resolver=fake_resolver)
    assert mime == "image/png"
    assert fake_resolver.calls == ["rebind.test"]
    assert server.accepts[0][0] == "127.0.0.1"
    assert server.requests[0].headers["host"] == f"rebind.test:{server.port}"


async def test_each_redirect_hop_is_resolved_again(server, fake_resolver) -> None:
    fake_resolver.table["rebind.test"] = lambda n: ["127.0.0.1"] if n == 1 else ["10.0.0.1"]
    server.redirect("/a", "/b")
    server.serve("/b", b"should not be fetched")
    with pytest.raises(UnsafeURLError, match="rebind.test resolves to 10.0.0.1, a private address"):
        await fetch(f"http://rebind.test:{server.port}/a", policy=V4_ONLY, max_bytes=MB, resolver=fake_resolver)
    assert fake_resolver.calls == ["rebind.test", "rebind.test"]
    assert [r.target for r in server.requests] == ["/a"]


async def test_falls_back_to_next_vetted_address_when_connect_fails(server, fake_resolver) -> None:
    # The server listens on 127.0.0.1 only (and ::1); 127.0.0.2 refuses the connection.
    fake_resolver.table["multi.test"] = ["127.0.0.2", "127.0.0.1"]
    server.serve("/x", b"second address")
    policy = OutboundPolicy.from_string("127.0.0.0/8")
    result = await fetch(f"http://multi.test:{server.port}/x", policy=policy, max_bytes=MB, resolver=fake_resolver)
    assert result.content == b"second address" and fake_resolver.calls == ["multi.test"]


# -- post_json (callbacks) -------------------------------------------------------------------------------
async def test_post_json_sends_body_and_returns_any_status(server) -> None:
    server.serve("/cb", b'{"error":"boom"}', status=500)
    body = json.dumps({"code": 200, "data": {"taskId": "t1"}}).encode()
    result = await post_json(
        server.url("/cb"), body, headers={"X-Webhook-Signature": "sig"}, policy=LOOPBACK, timeout=5
    )
    assert (result.status, result.content) == (500, b'{"error":"boom"}')
    req = server.requests[0]
    assert (req.method, req.body) == ("POST", body)
    assert req.headers["content-type"] == "application/json"
    assert req.headers["x-webhook-signature"] == "sig"


async def test_post_json_does_not_follow_redirects(server, tripwire) -> None:
    server.redirect("/cb", tripwire.url("/elsewhere"), status=307)
    result = await post_json(server.url("/cb"), b"{}", headers={}, policy=LOOPBACK, timeout=5)
    assert result.status == 307 and result.headers["location"] == tripwire.url("/elsewhere")
    assert tripwire.accepts == []


async def test_post_json_truncates_large_responses(server) -> None:
    server.serve("/cb", b"a" * (300 * 1024))
    result = await post_json(server.url("/cb"), b"{}", headers={}, policy=LOOPBACK, timeout=5)
    assert result.status == 200 and result.truncated and result.content == b"a" * (64 * 1024)


@pytest.mark.timeout(10)
async def test_post_json_hanging_receiver_times_out(server) -> None:
    async def handler(req, w):
        await asyncio.sleep(30)

    server.route("/cb", handler)
    start = time.monotonic()
    with pytest.raises(FetchTimeout):
        await post_json(server.url("/cb"), b"{}", headers={}, policy=LOOPBACK, timeout=0.5)
    assert time.monotonic() - start < 1.5


async def test_fetch_follows_303_with_get(server) -> None:
    server.redirect("/form", "/result", status=303)
    server.serve("/result", b"ok")
    result = await fetch(server.url("/form"), policy=LOOPBACK, max_bytes=MB, method="POST", content=b"data")
    assert result.content == b"ok"
    assert [(r.method, r.body) for r in server.requests] == [("POST", b"data"), ("GET", b"")]


# -- TLS: certificate and SNI checked against the name, while connecting to the pinned IP ------------
async def test_https_verifies_and_sends_sni_for_the_name_not_the_ip(tls_server, fake_resolver, images) -> None:
    fake_resolver.table["safelight.test"] = ["127.0.0.1"]
    tls_server.serve("/a.png", images["png"])
    url = f"https://safelight.test:{tls_server.port}/a.png"
    _, mime, _ = await fetch_image(url, policy=V4_ONLY, max_bytes=MB, max_pixels=10**6, resolver=fake_resolver)
    assert mime == "image/png"
    assert tls_server.seen_sni == ["safelight.test"]
    assert tls_server.accepts[0][0] == "127.0.0.1"
    assert tls_server.requests[0].headers["host"] == f"safelight.test:{tls_server.port}"


async def test_https_certificate_is_verified(tls_server) -> None:
    # The certificate names safelight.test, not 127.0.0.1: verification must fail, not be skipped.
    tls_server.serve("/a.png", b"x")
    with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
        await fetch(tls_server.url("/a.png", scheme="https"), policy=V4_ONLY, max_bytes=MB)
    assert tls_server.requests == []
