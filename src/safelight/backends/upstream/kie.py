"""kie.ai as a pass-through upstream, or any kie-compatible server (another Safelight included).

The client's `input` is forwarded unchanged to `POST /api/v1/jobs/createTask` (spec/backends.md
§C.4), under the public model id or the one `model_map` names; the user's `callBackUrl` is not
forwarded, because we poll `GET /api/v1/jobs/recordInfo` with backoff until the task ends. Result
URLs expire within hours, so the images are downloaded at once and stored as our own copies.

kie answers business errors as HTTP 200 with the code in the `{"code","msg","data"}` envelope
(spec/kie-api.md §7). Envelope codes worth another try (429, 5xx) are retried by ProviderClient's
one retry budget, like HTTP 429/5xx; the tables below map the rest onto failCodes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import Field

from safelight.backends.base import (
    BackendError,
    GeneratedImage,
    Job,
    read_secret,
)
from safelight.catalog import get_model
from safelight.kie import FailCode, TaskState

from .provider import (
    MALFORMED,
    PROVIDER_UNAVAILABLE,
    PollingOptions,
    ProviderBackend,
    ProviderClient,
    Rule,
    StatusTable,
    download_result,
    generated,
)

log = logging.getLogger("safelight.backends.upstream.kie")

CREATE = "/api/v1/jobs/createTask"
RECORD = "/api/v1/jobs/recordInfo"

MODERATION_WORDS = ("nsfw", "sensitive", "moderat", "safety", "policy")
MAX_UPSTREAM_MESSAGE = 300
POLL_BACKOFF = 1.5

TIMED_OUT = "the provider did not finish the image in time; credits refunded"

# Envelope codes worth another try of the same request, within the retry budget.
CREATE_RETRY_CODES = frozenset({429, 500, 502, 503, 504})
# While polling, maintenance (455) and every 5xx are worth another poll too: the task still runs.
RECORD_RETRY_CODES = frozenset({429, 455})

# The operator's account or key is the problem (433: a sub-key over its limit), not the user's task.
OPERATOR = Rule(FailCode.UNAVAILABLE, True, PROVIDER_UNAVAILABLE,
                hint="check the API key, its limits and the account's credit")
UNAVAILABLE = Rule(FailCode.UNAVAILABLE, True, PROVIDER_UNAVAILABLE)
# createTask's envelope code -> what it means for the task.
CREATE_CODES = StatusTable(
    {
        401: OPERATOR, 402: OPERATOR, 403: OPERATOR, 433: OPERATOR,
        400: Rule(FailCode.INPUT, False, "the provider rejected the input: {reason}"),
        422: Rule(FailCode.INPUT, False, "the provider rejected the input: {reason}"),
        501: Rule(FailCode.GENERATION, True, "generation failed at the provider; credits refunded"),
    },
    # 404 (wrong base_url), 429 and 5xx after the retry budget, 455 maintenance, 505 feature disabled.
    default=UNAVAILABLE,
)
# recordInfo's envelope code (other than 200 and "recordInfo is null") -> what it means.
RECORD_CODES = StatusTable({401: OPERATOR, 402: OPERATOR, 403: OPERATOR, 433: OPERATOR},
                           default=Rule(FailCode.GENERATION, True, MALFORMED))
# A failed upstream task's failCode -> what it means for ours.
TASK_FAIL_CODES = StatusTable(
    {
        451: Rule(FailCode.MODERATED, False, "the prompt or image was blocked by the provider's safety filter: "
                                             "{reason}"),
        400: Rule(FailCode.INPUT, False, "the provider rejected the input: {reason}"),
        422: Rule(FailCode.INPUT, False, "the provider rejected the input: {reason}"),
        504: Rule(FailCode.TIMEOUT, True, TIMED_OUT),
        503: UNAVAILABLE,
    },
    default=Rule(FailCode.GENERATION, True, "generation failed at the provider ({reason}); credits refunded",
                 bare="generation failed at the provider; credits refunded"),
)
# A pass-through model's input is validated by the upstream alone: its refusal is passed on as kie
# words it (failCode 422, the upstream's message), at create time or when the upstream task fails.
PASS_THROUGH_REFUSED = Rule(FailCode.UPSTREAM_INPUT, False, "{reason}", bare="the upstream refused the input")
UPSTREAM_INPUT_CODES = frozenset({400, 422})


class KieOptions(PollingOptions):
    """Options of a `[backends.NAME]` table with `type = "kie"`."""

    renamed = {"request_timeout_seconds": "timeout_seconds", "retry_backoff_seconds": "backoff_seconds",
               "poll_max_interval_seconds": "max_poll_interval_seconds"}

    base_url: str = Field("https://api.kie.ai", pattern=r"^https?://",
                          description="kie.ai, or any kie-compatible server such as another Safelight")
    api_key_env: str = Field("KIE_API_KEY", min_length=1,
                             description="environment variable holding the upstream API key")
    model_map: dict[str, str] = Field(default_factory=dict,
                                      description="public model id -> upstream model id; unmapped ids pass as is")
    null_grace_seconds: float = Field(30.0, ge=0,
                                      description="how long 'recordInfo is null' after createTask means 'not yet'")
    timeout_seconds: float = Field(60.0, gt=0, le=3600, description="per HTTP request, result downloads included")
    idempotency_key: bool = Field(False, description=(
        "send an Idempotency-Key with createTask and re-send it when the answer was lost; only for "
        "upstreams that honour the header (another Safelight does, kie.ai documents none)"))


class KieBackend(ProviderBackend[ProviderClient]):
    type_name = "kie"
    models = None  # any public model: the upstream decides what it serves
    Options = KieOptions

    # kie applies `nsfw_checker` itself: the input is forwarded unchanged.

    @property
    def opts(self) -> KieOptions:
        options: KieOptions = self.options
        return options

    async def open_client(self) -> ProviderClient:
        key = read_secret(self.context, self.name, self.opts.api_key_env)
        return ProviderClient(self.name, self.opts.base_url, headers={"Authorization": f"Bearer {key}"},
                              secrets=[key], options=self.opts,
                              idempotency_header="Idempotency-Key" if self.opts.idempotency_key else None)

    def upstream_model(self, model: str) -> str:
        return self.opts.model_map.get(model, model)

    async def generate(self, job: Job) -> list[GeneratedImage]:
        client = self.started()
        if not job.raw_input:
            raise BackendError(FailCode.INTERNAL, "internal error while generating; credits refunded", transient=True,
                               detail=f"backend {self.name}: job {job.task_id} has no raw_input to forward")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.opts.deadline_seconds
        upstream_id = ""
        try:
            async with asyncio.timeout_at(deadline):
                upstream_id = await self._create(job)
                record = await self._wait(job, upstream_id)
                return await self._collect(job, upstream_id, record)
        except TimeoutError:
            raise client.fail(FailCode.TIMEOUT, TIMED_OUT, f"task {job.task_id} (upstream "
                              f"{upstream_id or 'not created'}) passed the {self.opts.deadline_seconds:g} s deadline",
                              transient=True) from None

    # --- createTask ------------------------------------------------------------------------------

    async def _create(self, job: Job) -> str:
        client = self.started()
        # No callBackUrl: the user's callback is ours to send; we poll the upstream.
        body = {"model": self.upstream_model(job.params.model), "input": dict(job.raw_input)}
        response = await client.request("POST", CREATE, json=body,
                                        retry_on=lambda r: self._retryable("createTask", r, CREATE_RETRY_CODES))
        code, msg, data = self._envelope(response, "createTask")
        if code != 200:
            raise self._submit_error(code, msg, pass_through=_passes_through(job))
        upstream_id = data.get("taskId") if isinstance(data, dict) else None
        if not isinstance(upstream_id, str) or not upstream_id:
            raise client.fail(FailCode.GENERATION, MALFORMED, f"createTask succeeded without a taskId: "
                              f"{response.text[:200]!r}", transient=True)
        log.debug("backend %s: task %s is upstream task %s", self.name, job.task_id, upstream_id)
        return upstream_id

    def _submit_error(self, code: int, msg: str, *, pass_through: bool) -> BackendError:
        clean = self.sanitize(msg)
        where = f"createTask answered code {code}: {clean!r}"
        lowered = clean.lower()
        if code in UPSTREAM_INPUT_CODES and pass_through:
            return self.started().fail_by(PASS_THROUGH_REFUSED, where, clean)
        if code in UPSTREAM_INPUT_CODES and ("not published" in lowered or lowered.startswith("model ")):
            # Not in the table: the code is the input's, but the words say the model id itself is refused,
            # so model_map or the upstream's catalog is the problem (the operator's), not the user's input.
            return self.started().fail_by(UNAVAILABLE, f"{where} (check model_map)")
        return self.started().fail_by(CREATE_CODES.rule(code), where, clean)

    # --- recordInfo ------------------------------------------------------------------------------

    async def _wait(self, job: Job, upstream_id: str) -> Mapping[str, Any]:
        client = self.started()
        opts = self.opts
        loop = asyncio.get_running_loop()
        created = loop.time()
        interval = opts.poll_interval_seconds
        progress = -1
        while True:
            await asyncio.sleep(interval)
            interval = min(interval * POLL_BACKOFF, max(opts.max_poll_interval_seconds, opts.poll_interval_seconds))
            response = await client.request("GET", RECORD, params={"taskId": upstream_id},
                                            retry_on=lambda r: self._retryable("recordInfo", r, RECORD_RETRY_CODES,
                                                                               any_5xx=True))
            code, msg, data = self._envelope(response, "recordInfo")
            if code == 200 and isinstance(data, dict):
                state = data.get("state")
                if not isinstance(state, str):
                    raise client.fail(FailCode.GENERATION, MALFORMED, f"recordInfo for upstream {upstream_id} has "
                                      f"state {state!r}", transient=True)
                if state in TaskState.TERMINAL:
                    return data
                if state not in TaskState.UNFINISHED:
                    log.debug("backend %s: upstream %s in unknown state %r", self.name, upstream_id, state[:40])
                value = _percent(data.get("progress"))
                if value is not None and value > progress:
                    progress = value
                    job.report_progress(value)
                continue
            if (code == 422 and "recordinfo is null" in msg.lower()) or (code == 200 and data is None):
                # kie needs a moment before a new task is visible.
                if loop.time() - created < opts.null_grace_seconds:
                    continue
                raise client.fail(FailCode.GENERATION, "the provider lost the task; credits refunded",
                                  f"recordInfo for upstream {upstream_id} still null after "
                                  f"{opts.null_grace_seconds:g} s", transient=True)
            where = f"recordInfo for upstream {upstream_id} answered code {code}: {self.sanitize(msg)!r}"
            raise client.fail_by(RECORD_CODES.rule(code), where)

    # --- results ---------------------------------------------------------------------------------

    async def _collect(self, job: Job, upstream_id: str, record: Mapping[str, Any]) -> list[GeneratedImage]:
        client = self.started()
        if record["state"] == TaskState.FAIL:
            raise self._task_failed(upstream_id, record, pass_through=_passes_through(job))
        raw = record.get("resultJson")
        try:
            result = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            result = None
        urls = result.get("resultUrls") if isinstance(result, dict) else None
        if not isinstance(result, dict) or not isinstance(urls, list) \
                or not all(isinstance(url, str) and url for url in urls):
            raise client.fail(FailCode.GENERATION, MALFORMED, f"upstream {upstream_id} succeeded with resultJson "
                              f"{str(raw)[:200]!r}", transient=True)
        # A pass-through model makes as many images as the upstream decides; a catalog model, what it asked.
        wanted = len(urls) if _passes_through(job) else job.params.num_images
        if len(urls) < wanted or not urls:
            raise client.fail(FailCode.GENERATION, MALFORMED, f"upstream {upstream_id} returned {len(urls)} result "
                              f"URLs, {wanted} requested", transient=True)
        seeds = result.get("seeds")
        seeds = seeds if isinstance(seeds, list) else []
        images = []
        for index, url in enumerate(urls[:wanted]):
            data, mime = await download_result(self.context, self.name, url, timeout=self.opts.timeout_seconds)
            seed = seeds[index] if index < len(seeds) else None
            images.append(generated(data, mime, seed if isinstance(seed, int) and not isinstance(seed, bool) else None))
        return images

    def _task_failed(self, upstream_id: str, record: Mapping[str, Any], *, pass_through: bool) -> BackendError:
        raw_code = record.get("failCode")
        fail_code = "" if raw_code is None else str(raw_code).strip()
        msg = self.sanitize(record.get("failMsg") or "", upstream_id)
        where = f"upstream {upstream_id} failed with failCode {fail_code!r}: {msg!r}"
        if pass_through and fail_code.isdigit() and int(fail_code) in UPSTREAM_INPUT_CODES:
            return self.started().fail_by(PASS_THROUGH_REFUSED, where, msg)
        if any(word in msg.lower() for word in MODERATION_WORDS):
            # Not by code alone: kie reports some moderation blocks as a 500 whose message says so.
            rule = TASK_FAIL_CODES.rule(451)
        else:
            rule = TASK_FAIL_CODES.rule(int(fail_code) if fail_code.isdigit() else 0)
        return self.started().fail_by(rule, where, msg)

    # --- helpers ---------------------------------------------------------------------------------

    def _retryable(self, what: str, response: httpx.Response, codes: frozenset[int], *,
                   any_5xx: bool = False) -> str | None:
        """ProviderClient's `retry_on`: the envelope code of a response worth another try, described."""
        envelope = _parse_envelope(response)
        if envelope is None:
            return None
        code, msg, _data = envelope
        if code in codes or (any_5xx and code >= 500):
            return f"{what} answered code {code} ({self.sanitize(msg)[:100]})"
        return None

    def _envelope(self, response: httpx.Response, what: str) -> tuple[int, str, Any]:
        """(code, msg, data) of kie's envelope; an HTTP error without one is the provider's problem."""
        client = self.started()
        envelope = _parse_envelope(response)
        if envelope is None:
            if response.status_code != 200:
                raise client.fail(FailCode.UNAVAILABLE, PROVIDER_UNAVAILABLE,
                                  f"{what} answered HTTP {response.status_code}: {response.text[:200]!r}",
                                  transient=True)
            raise client.fail(FailCode.GENERATION, MALFORMED, f"{what}: HTTP 200 without a kie envelope: "
                              f"{response.text[:200]!r}", transient=True)
        return envelope

    def sanitize(self, text: Any, upstream_id: str = "") -> str:
        """An upstream message fit for the user: no secrets, no upstream task id, one line, 300 chars."""
        clean = str(text)
        if self.client is not None:
            clean = self.client.redact(clean)
        if upstream_id:
            clean = clean.replace(upstream_id, "<upstream task>")
        clean = "".join(ch for ch in " ".join(clean.split()) if ch.isprintable())
        return clean if len(clean) <= MAX_UPSTREAM_MESSAGE else clean[: MAX_UPSTREAM_MESSAGE - 3] + "..."


def _passes_through(job: Job) -> bool:
    """A model the catalog does not know: the upstream owns its schema and its image count."""
    return get_model(job.params.model) is None


def _parse_envelope(response: httpx.Response) -> tuple[int, str, Any] | None:
    """(code, msg, data) of kie's envelope, or None when the body is not one."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    code = body.get("code")
    if isinstance(code, str) and code.strip().isdigit():
        code = int(code)
    if not isinstance(code, int) or isinstance(code, bool):
        return None
    msg = body.get("msg", body.get("message"))
    return code, msg if isinstance(msg, str) else "", body.get("data")


def _percent(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int | float) and value == value:  # not NaN
        return int(max(0.0, min(100.0, float(value))))
    return None
