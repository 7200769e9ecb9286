"""One fake kie.ai Market API on loopback, for the SDK tests and for the `kie` upstream backend's tests.

It follows kie's documented wire contract (spec/kie-api.md §1, §4-§7; backends.md §C.4), quirks included:

- the API routes want `Authorization: Bearer <key>`; a wrong key is HTTP 200 with code 401 in the body;
- every answer is the `{"code","msg","data"}` envelope, business errors as HTTP 200 with the code in the body;
- recordInfo answers `{"code":422,"msg":"recordInfo is null","data":null}` for unknown tasks and for the
  first polls after createTask, before the task is visible;
- a record's `param` is a JSON string whose `input` is itself a JSON string (§5.4); `resultJson` is a JSON
  string `{"resultUrls": [...]}`; states go waiting -> queuing -> generating -> success | fail;
- `failCode`/`failMsg` are "" while running, null on success, and on failure `failCode` is a number (as
  observed live) next to a message;
- uploads (`/api/file-stream-upload`, `/api/file-url-upload`) answer `{"success":true,"code":200,"msg":...,
  "data":{"downloadUrl",...}}`; `/api/v1/chat/credit` answers 100; `/api/v1/models` answers 404, as on kie,
  unless `serve_models` is set (then it answers like a Safelight server);
- results and uploads are served from the fake itself under `/files/`, without auth: result `n` of a task
  is `/files/<taskId>_<n>.png` holding `png(n)`.

Steering, from the most specific to the least:
- `inject(path, *answers)`: canned `(http_status, body[, headers])` answers for a path (body a dict for JSON
  or a str for text), consumed first, before the key is even checked: a 429 envelope, an HTTP 500, ...
- `scripts`: one `Script` per created task, taken in order; once they run out, `default` (the kie-like
  sequence: 2 null polls, waiting, queuing, generating 40 %, generating 80 %, success). `null_polls` is a
  shorthand for `default.null_polls`.
- the prompt: one containing "fail" or "forever" puts the task in that scenario (`SCENARIOS`), on top of
  its script; `tasks[id].scenario` can be changed later, and `tasks[id].polls` reset to replay it.
- `published` (models createTask accepts), `required` (per model, input fields whose absence createTask
  answers with code 422), `result_base` (where result URLs point: another fake can play a
  CDN), `serve_models`.
- `stall(path, seconds, ...)`: hold the next answers on a path that long, after doing the work (a stalled
  createTask has created its task: the client's timeout loses an answer the server meant to send).
- `honour_idempotency_key`: createTask answers a repeated `Idempotency-Key` with the task it created for
  it, as a Safelight upstream does (kie.ai documents no such header).
What it saw: `requests` (each with path, method, headers, query, raw `body`, parsed `json`, monotonic `time`)
and `calls(path)`, `tasks` (by task id) and `files` (uploads, by path; tests may add their own).

Serve it in a thread for blocking code (`with FakeKie() as fake:` or `ServerThread(fake.app())`) or in the
test's event loop (`async with FakeKie() as fake:`, through `tests.helpers.serve_app`).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
import threading
import time
import uuid
import zlib
from collections import defaultdict, deque
from dataclasses import dataclass, field, fields, replace
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.helpers import free_port, serve_app

API_KEY = "kie-test-key"
CREATE = "/api/v1/jobs/createTask"
RECORD = "/api/v1/jobs/recordInfo"
MODELS = ("z-image", "flux-2/pro-image-to-image", "google/imagen4-fast", "ideogram/character")
FOREVER = sys.maxsize
NULL_RECORD = {"code": 422, "msg": "recordInfo is null", "data": None}
RESULT_FILE = re.compile(r"(?P<task>[0-9a-f]+)_(?P<index>\d+)\.png")


def png(index: int = 0) -> bytes:
    """Result image `index`: a valid (32 + index) x 24 PNG whose colour depends on `index` too."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    width, height = 32 + index, 24
    row = b"\x00" + bytes([10 * index % 256, 200, 40]) * width  # filter byte, then RGB pixels
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * height))
            + chunk(b"IEND", b""))


