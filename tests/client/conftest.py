"""A fake kie.ai on loopback, with the quirks of the real one (spec/kie-api.md §1, §4, §6, §7):

- every business error is HTTP 200 with the code in the body, and the envelope says `msg`;
- recordInfo answers `{"code":422,"msg":"recordInfo is null","data":null}` for the first polls
  after createTask;
- `param` is a JSON string whose `input` is itself a JSON string (§5.4);
- `failCode`/`failMsg` are null on success, "" while running; `failCode` is a number on failure
  (as observed live);
- results are served from the same server; uploads answer kie's `{"success":true,...}` shape.

Tests steer it through the prompt ("fail", "forever"), `inject()` (canned answers for a path,
consumed first) and attributes such as `null_polls`.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
import zlib
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

API_KEY = "kie-test-key"
MODELS = ("z-image", "flux-2/pro-image-to-image", "google/imagen4-fast", "ideogram/character")


def tiny_png(seed: int = 0) -> bytes:
    """A valid 1x1 PNG whose pixel depends on `seed`, so files can be told apart."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    pixel = bytes([0, seed % 256, 64, 128])
    ihdr = (1).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(pixel)) + chunk(b"IEND", b"")


@dataclass
class FakeTask:
    task_id: str
    model: str
    input: dict[str, Any]
    callback_url: str | None
    created_ms: int
    polls: int = 0
    scenario: str = "ok"


@dataclass
class FakeKie:
    base_url: str = ""
    api_key: str = API_KEY
    null_polls: int = 2
    serve_models: bool = False
    # Where result URLs point (another FakeKie plays a CDN in one test).
    result_base: str | None = None
    tasks: dict[str, FakeTask] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    injected: dict[str, deque] = field(default_factory=lambda: defaultdict(deque))

    png = staticmethod(tiny_png)

    def reset(self) -> None:
        self.null_polls, self.serve_models, self.result_base = 2, False, None
        self.tasks.clear()
        self.requests.clear()
        self.files.clear()
        self.injected.clear()

    def inject(self, path: str, *answers: tuple) -> None:
        """Queue canned answers for `path`: (http_status, body[, headers]); body a dict or text."""
        self.injected[path].extend(answers)

    def calls(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == path]

    # --- the app ---------------------------------------------------------------------------------

    def app(self) -> Starlette:
        routes = [
            Route("/api/v1/jobs/createTask", self.create_task, methods=["POST"]),
            Route("/api/v1/jobs/recordInfo", self.record_info, methods=["GET"]),
            Route("/api/v1/chat/credit", self.credit, methods=["GET"]),
            Route("/api/v1/models", self.models, methods=["GET"]),
            Route("/api/file-stream-upload", self.stream_upload, methods=["POST"]),
            Route("/api/file-url-upload", self.url_upload, methods=["POST"]),
            Route("/files/{name:path}", self.file, methods=["GET"]),
        ]
        return Starlette(routes=routes)

    async def _enter(self, request: Request, auth: bool = True) -> Response | None:
        body = await request.body()
        self.requests.append(
            {
                "path": request.url.path,
                "method": request.method,
                "headers": dict(request.headers),
                "query": dict(request.query_params),
                "body": body,
                "time": time.monotonic(),
            }
        )
        queue = self.injected.get(request.url.path)
        if queue:
            status, payload, *rest = queue.popleft()
            headers = rest[0] if rest else None
            if isinstance(payload, dict):
                return JSONResponse(payload, status_code=status, headers=headers)
            return PlainTextResponse(payload, status_code=status, headers=headers)
        if auth and request.headers.get("authorization") != f"Bearer {API_KEY}":
            # kie: HTTP 200 with the code in the body.
            return JSONResponse({"code": 401, "msg": "You do not have access permissions"})
        return None

    async def create_task(self, request: Request) -> Response:
        if (early := await self._enter(request)) is not None:
            return early
        body = json.loads(await request.body())
        model = body.get("model")
        if model not in MODELS:
            return JSONResponse({"code": 422, "msg": "The page does not exist or is not published", "data": None})
        task_input = body.get("input") or {}
        if not task_input.get("prompt"):
            return JSONResponse({"code": 500, "msg": "This field is required"})
        prompt = task_input["prompt"]
        scenario = "fail" if "fail" in prompt else "forever" if "forever" in prompt else "ok"
        task_id = uuid.uuid4().hex
        self.tasks[task_id] = FakeTask(task_id, model, task_input, body.get("callBackUrl"), _ms(), scenario=scenario)
        return JSONResponse({"code": 200, "msg": "success", "data": {"taskId": task_id}})

    async def record_info(self, request: Request) -> Response:
        if (early := await self._enter(request)) is not None:
            return early
        task = self.tasks.get(request.query_params.get("taskId", ""))
        if task is None:
            return JSONResponse({"code": 422, "msg": "recordInfo is null", "data": None})
        task.polls += 1
        if task.polls <= self.null_polls:
            return JSONResponse({"code": 422, "msg": "recordInfo is null", "data": None})
        return JSONResponse({"code": 200, "msg": "success", "data": self.record(task)})

    def record(self, task: FakeTask) -> dict[str, Any]:
        step = task.polls - self.null_polls  # 1, 2, 3, ...
        states = {
            "ok": ["waiting", "queuing", "generating", "generating", "success"],
            "fail": ["waiting", "generating", "fail"],
            "forever": ["waiting", "generating"],
        }[task.scenario]
        state = states[min(step, len(states)) - 1]
        param = {"model": task.model, "callBackUrl": task.callback_url, "input": json.dumps(task.input)}
        record: dict[str, Any] = {
            "taskId": task.task_id,
            "model": task.model,
            "state": state,
            "param": json.dumps(param),
            "resultJson": "",
            "failCode": "",
            "failMsg": "",
            "costTime": None,
            "completeTime": None,
            "createTime": task.created_ms,
            "updateTime": _ms(),
        }
        if state == "generating":
            record["progress"] = 40 if step < len(states) - 1 else 80
        if state == "success":
            count = int(task.input.get("num_images") or 1)
            base = self.result_base or self.base_url
            urls = [f"{base}/files/{task.task_id}_{n}.png" for n in range(count)]
            record.update(
                resultJson=json.dumps({"resultUrls": urls}),
                failCode=None,
                failMsg=None,
                costTime=1234,
                completeTime=_ms(),
                creditsConsumed=4 * count,
            )
        if state == "fail":
            record.update(failCode=500, failMsg="internal error, please try again later.", resultJson=None,
                          costTime=0, completeTime=_ms())
        return record

    async def credit(self, request: Request) -> Response:
        if (early := await self._enter(request)) is not None:
            return early
        return JSONResponse({"code": 200, "msg": "success", "data": 100})

    async def models(self, request: Request) -> Response:
        if (early := await self._enter(request)) is not None:
            return early
        if not self.serve_models:
            return PlainTextResponse("Not Found", status_code=404)
        data = [
            {
                "id": "z-image",
                "title": "Z-Image (local)",
                "description": "Served by the sandbox",
                "inputSchema": {"type": "object", "properties": {"prompt": {"type": "string"}},
                                "required": ["prompt"]},
                "prices": {"default": 1},
                "priceUnit": "credits per image",
                "enabled": True,
            }
        ]
        return JSONResponse({"code": 200, "msg": "success", "data": data})

    def _uploaded(self, upload_path: str, name: str, content: bytes, mime: str) -> Response:
        path = f"{upload_path}/{name}"
        self.files[path] = content
        return JSONResponse(
            {
                "success": True,
                "code": 200,
                "msg": "File uploaded successfully",
                "data": {
                    "fileName": name,
                    "filePath": path,
                    "downloadUrl": f"{self.base_url}/files/{path}",
                    "fileSize": len(content),
                    "mimeType": mime,
                    "uploadedAt": "2025-01-01T12:00:00.000Z",
                },
            }
        )

    async def stream_upload(self, request: Request) -> Response:
        if (early := await self._enter(request)) is not None:
            return early
        async with request.form() as form:
            upload = form.get("file")
            upload_path = form.get("uploadPath")
            if not upload_path or upload is None or isinstance(upload, str):
                return JSONResponse({"success": False, "code": 400, "msg": "Missing required parameter: uploadPath"})
            content = await upload.read()
            name = str(form.get("fileName") or upload.filename)
        return self._uploaded(str(upload_path), name, content, upload.content_type or "application/octet-stream")

    async def url_upload(self, request: Request) -> Response:
        if (early := await self._enter(request)) is not None:
            return early
        body = json.loads(await request.body())
        if not body.get("uploadPath") or not body.get("fileUrl"):
            return JSONResponse({"success": False, "code": 400, "msg": "Missing required parameter: uploadPath"})
        # A real server would fetch fileUrl; the fake stores a marker so the test can see the call.
        name = body.get("fileName") or body["fileUrl"].rsplit("/", 1)[-1]
        return self._uploaded(body["uploadPath"], name, b"fetched:" + body["fileUrl"].encode(), "image/png")

    async def file(self, request: Request) -> Response:
        await self._enter(request, auth=False)
        name = request.path_params["name"]
        if name in self.files:
            return Response(self.files[name], media_type="image/png")
        if name.endswith(".png") and name.split("_")[0] in self.tasks:
            return Response(tiny_png(int(name.rsplit("_", 1)[1].split(".")[0])), media_type="image/png")
        return PlainTextResponse("Not Found", status_code=404)


