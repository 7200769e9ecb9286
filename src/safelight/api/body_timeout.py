"""Bounded request bodies in time: a client that declares a body and then trickles it (or stops)
gets HTTP 408 and a closed connection instead of holding a connection forever.

uvicorn bounds idle keep-alive connections but not the time to read a body, so this pure ASGI
middleware wraps `receive`: the whole body must arrive within `total_seconds` of the app's first
read, and no gap between chunks may exceed `idle_seconds`.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from safelight.kie import dumps, envelope

log = logging.getLogger(__name__)


class BodyTimeout(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BodyTimeoutMiddleware:
    def __init__(self, app: ASGIApp, *, total_seconds: float, idle_seconds: float) -> None:
        self.app = app
        self.total_seconds = total_seconds
        self.idle_seconds = idle_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_response = False
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

        async def tracking_send(message: Message) -> None:
            nonlocal started_response
            if message["type"] == "http.response.start":
                started_response = True
            await send(message)

        try:
            await self.app(scope, timed_receive, tracking_send)
        except BodyTimeout as exc:
            client = scope.get("client")
            log.info("closing a slow request from %s to %s: %s", client[0] if client else "?", scope["path"],
                     exc.reason)
            if started_response:
                return  # nothing more can be said; uvicorn closes the unfinished exchange
            body = dumps(envelope(None, 408, exc.reason)).encode()
            await send({"type": "http.response.start", "status": 408,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
