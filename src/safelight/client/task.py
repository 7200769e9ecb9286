"""`Task`: one recordInfo record (or callback `data`), parsed leniently.

kie's records vary between doc versions and the live API: `param` and `resultJson` are JSON
strings, `param.input` may itself be a JSON string (spec §5.4), and optional fields come as
`""`, `null` or are absent. Everything here accepts all of those.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from safelight.kie import TaskState


@dataclass
class Task:
    task_id: str
    model: str
    state: str
    param: dict[str, Any] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)
    result_urls: list[str] = field(default_factory=list)
    seeds: list[int] | None = None
    fail_code: str | None = None
    fail_msg: str | None = None
    # Milliseconds in recordInfo; kie's callback docs say seconds. Passed through unchanged.
    cost_time: int | None = None
    create_time: int | None = None
    update_time: int | None = None
    complete_time: int | None = None
    credits_consumed: float | None = None
    progress: int | None = None
    # The parsed `resultJson` and the record as received, for fields this class does not name.
    result: dict[str, Any] = field(default_factory=dict, repr=False)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def done(self) -> bool:
        return self.state in TaskState.TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.state == TaskState.SUCCESS

    @property
    def failed(self) -> bool:
        return self.state == TaskState.FAIL

    @property
    def callback_url(self) -> str | None:
        return _text(self.param.get("callBackUrl"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (without `raw`)."""
        data = asdict(self)
        data.pop("raw", None)
        return data

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Task:
        param = _json_object(data.get("param"))
        task_input = _json_object(param.get("input"))
        result = _json_object(data.get("resultJson"))
        urls = result.get("resultUrls")
        credits = data.get("creditsConsumed")
        if _blank(credits):
            credits = data.get("consumeCredits")
        return cls(
            task_id=_text(data.get("taskId")) or _text(data.get("task_id")) or "",
            model=_text(data.get("model")) or _text(param.get("model")) or "",
            state=(_text(data.get("state")) or "").lower(),
            param=param,
            input=task_input,
            result_urls=[u for u in urls if isinstance(u, str) and u] if isinstance(urls, list) else [],
            seeds=_seeds(result),
            fail_code=_text(data.get("failCode")),
            fail_msg=_text(data.get("failMsg")),
            cost_time=_int(data.get("costTime")),
            create_time=_int(data.get("createTime")),
            update_time=_int(data.get("updateTime")),
            complete_time=_int(data.get("completeTime")),
            credits_consumed=_number(credits),
            progress=_int(data.get("progress")),
            result=result,
            raw=dict(data),
        )


EventKind = Literal["state", "progress", "done"]


@dataclass(frozen=True)
class TaskEvent:
    """One event of `Client.stream()` / `AsyncClient.stream()`.

    - `state`: the task's state changed (the first event tells the state it is in); `data` is the Task.
    - `progress`: only its progress moved; `data` is the percentage (an int).
    - `done`: the task ended (success or fail), always the last event; `data` is the final Task.

    `task` is the task as known after this event, for every kind (after a `progress` event: the
    last Task with that progress).
    """

    kind: EventKind
    data: Task | int
    task: Task

    @property
    def progress(self) -> int | None:
        return self.data if isinstance(self.data, int) else self.task.progress


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(value: Any) -> str | None:
    """A string, or None for null/"" (failCode arrives as "500", 500, "" or null)."""
    if _blank(value):
        return None
    return value if isinstance(value, str) else str(value)


def _number(value: Any) -> float | None:
    if _blank(value) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else number


def _int(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _json_object(value: Any) -> dict[str, Any]:
    """A JSON object given as a dict or as a JSON string; {} for anything else."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip():
        try:
            parsed = json.loads(value)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def _seeds(result: dict[str, Any]) -> list[int] | None:
    seeds = result.get("seeds")
    if isinstance(seeds, list):
        return [s for s in (_int(x) for x in seeds) if s is not None]
    single = _int(result.get("seed"))
    return None if single is None else [single]