@dataclass
class Script:
    """How one task behaves, poll by poll: null polls, one `waiting`, queuing, generating, then the end."""

    null_polls: int = 0  # answer `recordInfo is null` for the first K polls
    queuing_polls: int = 0  # then, after one poll in `waiting`, this many in `queuing`
    generating_polls: int = 1  # then this many in `generating`
    progress: list[int] = field(default_factory=list)  # `progress` on those generating polls, in order
    fail: tuple[Any, Any] | None = None  # (failCode, failMsg): end in `fail`; "{task}" in failMsg -> task id
    result_json: Any = None  # replaces the resultJson on success (malformed cases)
    result_as_object: bool = False  # send resultJson as an object rather than a JSON string
    result_count: int | None = None  # how many result URLs (default: num_images of the input, else 1)
    seeds: list[int] | None = None  # a "seeds" list in resultJson, as another Safelight sends
    expired: bool = False  # result URLs answer 404


def kie_like() -> Script:
    """The default: what a real kie task looks like, without the waiting."""
    return Script(null_polls=2, queuing_polls=1, generating_polls=2, progress=[40, 80])


# What a prompt containing the name does to the task's script.
SCENARIOS: dict[str, dict[str, Any]] = {
    "ok": {},
    "fail": {"queuing_polls": 0, "generating_polls": 1, "fail": (500, "internal error, please try again later.")},
    "forever": {"queuing_polls": 0, "generating_polls": FOREVER},
}


@dataclass
class FakeTask:
    task_id: str
    model: str
    input: dict[str, Any]
    callback_url: str | None
    script: Script
    created_ms: int
    polls: int = 0
    scenario: str = "ok"

    @property
    def plan(self) -> Script:
        """The script with the scenario applied: what the next polls follow."""
        return replace(self.script, **SCENARIOS[self.scenario])

    @property
    def result_count(self) -> int:
        plan = self.plan
        return plan.result_count if plan.result_count is not None else int(self.input.get("num_images") or 1)


