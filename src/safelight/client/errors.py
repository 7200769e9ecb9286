"""Typed errors for the kie code space.

kie answers HTTP 200 with the business code in the body, so every error is mapped from the body
`code` first and from the HTTP status when the body carries none. Any error raised once a task
exists carries its `task_id`, so a timeout or a crash in the caller never loses a paid result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError as PydanticValidationError
    from pydantic_core import ErrorDetails

    from .task import Task


class SafelightError(Exception):
    """Base of every SDK error: the kie `code`, the server's `msg`, and the task it concerns."""

    def __init__(
        self,
        code: int | None,
        msg: str,
        task_id: str | None = None,
        *,
        http_status: int | None = None,
        body: Any = None,
    ) -> None:
        self.code = code
        self.msg = msg
        self.task_id = task_id
        self.http_status = http_status
        self.body = body
        super().__init__(msg)

    def __str__(self) -> str:
        parts = [self.msg or self.__class__.__name__]
        if self.code is not None:
            parts.append(f"(code {self.code})")
        if self.task_id:
            parts.append(f"[task {self.task_id}]")
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(code={self.code!r}, msg={self.msg!r}, task_id={self.task_id!r})"


class AuthenticationError(SafelightError):
    """401: the API key is missing, wrong or revoked."""


class InsufficientCreditsError(SafelightError):
    """402: the account cannot pay for this task."""


class NotFoundError(SafelightError):
    """404: the resource does not exist."""


class ValidationError(SafelightError):
    """422 (and 400): the request or its `input` breaks the model's schema."""


class InputValidationError(ValidationError, ValueError):
    """A typed input class (`ZImageInput`, ...) refused its values before anything was sent.

    Raised by the constructor and `model_validate` of the typed inputs: wrong types, values out of
    range, unknown fields. `errors()` lists pydantic's error details; `pydantic_error` is the original
    `pydantic.ValidationError`. It is also a `ValueError`, as pydantic's error is.
    """

    def __init__(self, model: str, pydantic_error: PydanticValidationError, fields: Sequence[str] = ()) -> None:
        details = pydantic_error.errors(include_url=False)
        msg = f"invalid input for {model}: " + "; ".join(_describe(error, fields) for error in details)
        super().__init__(422, msg)
        self.model = model
        self.pydantic_error = pydantic_error
        self._details = details

    def errors(self) -> list[ErrorDetails]:
        """pydantic's error details (`loc`, `msg`, `type`, `input`, ...), one per problem."""
        return list(self._details)


def _describe(error: ErrorDetails, fields: Sequence[str]) -> str:
    path = "input" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])
    if error["type"] == "extra_forbidden":
        known = f" (fields: {', '.join(fields)})" if fields else ""
        return f"{path} is not a field of this model{known}"
    return f"{path}: {error['msg']}"


class NotSupportedError(NotFoundError):
    """The server lacks a Safelight extension (cancel, the task list): kie.ai, or an older Safelight.

    A `NotFoundError` (code 404), as the missing route answers.
    """


class TaskNotFoundError(NotFoundError, ValidationError):
    """recordInfo answered `{"code":422,"msg":"recordInfo is null"}`: no such task (yet).

    kie reports an unknown task as a 422, so this is both a NotFoundError and a ValidationError.
    """


class RateLimitError(SafelightError):
    """429: too many requests. Retried with backoff by default; raised once the budget is spent."""

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class MaintenanceError(SafelightError):
    """455: the service is under maintenance."""


class ServerError(SafelightError):
    """500 (and other 5xx): a server-side error. Retried with backoff by default."""


class GenerationFailedError(SafelightError):
    """501, or a task that ended in state `fail`: carries kie's `failCode` and `failMsg`."""

    def __init__(
        self,
        *args: Any,
        fail_code: str | None = None,
        fail_msg: str | None = None,
        task: Task | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fail_code = fail_code
        self.fail_msg = fail_msg
        self.task = task


class ModelDisabledError(SafelightError):
    """505: the model (or feature) is disabled."""


class APIConnectionError(SafelightError):
    """The server could not be reached, or the connection broke before an answer arrived."""

    # Whether a retry is safe: set when nothing reached the server, or the call only reads.
    retry_safe: bool = False


class WaitTimeoutError(SafelightError, TimeoutError):
    """`wait()` gave up. The task may still finish: its id is in `task_id`, the last poll in `task`."""

    def __init__(self, task_id: str, timeout: float, task: Task | None = None) -> None:
        state = f"; last state {task.state!r}" if task is not None else ""
        super().__init__(None, f"task {task_id} did not finish within {timeout:g} s{state}", task_id)
        self.timeout = timeout
        self.task = task


class SignatureError(SafelightError):
    """A callback whose signature, timestamp or body does not verify."""

    def __init__(self, msg: str) -> None:
        super().__init__(401, msg)


ERRORS_BY_CODE: dict[int, type[SafelightError]] = {
    400: ValidationError,
    401: AuthenticationError,
    402: InsufficientCreditsError,
    404: NotFoundError,
    422: ValidationError,
    429: RateLimitError,
    455: MaintenanceError,
    500: ServerError,
    501: GenerationFailedError,
    502: ServerError,
    503: ServerError,
    504: ServerError,
    505: ModelDisabledError,
}


def error_for_code(
    code: int | None,
    msg: str,
    task_id: str | None = None,
    *,
    http_status: int | None = None,
    body: Any = None,
    retry_after: float | None = None,
) -> SafelightError:
    """The typed error for a kie code (unknown 5xx are ServerError, anything else the base class)."""
    if code == 422 and msg.strip().lower() == "recordinfo is null":
        cls: type[SafelightError] = TaskNotFoundError
    elif code in ERRORS_BY_CODE:
        cls = ERRORS_BY_CODE[code]
    elif code is not None and 500 <= code < 600:
        cls = ServerError
    else:
        cls = SafelightError
    if cls is RateLimitError:
        return RateLimitError(code, msg, task_id, http_status=http_status, body=body, retry_after=retry_after)
    return cls(code, msg, task_id, http_status=http_status, body=body)


__all__ = [
    "ERRORS_BY_CODE",
    "APIConnectionError",
    "AuthenticationError",
    "GenerationFailedError",
    "InputValidationError",
    "InsufficientCreditsError",
    "MaintenanceError",
    "ModelDisabledError",
    "NotFoundError",
    "NotSupportedError",
    "RateLimitError",
    "SafelightError",
    "ServerError",
    "SignatureError",
    "TaskNotFoundError",
    "ValidationError",
    "WaitTimeoutError",
    "error_for_code",
]
