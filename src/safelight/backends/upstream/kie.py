"""kie.ai as a pass-through upstream, or any kie-compatible server (another Safelight included).

The client's `input` is forwarded unchanged to `POST /api/v1/jobs/createTask` (spec/backends.md
§C.4), under the public model id or the one `model_map` names; the user's `callBackUrl` is not
forwarded, because we poll `GET /api/v1/jobs/recordInfo` with backoff until the task ends. Result
URLs expire within hours, so the images are downloaded at once and stored as our own copies.

kie answers business errors as HTTP 200 with the code in the `{"code","msg","data"}` envelope
(spec/kie-api.md §7); real HTTP errors go through ProviderClient's retry budget and status mapping.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from safelight.backends.base import (
    FAIL_GENERATION,
    FAIL_INPUT,
    FAIL_INTERNAL,
    FAIL_MODERATED,
    FAIL_TIMEOUT,
    FAIL_UNAVAILABLE,
    BackendError,
    GeneratedImage,
    Job,
    read_secret,
)

from .common import (
    PROVIDER_UNAVAILABLE,
    ProviderBackend,
    ProviderClient,
    download_result,
    generated,
    retry_after_seconds,
)

log = logging.getLogger("safelight.backends.upstream.kie")

CREATE = "/api/v1/jobs/createTask"
RECORD = "/api/v1/jobs/recordInfo"

RUNNING_STATES = frozenset({"waiting", "queuing", "generating"})
# Envelope codes that mean the operator's account or key is the problem, not the user's task.
OPERATOR_CODES = frozenset({401, 402, 403, 433})
# Envelope codes worth another try of the same request within the retry budget.
RETRY_CODES = frozenset({429, 500, 502, 503, 504})
MODERATION_WORDS = ("nsfw", "sensitive", "moderat", "safety", "policy")
MAX_UPSTREAM_MESSAGE = 300
POLL_BACKOFF = 1.5

MALFORMED = "the provider returned a malformed response; credits refunded"
MODERATED = "the prompt or image was blocked by the provider's safety filter"
REJECTED = "the provider rejected the input"
TIMED_OUT = "the provider did not finish the image in time; credits refunded"


class KieOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str = Field("https://api.kie.ai", pattern=r"^https?://",
                          description="kie.ai, or any kie-compatible server such as another Safelight")
    api_key_env: str = Field("KIE_API_KEY", min_length=1,
                             description="environment variable holding the upstream API key")
    model_map: dict[str, str] = Field(default_factory=dict,
                                      description="public model id -> upstream model id; unmapped ids pass as is")
    poll_interval_seconds: float = Field(1.0, gt=0, description="first wait before polling recordInfo")
    poll_max_interval_seconds: float = Field(10.0, gt=0, description="the poll wait grows x1.5 up to this")
    deadline_seconds: float = Field(600.0, gt=0, description="give up on a task after this long (FAIL_TIMEOUT)")
    null_grace_seconds: float = Field(30.0, ge=0,
                                      description="how long 'recordInfo is null' after createTask means 'not yet'")
    retries: int = Field(3, ge=0, le=10, description="extra attempts for 429/5xx answers and connection errors")
    retry_backoff_seconds: float = Field(1.0, ge=0, description="first wait between those attempts (doubles)")
    request_timeout_seconds: float = Field(60.0, gt=0, description="per HTTP request, result downloads included")


class KieBackend(ProviderBackend):
    kind = "kie"
    models = None  # any public model: the upstream decides what it serves
    Options = KieOptions

    # kie applies `nsfw_checker` itself: the input is forwarded unchanged.

    async def open_client(self) -> ProviderClient:
        opts: KieOptions = self.options
        key = read_secret(self.context, self.name, opts.api_key_env)
        return ProviderClient(self.name, opts.base_url, headers={"Authorization": f"Bearer {key}"},
                              secrets=[key], timeout=opts.request_timeout_seconds, retries=opts.retries,
                              backoff_seconds=opts.retry_backoff_seconds)

    def upstream_model(self, model: str) -> str:
        return self.options.model_map.get(model, model)

    async def generate(self, job: Job) -> list[GeneratedImage]:
        await self.start()
        if not job.raw_input:
            raise BackendError(FAIL_INTERNAL, "internal error while generating; credits refunded", transient=True,
                               detail=f"backend {self.name}: job {job.task_id} has no raw_input to forward")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.deadline_seconds
        upstream_id = ""
        try:
            async with asyncio.timeout_at(deadline):
                upstream_id = await self._create(job)
                record = await self._wait(job, upstream_id)
                return await self._collect(job, upstream_id, record)
        except TimeoutError:
            raise self._fail(FAIL_TIMEOUT, TIMED_OUT, f"task {job.task_id} (upstream {upstream_id or 'not created'}) "
                             f"passed the {self.options.deadline_seconds:g} s deadline", transient=True) from None

    # --- createTask ------------------------------------------------------------------------------

    async def _create(self, job: Job) -> str:
        assert self.client is not None
        # No callBackUrl: the user's callback is ours to send; we poll the upstream.
        body = {"model": self.upstream_model(job.params.model), "input": dict(job.raw_input)}
        attempt = 0
        while True:
            attempt += 1
            response = await self.client.request("POST", CREATE, json=body)
            code, msg, data = self._envelope(response, "createTask")
            if code == 200:
                upstream_id = data.get("taskId") if isinstance(data, dict) else None
                if not isinstance(upstream_id, str) or not upstream_id:
                    raise self._fail(FAIL_GENERATION, MALFORMED, f"createTask succeeded without a taskId: "
                                     f"{response.text[:200]!r}", transient=True)
                log.debug("backend %s: task %s is upstream task %s", self.name, job.task_id, upstream_id)
                return upstream_id
            if code in RETRY_CODES and attempt <= self.options.retries:
                delay = retry_after_seconds(response, self.options.retry_backoff_seconds * 2 ** (attempt - 1))
                log.info("%s", self.client.redact(f"backend {self.name}: createTask answered code {code} "
                                                  f"({msg[:100]}); retrying in {delay:.2f} s"))
                await asyncio.sleep(min(delay, 30.0))
                continue
            raise self._submit_error(code, msg, attempt)

    def _submit_error(self, code: int, msg: str, attempts: int) -> BackendError:
        clean = self.sanitize(msg)
        where = f"createTask answered code {code}: {clean!r}"
        if code in OPERATOR_CODES:
            return self._fail(FAIL_UNAVAILABLE, PROVIDER_UNAVAILABLE,
                              f"{where} (check the API key, its limits and the account's credit)", transient=True)
        if code in (400, 422):
            lowered = clean.lower()
            if "not published" in lowered or lowered.startswith("model "):
                # The model id itself is refused: model_map or the upstream's catalog is the problem.
                return self._fail(FAIL_UNAVAILABLE, PROVIDER_UNAVAILABLE, f"{where} (check model_map)",
                                  transient=True)
            return self._fail(FAIL_INPUT, _join(REJECTED, clean), where, transient=False)
        if code == 501:
            return self._fail(FAIL_GENERATION, "generation failed at the provider; credits refunded", where,
                              transient=True)
        # 404 (wrong base_url), 429 and 5xx after the retry budget, 455 maintenance, 505 feature disabled.
        return self._fail(FAIL_UNAVAILABLE, PROVIDER_UNAVAILABLE, f"{where}; after {attempts} attempt(s)",
                          transient=True)

    # --- recordInfo ------------------------------------------------------------------------------

    async def _wait(self, job: Job, upstream_id: str) -> dict[str, Any]:
        assert self.client is not None
        opts: KieOptions = self.options
        loop = asyncio.get_running_loop()
        created = loop.time()
        interval = opts.poll_interval_seconds
        errors = 0
        progress = -1
        while True:
            await asyncio.sleep(interval)
            interval = min(interval * POLL_BACKOFF, max(opts.poll_max_interval_seconds, opts.poll_interval_seconds))
            response = await self.client.request("GET", RECORD, params={"taskId": upstream_id})
            code, msg, data = self._envelope(response, "recordInfo")
            if code == 200 and isinstance(data, dict):
                errors = 0
                state = data.get("state")
                if state in ("success", "fail"):
                    return data
                if not isinstance(state, str):
                    raise self._fail(FAIL_GENERATION, MALFORMED, f"recordInfo for upstream {upstream_id} has "
                                     f"state {state!r}", transient=True)
                if state not in RUNNING_STATES:
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
                raise self._fail(FAIL_GENERATION, "the provider lost the task; credits refunded",
                                 f"recordInfo for upstream {upstream_id} still null after "
                                 f"{opts.null_grace_seconds:g} s", transient=True)
            where = f"recordInfo for upstream {upstream_id} answered code {code}: {self.sanitize(msg)!r}"
            if code in OPERATOR_CODES:
                raise self._fail(FAIL_UNAVAILABLE, PROVIDER_UNAVAILABLE,
                                 f"{where} (check the API key, its limits and the account's credit)", transient=True)
            if code in (429, 455) or code >= 500:
                errors += 1
                if errors > opts.retries:
                    raise self._fail(FAIL_UNAVAILABLE, PROVIDER_UNAVAILABLE, f"{where}; {errors} times in a row",
                                     transient=True)
                interval = max(interval, min(retry_after_seconds(response, 0.0), opts.poll_max_interval_seconds))
                log.info("%s", self.client.redact(f"backend {self.name}: {where}; polling again"))
                continue
            raise self._fail(FAIL_GENERATION, MALFORMED, where, transient=True)

    # --- results ---------------------------------------------------------------------------------

    async def _collect(self, job: Job, upstream_id: str, record: dict[str, Any]) -> list[GeneratedImage]:
        if record["state"] == "fail":
            raise self._task_failed(upstream_id, record)
        raw = record.get("resultJson")
        try:
            result = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            result = None
        urls = result.get("resultUrls") if isinstance(result, dict) else None
        if not isinstance(urls, list) or not all(isinstance(url, str) and url for url in urls):
            raise self._fail(FAIL_GENERATION, MALFORMED, f"upstream {upstream_id} succeeded with resultJson "
                             f"{str(raw)[:200]!r}", transient=True)
        wanted = job.params.num_images
        if len(urls) < wanted:
            raise self._fail(FAIL_GENERATION, MALFORMED, f"upstream {upstream_id} returned {len(urls)} result URLs, "
                             f"{wanted} requested", transient=True)
        seeds = result.get("seeds")
        seeds = seeds if isinstance(seeds, list) else []
        images = []
        for index, url in enumerate(urls[:wanted]):
            data, mime = await download_result(self.context, self.name, url,
                                               timeout=self.options.request_timeout_seconds)
            seed = seeds[index] if index < len(seeds) else None
            images.append(generated(data, mime, seed if isinstance(seed, int) and not isinstance(seed, bool) else None))
        return images

    def _task_failed(self, upstream_id: str, record: dict[str, Any]) -> BackendError:
        raw_code = record.get("failCode")
        fail_code = "" if raw_code is None else str(raw_code).strip()
        msg = self.sanitize(record.get("failMsg") or "", upstream_id)
        where = f"upstream {upstream_id} failed with failCode {fail_code!r}: {msg!r}"
        lowered = msg.lower()
        if fail_code == FAIL_MODERATED or any(word in lowered for word in MODERATION_WORDS):
            return self._fail(FAIL_MODERATED, _join(MODERATED, msg), where, transient=False)
        if fail_code in ("400", "422"):
            return self._fail(FAIL_INPUT, _join(REJECTED, msg), where, transient=False)
        if fail_code == FAIL_TIMEOUT:
            return self._fail(FAIL_TIMEOUT, TIMED_OUT, where, transient=True)
        if fail_code == FAIL_UNAVAILABLE:
            return self._fail(FAIL_UNAVAILABLE, PROVIDER_UNAVAILABLE, where, transient=True)
        message = f"generation failed at the provider ({msg}); credits refunded" if msg else \
            "generation failed at the provider; credits refunded"
        return self._fail(FAIL_GENERATION, message, where, transient=True)

    # --- helpers ---------------------------------------------------------------------------------

    def _envelope(self, response: httpx.Response, what: str) -> tuple[int, str, Any]:
        """(code, msg, data) of kie's envelope; an HTTP error without one is the provider's problem."""
        assert self.client is not None
        body: Any = None
        try:
            body = response.json()
        except ValueError:
            pass
        code = body.get("code") if isinstance(body, dict) else None
        if isinstance(code, str) and code.strip().isdigit():
            code = int(code)
        if not isinstance(code, int) or isinstance(code, bool):
            if response.status_code != 200:
                raise self._fail(FAIL_UNAVAILABLE, PROVIDER_UNAVAILABLE,
                                 f"{what} answered HTTP {response.status_code}: {response.text[:200]!r}",
                                 transient=True)
            raise self._fail(FAIL_GENERATION, MALFORMED, f"{what}: HTTP 200 without a kie envelope: "
                             f"{response.text[:200]!r}", transient=True)
        msg = body.get("msg", body.get("message"))
        return code, msg if isinstance(msg, str) else "", body.get("data")

    def sanitize(self, text: Any, upstream_id: str = "") -> str:
        """An upstream message fit for the user: no secrets, no upstream task id, one line, 300 chars."""
        clean = str(text)
        if self.client is not None:
            clean = self.client.redact(clean)
        if upstream_id:
            clean = clean.replace(upstream_id, "<upstream task>")
        clean = "".join(ch for ch in " ".join(clean.split()) if ch.isprintable())
        return clean if len(clean) <= MAX_UPSTREAM_MESSAGE else clean[: MAX_UPSTREAM_MESSAGE - 3] + "..."

    def _fail(self, code: str, message: str, detail: str, *, transient: bool) -> BackendError:
        if self.client is not None:
            return self.client.fail(code, message, detail, transient=transient)
        return BackendError(code, message, transient=transient, detail=f"backend {self.name}: {detail}")


def _join(prefix: str, msg: str) -> str:
    return f"{prefix}: {msg}" if msg else prefix


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
