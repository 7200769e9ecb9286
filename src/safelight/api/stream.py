"""`GET /api/v1/jobs/stream?taskId=` (extension): a task's changes as server-sent events.

Events: `state` with the record whenever the state changes (the first one at once), `progress`
with `{"progress": n}` as it moves, and a last `done` with the final record; then the stream
ends. A comment line every 15 s keeps proxies from closing an idle stream. The stream is woken by
the task's own changes (task events; LISTEN/NOTIFY across processes on PostgreSQL), so any API
replica can stream a task another replica created and a worker elsewhere runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from sse_starlette.event import ServerSentEvent
from sse_starlette.sse import EventSourceResponse
from starlette.responses import Response

from safelight.kie import TaskState, dumps

from .auth import require_account, runtime_of
from .jobs import owned_task, record_is_null, task_data
from .shapes import NullReply

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

KEEPALIVE_SECONDS = 15


EVENTS_DOC = {
    "description": "Server-sent events: `state` (the record, at once and on every change of state), `progress` "
                   "(`{\"progress\": n}`) and a last `done` (the final record); then the stream ends. An unknown "
                   "task, or a refusal, is answered instead with kie's envelope as JSON.",
    "content": {"text/event-stream": {"schema": {"type": "string"}, "example": (
        'event: state\ndata: {"taskId": "...", "state": "generating", "progress": 0, ...}\n\n'
        'event: progress\ndata: {"progress": 50}\n\n'
        'event: done\ndata: {"taskId": "...", "state": "success", "progress": 100, ...}\n\n')}},
}


@router.get("/stream", summary="A task's state and progress as server-sent events (extension)",
            response_class=EventSourceResponse, responses={200: {"model": NullReply, **EVENTS_DOC}})
async def stream(request: Request, taskId: str = "") -> Response:  # noqa: N803
    account_id = await require_account(request)
    if await owned_task(request, taskId, account_id) is None:
        return record_is_null()
    return EventSourceResponse(events(request, taskId[:64], account_id), ping=KEEPALIVE_SECONDS)


async def events(request: Request, task_id: str, account_id: int) -> AsyncIterator[ServerSentEvent]:
    store = runtime_of(request).store
    last_state: str | None = None
    last_progress: int | None = None
    with store.task_events.subscribe(task_id) as changed:
        while True:
            changed.clear()
            row = await store.tasks.get(task_id, account_id)
            if row is None:  # deleted under us: nothing more will come
                return
            record = await task_data(request, row)
            if row["state"] in TaskState.TERMINAL:
                yield ServerSentEvent(dumps(record), event="done")
                return
            if row["state"] != last_state:
                last_state, last_progress = row["state"], record["progress"]
                yield ServerSentEvent(dumps(record), event="state")
            elif record["progress"] != last_progress:
                last_progress = record["progress"]
                yield ServerSentEvent(dumps({"progress": last_progress}), event="progress")
            await changed.wait()