def _ms() -> int:
    return int(time.time() * 1000)


class ServerThread:
    """Run an ASGI app with uvicorn in a background thread on a free loopback port."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("fake server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(5)
        self.sock.close()


@pytest.fixture(scope="session")
def _kie_servers() -> Iterator[tuple[FakeKie, FakeKie]]:
    main, cdn = FakeKie(), FakeKie()
    with ServerThread(main.app()) as main_thread, ServerThread(cdn.app()) as cdn_thread:
        main.base_url, cdn.base_url = main_thread.url, cdn_thread.url
        yield main, cdn


@pytest.fixture
def kie(_kie_servers: tuple[FakeKie, FakeKie], monkeypatch: pytest.MonkeyPatch) -> FakeKie:
    """The fake kie.ai, reset; the SDK's environment variables cleared so tests pass settings explicitly."""
    for name in ("SAFELIGHT_API_KEY", "SAFELIGHT_BASE_URL", "SAFELIGHT_UPLOAD_BASE_URL", "KIE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    fake = _kie_servers[0]
    fake.reset()
    return fake


@pytest.fixture
def cdn(_kie_servers: tuple[FakeKie, FakeKie]) -> FakeKie:
    """A second fake server on another port, standing in for a result CDN."""
    fake = _kie_servers[1]
    fake.reset()
    return fake


# Tiny retry and poll settings, so the retry and backoff paths run in milliseconds.
FAST = {"retry_backoff": 0.01, "retry_max_backoff": 0.05, "retry_budget": 5.0}
POLL = {"poll": 0.01, "max_poll": 0.02}


@pytest.fixture
def client_kwargs(kie: FakeKie) -> dict[str, Any]:
    return {"api_key": API_KEY, "base_url": kie.base_url, **FAST}


