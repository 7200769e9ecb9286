"""The API's two ASGI middlewares: bounded request bodies, and a last-resort 500 that keeps the
connection.

- `BodyTimeoutMiddleware`: a client that declares a body and then trickles it (or stops) gets
  HTTP 408 and a closed connection instead of holding a connection forever. uvicorn bounds idle
  keep-alive connections but not the time to read a body, so `receive` is wrapped: the whole body
  must arrive within `total_seconds` of the app's first read, with no gap over `idle_seconds`.
- `UnexpectedErrorMiddleware`: see its docstring.
- `RequestLogMiddleware`: the access log and the request metrics, with the kie body code.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from safelight import metrics
from safelight.kie import Code, dumps, envelope, message

log = logging.getLogger(__name__)


class BodyTimeout(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TrackedSend:
    """`send`, remembering whether the response has started (after that, no other answer fits)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


class BodyTimeoutMiddleware:
    def __init__(self, app: ASGIApp, *, total_seconds: float, idle_seconds: float) -> None:
        self.app = app
        self.total_seconds = total_seconds
        self.idle_seconds = idle_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline: float | None = None
        body_done = False

        async def timed_receive() -> Message:
            nonlocal deadline, body_done
            if body_done:
                return await receive()
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.total_seconds
            wait = min(self.idle_seconds, deadline - now)
            try:
                async with asyncio.timeout(max(wait, 0.0)):
                    message = await receive()
            except TimeoutError:
                reason = (f"the request body did not arrive within {self.total_seconds:g} s"
                          if time.monotonic() >= deadline else
                          f"the request body stalled for more than {self.idle_seconds:g} s")
                raise BodyTimeout(reason) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        tracked = TrackedSend(send)
        try:
            await self.app(scope, timed_receive, tracked)
        except BodyTimeout as exc:
            client = scope.get("client")
            log.info("closing a slow request from %s to %s: %s", client[0] if client else "?", scope["path"],
                     exc.reason)
            if tracked.started:
                return  # nothing more can be said; uvicorn closes the unfinished exchange
            body = dumps(envelope(None, 408, exc.reason)).encode()
            await send({"type": "http.response.start", "status": 408,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})


class UnexpectedErrorMiddleware:
    """Answers an unhandled exception with kie's 500 envelope and keeps the connection usable.

    Starlette's own last-resort handler re-raises after answering (so a server can log it), and
    uvicorn then drops the keep-alive connection; a client's next request on it fails. Here the
    error is logged and answered, and nothing is re-raised."""

    def __init__(self, app: ASGIApp, *, passthrough: tuple[type[BaseException], ...] = ()) -> None:
        self.app = app
        self.passthrough = passthrough

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracked = TrackedSend(send)
        try:
            await self.app(scope, receive, tracked)
        except self.passthrough:
            raise
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if tracked.started:
                raise  # half a response is out: only closing the connection can end it
            body = dumps(envelope(None, Code.SERVER_ERROR, message(Code.SERVER_ERROR))).encode()
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})


_BODY_CODE = re.compile(rb'"code"\s*:\s*(\d{3})')
access_log = logging.getLogger("safelight.access")


class RequestLogMiddleware:
    """One access-log line and the request metrics per HTTP request, with the kie code of the body.

    kie answers business errors with HTTP 200 and the code in the body, so the HTTP status alone
    says "200 OK" for a 402 or a 422. The first body chunk is read for `"code": NNN`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        code: int | None = None

        async def observing_send(message: Message) -> None:
            nonlocal status, code
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and code is None:
                found = _BODY_CODE.search(message.get("body", b"")[:200])
                code = int(found.group(1)) if found else status
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            kie_code = code if code is not None else status
            metrics.API_REQUESTS.labels(route, str(kie_code)).inc()
            metrics.API_REQUEST_SECONDS.labels(route).observe(elapsed)
            client = scope.get("client")
            access_log.info("%s %s %d code=%d %.1f ms", scope["method"], scope["path"], status, kie_code,
                            elapsed * 1000,
                            extra={"method": scope["method"], "path": scope["path"], "route": route, "status": status,
                                   "code": kie_code, "duration_ms": round(elapsed * 1000, 1),
                                   "client": client[0] if client else None})
