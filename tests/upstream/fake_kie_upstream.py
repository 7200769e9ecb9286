"""A small fake kie.ai for the `kie` upstream backend (spec/kie-api.md §1, §4, §7; backends.md §C.4).

It follows the wire contract: `Authorization: Bearer <key>` on the API routes, the
`{"code","msg","data"}` envelope with business errors as HTTP 200, `recordInfo is null` (code 422)
for unknown or not-yet-visible tasks, `param` and `resultJson` as JSON strings, `failCode`/`failMsg`
on failure. Result PNGs are served from the fake itself at `/results/<task>/<n>.png`, without auth.

Scripting:
- `fake.submit_answers` / `fake.poll_answers`: canned `(http_status, body[, headers])` answers,
  consumed first by createTask / recordInfo (a 429 envelope, a 402, an HTTP 500, ...).
- `fake.scripts`: a `Script` per created task, in order (then `fake.default`): null polls, polls
  in `generating` with progress, a failure, malformed or short `resultJson`, expired result URLs.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route


@dataclass
class Script:
    """How one upstream task behaves, poll by poll."""

    null_polls: int = 0  # answer `recordInfo is null` for the first K polls
    generating_polls: int = 1  # then this many polls in `generating` (after one in `waiting`)
    progress: list[int] = field(default_factory=list)  # `progress` on those generating polls, in order
    fail: tuple[Any, str] | None = None  # (failCode, failMsg): end in `fail`; "{task}" in failMsg -> task id
    result_json: Any = None  # replaces the resultJson on success (malformed cases)
    result_as_object: bool = False  # send resultJson as an object rather than a JSON string
    result_count: int | None = None  # how many result URLs (default: num_images of the input)
    seeds: list[int] | None = None  # a "seeds" list in resultJson, as another Safelight sends
    expired: bool = False  # result URLs answer 404


@dataclass
class FakeTask:
    task_id: str
    model: str
    input: dict[str, Any]
    body: dict[str, Any]
    script: Script
    created_ms: int
    polls: int = 0


def png(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class FakeKieUpstream:
    api_key: str
    base_url: str = ""
    default: Script = field(default_factory=Script)
    scripts: deque[Script] = field(default_factory=deque)
    submit_answers: deque[tuple] = field(default_factory=deque)
    poll_answers: deque[tuple] = field(default_factory=deque)
    tasks: dict[str, FakeTask] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    # task id -> the bytes of each result image served
    results: dict[str, list[bytes]] = field(default_factory=dict)

    def calls(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == path]

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/api/v1/jobs/createTask", self.create_task, methods=["POST"]),
            Route("/api/v1/jobs/recordInfo", self.record_info, methods=["GET"]),
            Route("/results/{task_id}/{index:int}.png", self.result, methods=["GET"]),
        ])

    async def _record(self, request: Request) -> None:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        self.requests.append({"path": request.url.path, "method": request.method, "headers": dict(request.headers),
                              "query": dict(request.query_params), "json": body})

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.api_key}"

    @staticmethod
    def _canned(queue: deque[tuple]) -> Response | None:
        if not queue:
            return None
        status, body, *rest = queue.popleft()
        headers = rest[0] if rest else None
        if isinstance(body, dict):
            return JSONResponse(body, status_code=status, headers=headers)
        return PlainTextResponse(body, status_code=status, headers=headers)

    async def create_task(self, request: Request) -> Response:
        await self._record(request)
        if not self._authorized(request):
            return JSONResponse({"code": 401, "msg": "You do not have access permissions"})  # HTTP 200, as kie does
        if (canned := self._canned(self.submit_answers)) is not None:
            return canned
        body = self.requests[-1]["json"]
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return JSONResponse({"code": 422, "msg": "model is required", "data": None})
        task_input = body.get("input")
        if not isinstance(task_input, dict) or not task_input.get("prompt"):
            return JSONResponse({"code": 500, "msg": "This field is required"})
        task_id = uuid.uuid4().hex
        script = self.scripts.popleft() if self.scripts else self.default
        self.tasks[task_id] = FakeTask(task_id, body["model"], task_input, body, script, _ms())
        return JSONResponse({"code": 200, "msg": "success", "data": {"taskId": task_id}})

    async def record_info(self, request: Request) -> Response:
        await self._record(request)
        if not self._authorized(request):
            return JSONResponse({"code": 401, "msg": "You do not have access permissions"})
        if (canned := self._canned(self.poll_answers)) is not None:
            return canned
        task = self.tasks.get(request.query_params.get("taskId", ""))
        if task is None:
            return JSONResponse({"code": 422, "msg": "recordInfo is null", "data": None})
        task.polls += 1
        if task.polls <= task.script.null_polls:
            return JSONResponse({"code": 422, "msg": "recordInfo is null", "data": None})
        return JSONResponse({"code": 200, "msg": "success", "data": self._state(task)})

    def _state(self, task: FakeTask) -> dict[str, Any]:
        script = task.script
        step = task.polls - script.null_polls  # 1, 2, ...
        record: dict[str, Any] = {
            "taskId": task.task_id, "model": task.model, "param": json.dumps(task.body),
            "resultJson": None, "failCode": "", "failMsg": "", "costTime": None, "completeTime": None,
            "createTime": task.created_ms, "updateTime": _ms(),
        }
        if step == 1:
            return {**record, "state": "waiting"}
        if step <= 1 + script.generating_polls:
            record["state"] = "generating"
            index = step - 2
            if index < len(script.progress):
                record["progress"] = script.progress[index]
            return record
        if script.fail is not None:
            code, msg = script.fail
            msg = msg.replace("{task}", task.task_id) if isinstance(msg, str) else msg
            return {**record, "state": "fail", "failCode": code, "failMsg": msg, "costTime": 0,
                    "completeTime": _ms()}
        count = script.result_count if script.result_count is not None else int(task.input.get("num_images") or 1)
        if task.task_id not in self.results:
            self.results[task.task_id] = [png(32 + n, 24, (10 * n, 200, 40)) for n in range(count)]
        urls = [f"{self.base_url}/results/{task.task_id}/{n}.png" for n in range(count)]
        result: dict[str, Any] = {"resultUrls": urls}
        if script.seeds is not None:
            result["seeds"] = script.seeds
        if script.result_json is not None:
            result_json = script.result_json
        else:
            result_json = result if script.result_as_object else json.dumps(result)
        return {**record, "state": "success", "resultJson": result_json, "failCode": None, "failMsg": None,
                "costTime": 1234, "completeTime": _ms(), "creditsConsumed": 4 * count}

    async def result(self, request: Request) -> Response:
        await self._record(request)
        task = self.tasks.get(request.path_params["task_id"])
        images = self.results.get(request.path_params["task_id"], [])
        index = request.path_params["index"]
        if task is None or task.script.expired or index >= len(images):
            return PlainTextResponse("Not Found", status_code=404)
        return Response(images[index], media_type="image/png")


def _ms() -> int:
    return int(time.time() * 1000)
