"""kie's response envelope: {"code", "msg", "data"}, HTTP 200 with the business code in the body."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger(__name__)

# kie's documented messages, where one exists.
MESSAGES = {
    401: "You do not have access permissions",
    402: "Credits insufficient",
    429: "Rate limit exceeded",
    455: "Service unavailable: the server is in maintenance mode",
    500: "Server Error - An unexpected error occurred while processing the request",
}


class KieError(Exception):
    def __init__(self, code: int, msg: str | None = None, *, http_status: int = 200) -> None:
        super().__init__(msg or MESSAGES.get(code, "error"))
        self.code = code
        self.msg = msg or MESSAGES.get(code, "error")
        self.http_status = http_status


class EnvelopeResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def envelope(data: Any = None, code: int = 200, msg: str = "success", *, http_status: int = 200,
             headers: dict[str, str] | None = None) -> EnvelopeResponse:
    return EnvelopeResponse({"code": code, "msg": msg, "data": data}, status_code=http_status, headers=headers)


async def read_json_object(request: Request, max_bytes: int, shape: str) -> dict[str, Any]:
    """The request body as a JSON object, streamed under a size limit; 422s name what was expected."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise KieError(422, f"request body is larger than {max_bytes} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise KieError(422, f"request body is larger than {max_bytes} bytes")
    if not raw:
        raise KieError(422, f"request body is empty; send a JSON object {shape}")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KieError(422, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise KieError(422, f"request body must be a JSON object {shape}")
    return body


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(KieError)
    async def _kie(_request: Request, exc: KieError) -> Response:
        headers = {"Retry-After": "10"} if exc.code == 429 else None
        return envelope(None, exc.code, exc.msg, http_status=exc.http_status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"] if part not in ("query", "body"))
            problems.append(f"{where}: {err['msg']}" if where else err["msg"])
        return envelope(None, 422, "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> Response:
        return envelope(None, exc.status_code, str(exc.detail), http_status=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return envelope(None, 500, MESSAGES[500], http_status=500)
