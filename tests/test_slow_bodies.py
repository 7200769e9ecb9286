"""A body that stalls or trickles gets HTTP 408 and a closed connection (issue 11, finding 4)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from tests.helpers import free_port, start_server


@pytest.fixture
async def slow_server(settings):
    port = free_port()
    own = settings.model_copy(update={"port": port, "public_url": f"http://127.0.0.1:{port}",
                                      "body_timeout_seconds": 2.0, "body_idle_timeout_seconds": 0.5})
    server, task = await start_server(own)
    key = (await server.config.app.state.runtime.store.accounts.create_key("slow", credits=10)).key
    try:
        yield port, key
    finally:
        server.should_exit = True
        await task


async def exchange(port: int, key: str, path: str, chunks: list[bytes], gap: float) -> tuple[bytes, float]:
    """Declare a 500,000-byte body, send `chunks` `gap` seconds apart, then read until the server closes.

    Writing stops once the answer starts to arrive. A connection reset counts as the close: a server
    that closes a socket holding bytes it has not read makes the kernel send RST (uvicorn has no
    lingering close), which can also discard the answer still unsent; `answer` is then empty."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                 "Content-Type: application/json\r\nContent-Length: 500000\r\n\r\n".encode())
    received = bytearray()

    async def read_until_closed() -> None:
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                received.extend(chunk)

    reading = asyncio.create_task(asyncio.wait_for(read_until_closed(), timeout=10))
    try:
        for chunk in chunks:
            if reading.done() or received:
                break
            writer.write(chunk)
            with contextlib.suppress(ConnectionResetError):
                await writer.drain()
            await asyncio.sleep(gap)
        await reading
    finally:
        writer.close()
    return bytes(received), time.monotonic() - started


async def test_a_stalled_body_is_answered_408_and_closed(slow_server):
    port, key = slow_server
    answer, took = await exchange(port, key, "/api/v1/jobs/createTask", [b'{"model":'], 0)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"stalled for more than 0.5 s" in answer
    assert took < 5  # the idle limit, not the 10 s read timeout of this test


async def test_a_trickled_body_is_cut_at_the_total_limit(slow_server):
    port, key = slow_server
    answer, took = await exchange(port, key, "/api/file-base64-upload", [b"{"] + [b" "] * 40, 0.2)
    # Cut at the 2 s limit, long before the trickle's 8 s. The 408 is there unless a byte the client
    # had just sent made the close a reset (see exchange); the timing shows the cut either way.
    assert 1.9 < took < 5, took
    assert answer == b"" or (answer.startswith(b"HTTP/1.1 408 ") and b"did not arrive within 2 s" in answer)


async def test_the_server_keeps_serving_after_cutting_slow_clients(slow_server):
    port, key = slow_server
    await asyncio.gather(*(exchange(port, key, "/api/v1/jobs/createTask", [b"{"], 0) for _ in range(20)))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /api/v1/chat/credit HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")
