"""Outbound HTTP to user-supplied URLs: IP-pinned, redirect-checked, size- and time-limited."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import httpx

from .errors import BadStatus, FetchError, FetchTimeout, ResponseTooLarge
from .policy import IPAddress, OutboundPolicy
from .urls import ParsedURL, Resolver, parse_url, vet

USER_AGENT = "safelight"
CALLBACK_MAX_RESPONSE_BYTES = 64 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Dropped when a redirect leaves the origin, as browsers and httpx do.
_CREDENTIAL_HEADERS = ("authorization", "cookie", "proxy-authorization")
# Set by us from the vetted URL; a caller-supplied value could undo the IP pinning.
_RESERVED_HEADERS = ("host", "content-length", "transfer-encoding", "connection")


@dataclass
class FetchResult:
    url: str  # final URL after redirects, as the user would write it (host name, not our pinned IP)
    status: int
    headers: httpx.Headers
    content: bytes
    elapsed_ms: float
    truncated: bool = False  # only post_json truncates; fetch raises ResponseTooLarge instead


_ssl_context_cache: ssl.SSLContext | None = None


def ssl_context() -> ssl.SSLContext:
    """One verifying context for the process: loading the CA bundle per request costs ~10 ms."""
    global _ssl_context_cache
    if _ssl_context_cache is None:
        _ssl_context_cache = httpx.create_ssl_context()
    return _ssl_context_cache


def make_client(policy: OutboundPolicy) -> httpx.AsyncClient:
    """The only place an outbound client is built. A fresh one per call: no pooled connection can
    outlive the DNS answer it was vetted against."""
    timeout = httpx.Timeout(
        connect=policy.connect_timeout,
        read=policy.read_timeout,
        write=policy.read_timeout,
        pool=policy.connect_timeout,
    )
    return httpx.AsyncClient(
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,  # HTTP(S)_PROXY would send the request somewhere we did not vet
        verify=ssl_context(),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=0),
    )


def _same_origin(a: ParsedURL, b: ParsedURL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


async def _send_pinned(
    client: httpx.AsyncClient,
    parsed: ParsedURL,
    addresses: list[IPAddress],
    method: str,
    headers: httpx.Headers,
    content: bytes | None,
) -> httpx.Response:
    """Send to the vetted addresses in order, moving on only when the connection itself failed."""
    hdrs = httpx.Headers(headers)
    hdrs["Host"] = parsed.host_header
    extensions = {"sni_hostname": parsed.host} if parsed.scheme == "https" else {}
    last_error: httpx.TransportError | None = None
    for ip in addresses:
        request = client.build_request(method, parsed.url_for(ip), headers=hdrs, content=content, extensions=extensions)
        try:
            return await client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            last_error = exc
    assert last_error is not None
    raise last_error


async def _read_body(response: httpx.Response, url: str, max_bytes: int, truncate: bool) -> tuple[bytes, bool]:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes and not truncate:
        raise ResponseTooLarge(url, f"{url} declares {int(declared)} bytes, over the limit of {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            if truncate:
                chunks.append(chunk[: max_bytes - (size - len(chunk))])
                return b"".join(chunks), True
            raise ResponseTooLarge(url, f"{url} sent more than the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks), False


async def _request(
    url: str,
    *,
    policy: OutboundPolicy,
    max_bytes: int,
    method: str,
    headers: Mapping[str, str] | None,
    content: bytes | None,
    resolver: Resolver | None,
    raise_for_status: bool,
    follow_redirects: bool,
    truncate: bool,
) -> FetchResult:
    started = time.perf_counter()
    hdrs = httpx.Headers(headers or {})
    for name in _RESERVED_HEADERS:
        hdrs.pop(name, None)
    hdrs.setdefault("User-Agent", USER_AGENT)
    # Compressed bodies would be inflated before we can count them; images gain nothing from gzip anyway.
    hdrs.setdefault("Accept-Encoding", "identity")

    parsed = parse_url(url)
    # Vet before building a client: a refused URL must not get as far as a socket.
    addresses = await vet(parsed, policy, resolver)
    redirects = 0
    async with make_client(policy) as client:
        while True:
            try:
                response = await _send_pinned(client, parsed, addresses, method, hdrs, content)
            except httpx.TimeoutException as exc:
                raise FetchTimeout(parsed.url, f"{parsed.url} timed out ({type(exc).__name__})") from None
            except httpx.HTTPError as exc:
                raise FetchError(
                    parsed.url, f"request to {parsed.url} failed: {str(exc) or type(exc).__name__}"
                ) from None
            try:
                location = response.headers.get("location")
                if follow_redirects and response.status_code in _REDIRECT_STATUSES and location:
                    if redirects >= policy.max_redirects:
                        raise FetchError(
                            parsed.url, f"too many redirects (more than {policy.max_redirects}) from {url}"
                        )
                    redirects += 1
                    nxt = parse_url(urljoin(parsed.url, location))
                    if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
                        method, content = ("HEAD" if method == "HEAD" else "GET"), None
                        hdrs.pop("content-type", None)
                    if not _same_origin(parsed, nxt):
                        for name in _CREDENTIAL_HEADERS:
                            hdrs.pop(name, None)
                else:
                    if raise_for_status and not 200 <= response.status_code < 300:
                        raise BadStatus(parsed.url, response.status_code)
                    try:
                        body, was_truncated = await _read_body(response, parsed.url, max_bytes, truncate)
                    except httpx.TimeoutException:
                        raise FetchTimeout(parsed.url, f"{parsed.url} stopped sending the body") from None
                    except httpx.HTTPError as exc:
                        raise FetchError(
                            parsed.url, f"reading {parsed.url} failed: {str(exc) or type(exc).__name__}"
                        ) from None
                    return FetchResult(
                        url=parsed.url,
                        status=response.status_code,
                        headers=response.headers,
                        content=body,
                        elapsed_ms=(time.perf_counter() - started) * 1000,
                        truncated=was_truncated,
                    )
            finally:
                await response.aclose()
            # Every hop is resolved and vetted afresh: a redirect is just another user-supplied URL.
            addresses = await vet(nxt, policy, resolver)
            parsed = nxt


async def _with_deadline(coro: Coroutine[Any, Any, FetchResult], url: str, timeout: float | None) -> FetchResult:
    if timeout is None:
        return await coro
    try:
        async with asyncio.timeout(timeout):
            return await coro
    except TimeoutError:
        raise FetchTimeout(url, f"{url} did not complete within {timeout:g}s") from None


async def fetch(
    url: str,
    *,
    policy: OutboundPolicy,
    max_bytes: int,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
    resolver: Resolver | None = None,
    timeout: float | None = None,
    raise_for_status: bool = True,
) -> FetchResult:
    """Request a user-supplied URL safely.

    Every hop is parsed, resolved once and vetted against ``policy``; the connection goes to the
    vetted IP (Host header and TLS SNI carry the name). Redirects are followed up to
    ``policy.max_redirects``. The body is streamed and abandoned once it passes ``max_bytes``.
    ``timeout`` is an overall deadline on top of the policy's connect/read timeouts; pass one,
    since a server that drips a byte per read-timeout would otherwise hold the call open.
    """
    coro = _request(
        url,
        policy=policy,
        max_bytes=max_bytes,
        method=method.upper(),
        headers=headers,
        content=content,
        resolver=resolver,
        raise_for_status=raise_for_status,
        follow_redirects=True,
        truncate=False,
    )
    return await _with_deadline(coro, url, timeout)


async def post_json(
    url: str,
    body: bytes,
    *,
    headers: Mapping[str, str] | None,
    policy: OutboundPolicy,
    timeout: float,
    resolver: Resolver | None = None,
) -> FetchResult:
    """POST a JSON body (callbacks). Any status is returned, 3xx included: a receiver that
    redirects is not followed. The response body is truncated to 64 KiB, never an error."""
    hdrs = httpx.Headers(headers or {})
    hdrs.setdefault("Content-Type", "application/json")
    coro = _request(
        url,
        policy=policy,
        max_bytes=CALLBACK_MAX_RESPONSE_BYTES,
        method="POST",
        headers=hdrs,
        content=body,
        resolver=resolver,
        raise_for_status=False,
        follow_redirects=False,
        truncate=True,
    )
    return await _with_deadline(coro, url, timeout)
