"""kie's response envelope over HTTP: {"code", "msg", "data"}, HTTP 200 with the business code in the body."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from safelight.kie import Code, KieError, dumps
from safelight.kie import envelope as envelope_body
from safelight.validation import error_path


class EnvelopeResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content).encode()


def envelope(data: Any = None, code: int = Code.OK, msg: str | None = None, *, http_status: int = 200,
             headers: dict[str, str] | None = None) -> EnvelopeResponse:
    return EnvelopeResponse(envelope_body(data, code, msg), status_code=http_status, headers=headers)


class BodyError(ValueError):
    """A request body that cannot be read as asked; the message says why."""


# kie's bodies are a few levels deep; anything deeper is refused before it reaches validation.
MAX_JSON_DEPTH = 32
_SURROGATE = re.compile("[\ud800-\udfff]")
LONE_SURROGATE = "request body has a lone UTF-16 surrogate (\\ud800-\\udfff) in a string or key; it is not text"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _problem_in(value: Any) -> str | None:
    """Why a parsed body cannot be stored as UTF-8 JSON (too deep, a lone surrogate), or None."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > MAX_JSON_DEPTH:
                return f"request body is nested more than {MAX_JSON_DEPTH} levels deep"
            for key, child in item.items():
                if _SURROGATE.search(key):
                    return LONE_SURROGATE
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            if depth > MAX_JSON_DEPTH:
                return f"request body is nested more than {MAX_JSON_DEPTH} levels deep"
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str) and _SURROGATE.search(item):
            return LONE_SURROGATE
    return None


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, streamed under a size limit (a declared Content-Length over it is refused first)."""
    too_large = BodyError(f"request body is larger than {max_bytes} bytes")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise too_large
    return bytes(raw)


def parse_json_object(raw: bytes, shape: str) -> dict[str, Any]:
    """A body as a JSON object; strict JSON (no NaN), bounded nesting. Raises BodyError naming the problem."""
    shape = f" {shape}" if shape else ""
    if not raw:
        raise BodyError(f"request body is empty; send a JSON object{shape}")
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BodyError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BodyError("request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BodyError(f"request body must be a JSON object{shape}")
    if problem := _problem_in(body):
        raise BodyError(problem)
    return body


async def read_json_object(request: Request, max_bytes: int, shape: str) -> dict[str, Any]:
    """The request body as a JSON object, streamed under a size limit; 422s name what was expected."""
    try:
        return parse_json_object(await read_body(request, max_bytes), shape)
    except BodyError as exc:
        raise KieError(Code.INVALID, str(exc)) from None


def retry_after_header(seconds: float | None) -> dict[str, str] | None:
    return None if seconds is None else {"Retry-After": str(max(1, math.ceil(seconds)))}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(KieError)
    async def _kie(_request: Request, exc: KieError) -> Response:
        retry_after = exc.retry_after
        if retry_after is None and exc.code == Code.RATE_LIMITED:
            retry_after = 10
        return envelope(None, exc.code, exc.msg, http_status=exc.http_status,
                        headers=retry_after_header(retry_after))

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for err in exc.errors():
            where = error_path([part for part in err["loc"] if part not in ("query", "body")])
            problems.append(f"{where}: {err['msg']}" if where else err["msg"])
        return envelope(None, Code.INVALID, "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> Response:
        # Keeps the exception's headers: a 405 says which methods are allowed (Allow).
        return envelope(None, exc.status_code, str(exc.detail), http_status=exc.status_code,
                        headers=dict(exc.headers) if exc.headers else None)