@dataclass
class FakeKie:
    api_key: str = API_KEY
    base_url: str = ""
    default: Script = field(default_factory=kie_like)
    scripts: deque[Script] = field(default_factory=deque)
    published: tuple[str, ...] = MODELS
    # model -> input fields createTask requires (kie answers code 422 naming the first one missing).
    required: dict[str, tuple[str, ...]] = field(default_factory=dict)
    serve_models: bool = False
    result_base: str | None = None
    honour_idempotency_key: bool = False
    stalls: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    idempotency_keys: dict[str, str] = field(default_factory=dict)
    tasks: dict[str, FakeTask] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    injected: dict[str, deque[tuple]] = field(default_factory=lambda: defaultdict(deque))

    png = staticmethod(png)

    @property
    def null_polls(self) -> int:
        return self.default.null_polls

    @null_polls.setter
    def null_polls(self, value: int) -> None:
        self.default.null_polls = value

    def reset(self) -> None:
        """Back to a fresh fake's steering and memory; the key and the address stay."""
        fresh = FakeKie()
        for name in (f.name for f in fields(self)):
            if name not in ("api_key", "base_url"):
                setattr(self, name, getattr(fresh, name))

    def inject(self, path: str, *answers: tuple) -> None:
        """Queue canned answers for `path`: (http_status, body[, headers]); body a dict (JSON) or text."""
        self.injected[path].extend(answers)

    def stall(self, path: str, *seconds: float) -> None:
        """Hold the next answers on `path` (one per value) that many seconds, after doing the work."""
        self.stalls[path].extend(seconds)

    async def _stall(self, path: str) -> None:
        queue = self.stalls.get(path)
        if queue:
            await asyncio.sleep(queue.popleft())

    def calls(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == path]

    # --- serving ---------------------------------------------------------------------------------

    def __enter__(self) -> FakeKie:
        """Serve in a background thread (for blocking code under test)."""
        self._thread = ServerThread(self.app()).__enter__()
        self.base_url = self._thread.url
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.__exit__(*exc)

    async def __aenter__(self) -> FakeKie:
        """Serve in the running event loop."""
        port = free_port()
        self._server, self._task = await serve_app(self.app(), port, lifespan="off")
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.should_exit = True
        await self._task

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route(CREATE, self.create_task, methods=["POST"]),
            Route(RECORD, self.record_info, methods=["GET"]),
            Route("/api/v1/chat/credit", self.credit, methods=["GET"]),
            Route("/api/v1/models", self.list_models, methods=["GET"]),
            Route("/api/file-stream-upload", self.stream_upload, methods=["POST"]),
            Route("/api/file-url-upload", self.url_upload, methods=["POST"]),
            Route("/files/{name:path}", self.file, methods=["GET"]),
        ])

    # --- the routes ------------------------------------------------------------------------------

    async def _enter(self, request: Request, auth: bool = True) -> Response | None:
        """Record the request; answer it early with a canned answer or a wrong key's 401."""
        body = await request.body()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        self.requests.append({"path": request.url.path, "method": request.method, "headers": dict(request.headers),
                              "query": dict(request.query_params), "body": body, "json": parsed,
                              "time": time.monotonic()})
        queue = self.injected.get(request.url.path)
        if queue:
            status, payload, *rest = queue.popleft()
            headers = rest[0] if rest else None
            if isinstance(payload, dict):
                return JSONResponse(payload, status_code=status, headers=headers)
            return PlainTextResponse(payload, status_code=status, headers=headers)
        if auth and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return JSONResponse({"code": 401, "msg": "You do not have access permissions"})  # HTTP 200, as kie does
        return None

    async def create_task(self, request: Request) -> Response:
        if (early := await self._enter(request)) is not None:
            return early
        body = self.requests[-1]["json"]
        body = body if isinstance(body, dict) else {}
        model = body.get("model")
        if model not in self.published:
            return JSONResponse({"code": 422, "msg": "The page does not exist or is not published", "data": None})
        task_input = body.get("input")
        missing = [name for name in self.required.get(model, ()) if not isinstance(task_input, dict)
                   or name not in task_input]
        if missing:
            return JSONResponse({"code": 422, "msg": f"input.{missing[0]} is required", "data": None})
        if not isinstance(task_input, dict) or not task_input.get("prompt"):
            return JSONResponse({"code": 500, "msg": "This field is required"})
        prompt = str(task_input["prompt"])
        scenario = "fail" if "fail" in prompt else "forever" if "forever" in prompt else "ok"
        key = request.headers.get("idempotency-key") if self.honour_idempotency_key else None
        if key is not None and key in self.idempotency_keys:
            await self._stall(CREATE)
            return JSONResponse({"code": 200, "msg": "success", "data": {"taskId": self.idempotency_keys[key]}})
        script = self.scripts.popleft() if self.scripts else replace(self.default)
        task = FakeTask(uuid.uuid4().hex, model, task_input, body.get("callBackUrl"), script, _ms(), scenario=scenario)
        self.tasks[task.task_id] = task
        if key is not None:
            self.idempotency_keys[key] = task.task_id
        await self._stall(CREATE)
        return JSONResponse({"code": 200, "msg": "success", "data": {"taskId": task.task_id}})

    async def record_info(self, request: Request) -> Response:
        if (early := await self._enter(request)) is not None:
            return early
        task = self.tasks.get(request.query_params.get("taskId", ""))
        await self._stall(RECORD)
        if task is None:
            return JSONResponse(NULL_RECORD)
        task.polls += 1
        if task.polls <= task.plan.null_polls:
            return JSONResponse(NULL_RECORD)
        return JSONResponse({"code": 200, "msg": "success", "data": self.record(task)})

    def record(self, task: FakeTask) -> dict[str, Any]:
        """The task's record at its current poll."""
        plan = task.plan
        step = task.polls - plan.null_polls  # 1, 2, 3, ...
        param = {"model": task.model, "callBackUrl": task.callback_url, "input": json.dumps(task.input)}
        record: dict[str, Any] = {
            "taskId": task.task_id, "model": task.model, "state": "waiting", "param": json.dumps(param),
            "resultJson": "", "failCode": "", "failMsg": "", "costTime": None, "completeTime": None,
            "createTime": task.created_ms, "updateTime": _ms(),
        }
        if step == 1:
            return record
        if step <= 1 + plan.queuing_polls:
            return {**record, "state": "queuing"}
        if step <= 1 + plan.queuing_polls + plan.generating_polls:
            index = step - 2 - plan.queuing_polls
            if index < len(plan.progress):
                record["progress"] = plan.progress[index]
            return {**record, "state": "generating"}
        if plan.fail is not None:
            code, msg = plan.fail
            msg = msg.replace("{task}", task.task_id) if isinstance(msg, str) else msg
            return {**record, "state": "fail", "failCode": code, "failMsg": msg, "resultJson": None, "costTime": 0,
                    "completeTime": _ms()}
        count = task.result_count
        base = self.result_base or self.base_url
        result: dict[str, Any] = {"resultUrls": [f"{base}/files/{task.task_id}_{n}.png" for n in range(count)]}
        if plan.seeds is not None:
            result["seeds"] = plan.seeds
        if plan.result_json is not None:
            result_json = plan.result_json
        else:
            result_json = result if plan.result_as_object else json.dumps(result)
        return {**record, "state": "success", "resultJson": result_json, "failCode": None, "failMsg": None,
                "costTime": 1234, "completeTime": _ms(), "creditsConsumed": 4 * count}

    async def credit(self, request: Request) -> Response:
        if (early := await self._enter(request)) is not None:
            return early
        return JSONResponse({"code": 200, "msg": "success", "data": 100})

    async def list_models(self, request: Request) -> Response:
        if (early := await self._enter(request)) is not None:
            return early
        if not self.serve_models:
            return PlainTextResponse("Not Found", status_code=404)
        data = [{
            "id": "z-image",
            "title": "Z-Image (local)",
            "description": "Served by the sandbox",
            "inputSchema": {"type": "object", "properties": {"prompt": {"type": "string"}}, "required": ["prompt"]},
            "prices": {"default": 1},
            "priceUnit": "credits per image",
            "enabled": True,
        }]
        return JSONResponse({"code": 200, "msg": "success", "data": data})

    def _uploaded(self, upload_path: str, name: str, content: bytes, mime: str) -> Response:
        path = f"{upload_path}/{name}"
        self.files[path] = content
        return JSONResponse({
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
        })

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
        body = self.requests[-1]["json"]
        if not isinstance(body, dict) or not body.get("uploadPath") or not body.get("fileUrl"):
            return JSONResponse({"success": False, "code": 400, "msg": "Missing required parameter: uploadPath"})
        # A real server would fetch fileUrl; the fake stores a marker so the test can see the call.
        name = body.get("fileName") or body["fileUrl"].rsplit("/", 1)[-1]
        return self._uploaded(body["uploadPath"], name, b"fetched:" + body["fileUrl"].encode(), "image/png")

    async def file(self, request: Request) -> Response:
        if (early := await self._enter(request, auth=False)) is not None:
            return early
        name = request.path_params["name"]
        if name in self.files:
            return Response(self.files[name], media_type="image/png")
        if (match := RESULT_FILE.fullmatch(name)) and (task := self.tasks.get(match["task"])):
            index = int(match["index"])
            if not task.plan.expired and index < task.result_count:
                return Response(png(index), media_type="image/png")
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
                self.__exit__()
                raise RuntimeError("fake server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(5)
        self.sock.close()
