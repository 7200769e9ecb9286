"""What the routes answer, as pydantic models for the OpenAPI document only.

The routes build their own bytes (kie's, exactly); nothing here validates or serializes a reply. A
route names its reply with `responses={200: {"model": ...}}`, and `/docs`, `/redoc` and the SDK
generators read it from there. The request bodies the routes read by hand are in openapi.py.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from safelight.kie import MESSAGES, Code, FailCode, TaskState

DataT = TypeVar("DataT")

_CODES = "; ".join(f"{int(code)} {MESSAGES.get(code, code.name.lower().replace('_', ' '))}" for code in Code)


class Envelope(BaseModel, Generic[DataT]):
    """kie's reply: HTTP 200, with the business code in `code`. On any code but 200, `data` is null and
    `msg` says what to change."""

    code: int = Field(description=f"200 on success, else the refusal: {_CODES}.", examples=[200])
    msg: str = Field(description="`success`, or what was wrong, naming the field and the rule.",
                     examples=["success"])
    data: DataT | None = Field(description="The route's answer; null when `code` is not 200.")


class NullReply(Envelope[None]):
    """A refusal, or an unknown task: `{"code": 422, "msg": "recordInfo is null", "data": null}`."""


# --- jobs ---------------------------------------------------------------------------------------------

class TaskId(BaseModel):
    taskId: str = Field(description="32 lowercase hex digits.", examples=["3f1c0e7a9b2d4c6e8f0a1b2c3d4e5f60"])


class TaskRecord(BaseModel):
    """kie's task record, as recordInfo, the task list, cancel and callbacks carry it. Times are Unix
    milliseconds."""

    taskId: str
    model: str = Field(description="The public model id the task was created with.")
    state: TaskState = Field(description="waiting -> queuing -> generating -> success | fail.")
    param: str = Field(description="The whole createTask request `{model, callBackUrl, input}`, as a JSON string.")
    resultJson: str | None = Field(description='On success, `{"resultUrls": [...], "seeds": [...]}` as a JSON '
                                               "string; the URLs are signed and expire.")
    failCode: str | None = Field(description="On fail: " + ", ".join(f"{code.value} ({code.name.lower()})"
                                                                     for code in FailCode) + "; else empty.")
    failMsg: str | None = Field(description="On fail, why, in words a person can act on; else empty.")
    costTime: int | None = Field(description="Milliseconds from start to end, once ended.")
    completeTime: int | None
    createTime: int
    updateTime: int
    progress: int = Field(ge=0, le=100, description="Percent done (100 on success).")
    creditsConsumed: int = Field(description="Credits charged: the price on success, 0 on fail.")
    queuePosition: int | None = Field(None, description="Extension: tasks ahead of this one, only while it "
                                                        "is waiting.")


class CreateTaskReply(Envelope[TaskId | TaskRecord]):
    """`data` is `{taskId}`; with `Prefer: wait`, the whole record if the task ended within the wait."""


class RecordReply(Envelope[TaskRecord]):
    """The task's record; an unknown task (or another account's) is code 422, msg `recordInfo is null`."""


class TaskPage(BaseModel):
    items: list[TaskRecord] = Field(description="Newest first.")
    nextCursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class TaskListReply(Envelope[TaskPage]):
    """The account's tasks, newest first."""


class CallbackAttempt(BaseModel):
    attempt: int
    time: int = Field(description="Unix milliseconds.")
    statusCode: int | None = Field(description="The receiver's HTTP status; null when no answer came.")
    latencyMs: int | None
    error: str | None


class CallbackDelivery(BaseModel):
    webhookId: str = Field(description="The Standard Webhooks `webhook-id` of every attempt of this delivery.")
    url: str
    status: Literal["pending", "delivered", "failed"] = Field(
        description="`failed`: given up after the retries; redeliver to try again.")
    attempts: int
    nextAttemptTime: int | None = Field(description="While pending: when the next attempt is due.")
    createTime: int
    deliveredTime: int | None
    lastError: str | None
    log: list[CallbackAttempt]


class CallbackLogReply(Envelope[list[CallbackDelivery]]):
    """Every delivery of the task's callback, oldest first, with each attempt."""


class WebhookId(BaseModel):
    webhookId: str | None = Field(description="The new delivery's id.")


class RedeliverReply(Envelope[WebhookId]):
    """One more delivery is queued."""


# --- account, models, download links -------------------------------------------------------------------

class CreditReply(Envelope[int]):
    """`data` is the account's balance in credits."""


class ModelEntry(BaseModel):
    id: str
    title: str
    description: str
    enabled: bool = Field(description="False while the operator has the model turned off (createTask answers 505).")
    prices: dict[str, int] = Field(description="Credits by price tier (`default`, or per resolution/quality).")
    priceUnit: str
    inputSchema: dict[str, Any] = Field(description="The JSON schema of createTask's `input` for this model.")
    sandbox: bool = Field(description="Whether only the sandbox serves it: its images are labelled previews, not "
                                      "generations.")
    passThrough: bool | None = Field(None, description="Present on `*`: ids the catalog lacks are forwarded.")


class ModelsReply(Envelope[list[ModelEntry]]):
    """The models, each with its input schema and prices. Needs no key."""


class DownloadUrlReply(Envelope[str]):
    """`data` is a link valid for 20 minutes."""


# --- uploads ---------------------------------------------------------------------------------------------

class UploadedFile(BaseModel):
    success: bool
    fileName: str
    filePath: str = Field(description="`uploadPath/fileName`.")
    downloadUrl: str = Field(description="A signed link, usable directly as a task's input URL.")
    fileSize: int
    mimeType: str = Field(description="What the bytes are (sniffed), not what the name says.")
    uploadedAt: str = Field(description="ISO 8601, UTC.")


class UploadReply(BaseModel):
    """The upload routes' own reply (kie's file API): `success` first, `data` only on success. The code is
    200, 400 (the msg names the parameter) or 401."""

    success: bool
    code: int
    msg: str
    data: UploadedFile | None = None


# --- the OpenAI Images API --------------------------------------------------------------------------------

class OpenAIImage(BaseModel):
    url: str | None = Field(None, description="With response_format=url: a signed link.")
    b64_json: str | None = Field(None, description="The default: the image, base64.")


class OpenAIImages(BaseModel):
    """OpenAI's images reply; `X-Safelight-Task-Id` names the tasks behind it."""

    created: int = Field(description="Unix seconds.")
    data: list[OpenAIImage]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorReply(BaseModel):
    """OpenAI's error body, with a real HTTP status (400, 401, 404, 429, 500, 503, 504)."""

    error: OpenAIErrorDetail


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str | None = Field(None, description="On an alias: the model it stands for.")


class OpenAIModelList(BaseModel):
    object: Literal["list"]
    data: list[OpenAIModel]


OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIErrorReply, "description": what}
    for status, what in [(400, "Invalid request"), (401, "No or bad API key"), (404, "Unknown model or route"),
                         (429, "Rate limited, or credits insufficient"), (500, "Generation failed"),
                         (503, "Maintenance, or no backend available"),
                         (504, "The wait (SAFELIGHT_OPENAI_WAIT_SECONDS) ended; the tasks run on")]
}
