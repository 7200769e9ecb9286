"""Fixtures for safelight.net: a raw HTTP/1.1 server on loopback, a fake resolver, test images.

The server is hand-written on asyncio streams so tests control every byte: lying Content-Length,
endless chunked bodies, responses that never come.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

import safelight.net.client as net_client


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    local: tuple  # (address, port) the connection arrived on


Handler = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]


def response_head(status: int, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class LoopbackServer:
    """HTTP server on 127.0.0.1 and (when available) ::1, same port. Records every accept."""

    def __init__(self, ssl_context=None) -> None:
        self.routes: dict[str, Handler] = {}
        self.accepts: list[tuple] = []
        self.requests: list[Request] = []
        self.port = 0
        self.has_v6 = False
        self.seen_sni: list[str | None] = []  # filled by the TLS fixture
        self._ssl = ssl_context
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> LoopbackServer:
        for _ in range(20):
            v4 = await asyncio.start_server(self._on_connect, "127.0.0.1", 0, ssl=self._ssl)
            port = v4.sockets[0].getsockname()[1]
            try:
                v6 = await asyncio.start_server(self._on_connect, "::1", port, ssl=self._ssl)
            except OSError as exc:
                v4.close()
                await v4.wait_closed()
                if exc.errno in (97, 99):  # no IPv6 on this machine: v4 only
                    v4 = await asyncio.start_server(self._on_connect, "127.0.0.1", port, ssl=self._ssl)
                    self._servers, self.port = [v4], port
                    return self
                continue  # port taken on ::1, try another
            self._servers, self.port, self.has_v6 = [v4, v6], port, True
            return self
        raise RuntimeError("could not bind the same port on 127.0.0.1 and ::1")

    async def stop(self) -> None:
        for srv in self._servers:
            srv.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for srv in self._servers:
            await srv.wait_closed()

    def url(self, path: str = "/", host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    # -- route helpers ------------------------------------------------------------------------
    def route(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    def serve(self, path: str, body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> None:
        async def handler(req: Request, w: asyncio.StreamWriter) -> None:
            hdrs = {"Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
            w.write(response_head(status, hdrs) + body)
            await w.drain()

        self.route(path, handler)

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.serve(path, b"", status=status, headers={"Location": location})

    # -- plumbing -----------------------------------------------------------------------------
    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        local = writer.get_extra_info("sockname")
        self.accepts.append(local)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers = {}
            for line in header_lines:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            req = Request(method, target, headers, body, local[:2])
            self.requests.append(req)
            handler = self.routes.get(target.split("?")[0])
            if handler is None:
                writer.write(response_head(404, {"Content-Length": "0"}))
            else:
                await handler(req, writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()
            self._tasks.discard(task)


@pytest.fixture
async def server() -> AsyncIterator[LoopbackServer]:
    srv = await LoopbackServer().start()
    yield srv
    await srv.stop()


@pytest.fixture
async def tripwire() -> AsyncIterator[LoopbackServer]:
    """A listener hostile URLs point at; any accept means the guard let a connection through."""
    srv = await LoopbackServer().start()
    yield srv
    await srv.stop()


@dataclass
class FakeResolver:
    """Host -> list of addresses, or a callable for answers that change between calls."""

    table: dict[str, list[str] | Callable[[int], list[str]]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        answer = self.table.get(host)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if callable(answer):
            return answer(self.calls.count(host))
        return list(answer)


@pytest.fixture
def fake_resolver() -> FakeResolver:
    return FakeResolver()


@pytest.fixture
def clients_made(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Records every outbound client built: a refused URL must never get as far as making one."""
    made: list[object] = []
    real = net_client.make_client

    def spy(policy):
        client = real(policy)
        made.append(client)
        return client

    monkeypatch.setattr(net_client, "make_client", spy)
    return made


# -- images --------------------------------------------------------------------------------------
def image_bytes(fmt: str, size: tuple[int, int] = (32, 24), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (200, 30, 90)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def images() -> dict[str, bytes]:
    return {
        "png": image_bytes("PNG"),
        "jpeg": image_bytes("JPEG"),
        "webp": image_bytes("WEBP"),
        "gif": image_bytes("GIF", mode="P"),
        "bmp": image_bytes("BMP"),
    }


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    d = tmp_path_factory.mktemp("tls")

    def run(cmd: str) -> None:
        subprocess.run(["openssl", *cmd.split()], cwd=d, check=True, capture_output=True)

    ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    run(
        f"req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=net-test-CA"
        " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"
    )
    run(f"req {ec} -keyout leaf.key -out leaf.csr -subj /CN=safelight.test")
    (d / "ext.cnf").write_text("subjectAltName=DNS:safelight.test\nbasicConstraints=CA:FALSE\n")
    run("x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 2 -extfile ext.cnf")
    return d


@pytest.fixture
async def tls_server(tls_files, monkeypatch) -> AsyncIterator[LoopbackServer]:
    """HTTPS server for safelight.test signed by a throwaway CA that the client is told to trust."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tls_files / "leaf.pem", tls_files / "leaf.key")
    srv = LoopbackServer(ssl_context=server_ctx)
    server_ctx.sni_callback = lambda sock, name, ctx: srv.seen_sni.append(name)
    client_ctx = ssl.create_default_context(cafile=str(tls_files / "ca.pem"))
    monkeypatch.setattr(net_client, "ssl_context", lambda: client_ctx)
    await srv.start()
    yield srv
    await srv.stop()
