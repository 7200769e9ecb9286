"""Google Imagen 4 on Vertex AI (Fast, standard and Ultra), through the google-genai SDK (spec/backends.md
§C.1, §D.4).

`client.aio.models.generate_images` posts to
`{base}/{version}/projects/{project}/locations/{location}/publishers/google/models/{model}:predict`
(or `{base}/{version}/publishers/google/models/{model}:predict` with an express-mode API key) and
answers with the images inline, base64 in the REST body; we hand the bytes straight back.

Credentials, in order: `api_key_env` (a Vertex express-mode API key, sent as `x-goog-api-key`),
`access_token_env` (a static OAuth access token, sent as `Authorization: Bearer`; for short-lived
setups and tests), else Application Default Credentials (a service account via
GOOGLE_APPLICATION_CREDENTIALS, or the metadata server), resolved at start so a missing login
fails the worker start rather than the first task. The SDK refreshes ADC tokens itself.

Google shut every Imagen model down on 2026-08-17, on the Gemini Developer API and on Vertex AI (now
"Agent Platform") alike; its docs now say "Imagen models are shut down. Use Nano Banana"
(ai.google.dev/gemini-api/docs/imagen; firebase.google.com/docs/ai-logic/imagen-models-migration,
which names the replacements: imagen-4.0-fast-generate-001 and imagen-4.0-generate-001 ->
gemini-nano-banana-2.1, imagen-4.0-ultra-generate-001 -> gemini-3-pro-image). This backend stays for
projects Google still serves: a 404 NOT_FOUND fails transiently, so the route moves on, and the log
tells the operator to route the model to `gemini-image` instead.

This module also holds what the `gemini-image` backend shares with it: the client options, the
client construction and `call_google`, which retries an SDK call and maps its errors onto failCodes.
The SDK is imported on first use, so the API process (which validates options) never loads it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import warnings
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx
from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from safelight.backends.base import (
    BackendContext,
    BackendError,
    GeneratedImage,
    Job,
    read_secret,
)
from safelight.backends.upstream.provider import (
    MALFORMED,
    PROVIDER_UNAVAILABLE,
    RETRYABLE_STATUSES,
    ProviderBackend,
    ProviderOptions,
    Rule,
    StatusTable,
    answer_lost,
    generated,
    lost_code,
    redact,
    request_sent,
    track_sending,
)
from safelight.kie import FailCode
from safelight.net import sniff_image_type
from safelight.retrying import TryAgain, retry_after_seconds

if TYPE_CHECKING:
    from google import genai

log = logging.getLogger("safelight.backends.upstream.google")

T = TypeVar("T")

MODERATED = "the provider's safety filter blocked this prompt or its images"
CLOUD_SCOPE = "https://www.googleapis.com/auth/cloud-platform"

UNAVAILABLE = Rule(FailCode.UNAVAILABLE, True, PROVIDER_UNAVAILABLE)
CREDENTIALS = Rule(FailCode.UNAVAILABLE, True, PROVIDER_UNAVAILABLE,
                   hint="check the credentials, that the API is enabled for the project, and billing")
SAFETY_REFUSAL = Rule(FailCode.MODERATED, False, f"{MODERATED}: {{reason}}")
# The HTTP status of an SDK APIError (408, 429 and 5xx are retried first, then UNAVAILABLE).
STATUSES = StatusTable(
    {
        400: Rule(FailCode.INPUT, False, "the provider rejected the request: {reason}"),  # INVALID_ARGUMENT
        401: CREDENTIALS,
        403: CREDENTIALS,
        404: Rule(FailCode.UNAVAILABLE, True, PROVIDER_UNAVAILABLE, hint="the model was not found"),
    },
    default=UNAVAILABLE,
)
# Imagen and Gemini take a signed 32-bit seed; larger worker seeds are folded into that range.
SEED_RANGE = 2**31
# Wording of the 400 Imagen answers when its safety filter refuses a prompt before generating.
_SAFETY_WORDS = re.compile(r"responsible ai|safety (filter|setting|threshold)|sensitive words|usage guidelines|"
                           r"prohibited (words|content)|violates? [^.]{0,40}(policy|policies|guidelines|practices)",
                           re.IGNORECASE)


def provider_seed(seed: int) -> int:
    """The seed sent to Google: the worker's seed folded into 0..2**31-1 (deterministic).

    kie's `seed` of google/imagen4 and google/imagen4-ultra is a string of at most 500 characters;
    the catalog turns it into the task's integer seed (catalog.base.seed_from_text: "" is no seed,
    so the worker draws one; an integer string is that integer; any other text the first 8 bytes of
    its SHA-256, shifted right by one), and that seed is folded here like any other. Equal strings
    therefore always send the same Vertex seed (Vertex `seed` is an integer:
    cloud.google.com/vertex-ai/generative-ai/docs/reference/rest/Shared.Types/VisionGenerativeModelParams).
    """
    return seed % SEED_RANGE


def check_model_map(value: dict[str, str], served: Iterable[str]) -> dict[str, str]:
    """A `model_map` option: public model id -> provider model id, for models the backend serves."""
    served = sorted(served)
    for public, provider in value.items():
        if public not in served:
            raise PydanticCustomError("model_map", "{public} is not a model this backend serves; it serves "
                                      "{served}", {"public": repr(public), "served": ", ".join(served)})
        if not provider.strip():
            raise PydanticCustomError("model_map", "the model id for {public} is empty", {"public": repr(public)})
    return value


class GoogleOptions(ProviderOptions):
    """Options both Google backends take (the `[backends.NAME]` table, besides `type`)."""

    renamed = {"timeout": "timeout_seconds", "max_wait": "max_wait_seconds"}

    project: str | None = Field(None, description="Google Cloud project for Vertex AI. Not used with an "
                                "express-mode API key; with ADC, defaults to the credentials' project.")
    location: str = Field("us-central1", description="Vertex AI region (`global` for the global endpoint).")
    base_url: str | None = Field(None, description="API endpoint; unset means the SDK's Google host for the "
                                 "mode and location. Tests point it at a fake.")
    api_key_env: str | None = Field(None, description="Environment variable holding an API key (Vertex "
                                    "express mode, or the Gemini Developer API).")
    access_token_env: str | None = Field(None, description="Environment variable holding a static OAuth "
                                         "access token for Vertex AI. Without it and without api_key_env, "
                                         "Application Default Credentials are used.")
    timeout_seconds: float = Field(120.0, gt=0, le=3600, description="Seconds one API call may take; a call "
                                   "that takes longer fails (504) and is not retried.")
    retries: int = Field(2, ge=0, le=10, description="Extra attempts on 429, 5xx and connection errors.")

    @model_validator(mode="after")
    def _one_credential(self) -> GoogleOptions:
        if self.api_key_env and self.access_token_env:
            raise ValueError("set api_key_env or access_token_env, not both")
        return self


# The Imagen model of each public model the `google` backend serves; None is the `model` option.
# Model ids: cloud.google.com/vertex-ai/generative-ai/docs/models/imagen/4-0-generate.
IMAGEN_MODELS: dict[str, str | None] = {
    "google/imagen4-fast": None,
    "z-image": None,
    "google/imagen4": "imagen-4.0-generate-001",
    "google/imagen4-ultra": "imagen-4.0-ultra-generate-001",
}


class ImagenOptions(GoogleOptions):
    model: str = Field("imagen-4.0-fast-generate-001", min_length=1,
                       description="Vertex AI Imagen model for google/imagen4-fast and z-image.")
    model_map: dict[str, str] = Field(default_factory=dict, description=(
        "public model id -> Imagen model id, over the defaults (google/imagen4: imagen-4.0-generate-001, "
        "google/imagen4-ultra: imagen-4.0-ultra-generate-001; the others: `model`)"))
    image_size: Literal["1K", "2K"] | None = Field(None, description="Imagen `sampleImageSize`; unset means "
                                                   "the model's default (1K).")

    @field_validator("model_map")
    @classmethod
    def _served_models(cls, value: dict[str, str]) -> dict[str, str]:
        return check_model_map(value, IMAGEN_MODELS)

    def provider_model(self, public: str) -> str:
        """The Imagen model id for a public model: model_map, else the default, else `model`."""
        return self.model_map.get(public) or IMAGEN_MODELS.get(public) or self.model


@dataclass
class GoogleClient:
    """An SDK client, the httpx client it sends through, and the secrets to scrub from text."""

    sdk: genai.Client
    http: httpx.AsyncClient
    keys: list[str]
    # Vertex OAuth credentials, whose access token the SDK refreshes as it goes.
    credentials: Any = None

    @property
    def secrets(self) -> list[str]:
        token = getattr(self.credentials, "token", None)
        return [*self.keys, token] if token else list(self.keys)

    async def close(self) -> None:
        await self.sdk.aio.aclose()
        await self.http.aclose()


async def open_client(backend: str, options: GoogleOptions, context: BackendContext, *,
                      vertexai: bool) -> GoogleClient:
    """Build a google-genai client for Vertex AI or the Gemini Developer API.

    The SDK sends through an httpx client we own (no redirects, our timeout), so the transport
    and its exceptions are the same whichever HTTP packages are installed. The SDK's own retries
    stay off: `call_google` retries, honouring Retry-After.
    """
    try:
        from google import genai
        from google.genai import types
    except ImportError:
        raise BackendError(FailCode.UNAVAILABLE, "provider unavailable", transient=True,
                           detail=f"backend {backend}: the google-genai package is not installed "
                                  "(pip install 'safelight[google]')") from None

    secrets: list[str] = []
    credentials: Any = None
    kwargs: dict[str, Any] = {"vertexai": vertexai}
    if options.api_key_env:
        key = read_secret(context, backend, options.api_key_env)
        secrets.append(key)
        kwargs["api_key"] = key  # express mode on Vertex: no project or location in the path
    elif not vertexai:
        raise BackendError(FailCode.UNAVAILABLE, "provider unavailable", transient=True,
                           detail=f"backend {backend}: the Gemini Developer API needs api_key_env")
    else:
        credentials, project = await _vertex_credentials(backend, options, context)
        kwargs.update(credentials=credentials, project=project, location=options.location)

    http = httpx.AsyncClient(timeout=httpx.Timeout(options.timeout_seconds, connect=10.0), follow_redirects=False,
                             event_hooks={"request": [track_sending]})
    http_options = types.HttpOptions(base_url=options.base_url, timeout=int(options.timeout_seconds * 1000),
                                     httpx_async_client=http)
    try:
        sdk = genai.Client(http_options=http_options, **kwargs)
    except ValueError as exc:
        await http.aclose()
        raise BackendError(FailCode.UNAVAILABLE, "provider unavailable", transient=True,
                           detail=redact(f"backend {backend}: google-genai refused the settings: {exc}",
                                         secrets + [getattr(credentials, "token", None) or ""])) from None
    return GoogleClient(sdk, http, secrets, credentials)


async def _vertex_credentials(backend: str, options: GoogleOptions, context: BackendContext) -> tuple[Any, str]:
    if options.access_token_env:
        from google.oauth2.credentials import Credentials

        token = read_secret(context, backend, options.access_token_env)
        project = options.project
    else:
        import google.auth
        from google.auth.exceptions import GoogleAuthError

        try:
            credentials, adc_project = await asyncio.to_thread(google.auth.default, scopes=[CLOUD_SCOPE])
        except GoogleAuthError as exc:
            raise BackendError(FailCode.UNAVAILABLE, "provider unavailable", transient=True,
                               detail=f"backend {backend}: no Google credentials (set api_key_env or "
                                      f"access_token_env, or configure Application Default Credentials): "
                                      f"{type(exc).__name__}: {exc}") from None
        project = options.project or adc_project
        if not project:
            raise BackendError(FailCode.UNAVAILABLE, "provider unavailable", transient=True,
                               detail=f"backend {backend}: set `project`; the credentials name none")
        return credentials, project
    if not project:
        raise BackendError(FailCode.UNAVAILABLE, "provider unavailable", transient=True,
                           detail=f"backend {backend}: set `project` (needed with access_token_env)")
    # google.oauth2.credentials is installed without type hints.
    return Credentials(token=token), project  # type: ignore[no-untyped-call]


def safe_text(text: str, secrets: Iterable[str], limit: int = 300) -> str:
    """Provider text fit for a user: secrets and project paths removed, one line, bounded."""
    text = redact(str(text), secrets)
    text = re.sub(r"projects/[^/\s'\"]+", "projects/***", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_body(exc: Any) -> dict[str, Any]:
    details = exc.details
    if isinstance(details, list) and details:
        details = details[0]
    error = details.get("error") if isinstance(details, dict) else None
    if isinstance(error, dict):
        return error
    return details if isinstance(details, dict) else {}


def _retry_delay(exc: Any) -> float | None:
    """Seconds the provider asked us to wait: Retry-After, or a google.rpc.RetryInfo detail."""
    response = getattr(exc, "response", None)
    if isinstance(response, httpx.Response):
        delay = retry_after_seconds(response.headers.get("retry-after"))
        if delay is not None:
            return delay
    for item in _error_body(exc).get("details") or []:
        delay = item.get("retryDelay") if isinstance(item, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return max(0.0, float(delay[:-1]))
            except ValueError:
                pass
    return None


def _operator_key_problem(exc: Any) -> bool:
    """A 400 that is about our credentials, not the user's input (Google answers a bad API key so)."""
    for item in _error_body(exc).get("details") or []:
        if isinstance(item, dict) and item.get("reason") in {"API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED"}:
            return True
    return "api key" in (exc.message or "").lower()


@dataclass
class GoogleCall:
    """Everything `call_google` needs to retry a call and describe its failures."""

    backend: str
    model: str
    client: GoogleClient
    # The retry budget (retries, backoff_seconds, max_wait_seconds).
    options: GoogleOptions
    # Added to the log detail of a 404 (the model id is gone).
    not_found_hint: str = ""

    @property
    def secrets(self) -> list[str]:
        # Read each time: the SDK may have refreshed the OAuth token since the call began.
        return self.client.secrets

    def fail(self, code: FailCode, message: str, detail: str, *, transient: bool) -> BackendError:
        detail = redact(f"backend {self.backend}: {detail}", self.secrets)
        log.warning("%s", detail)
        return BackendError(code, redact(message, self.secrets), transient=transient, detail=detail)

    def fail_by(self, rule: Rule, detail: str, reason: str = "") -> BackendError:
        return self.fail(rule.fail_code, rule.user_message(reason), rule.detail(detail), transient=rule.transient)

    def try_again(self, problem: str, retry_after: float | None = None) -> TryAgain:
        problem = redact(problem, self.secrets)
        log.info("backend %s: %s", self.backend, problem)
        return TryAgain(problem, retry_after)


async def call_google(call: GoogleCall, what: str, make: Callable[[], Awaitable[T]]) -> T:
    """Run one SDK call; retry overload and connection errors; map every failure to a BackendError.

    - 429 / 408 / 5xx and connection errors: retried up to `retries` times (Retry-After honoured,
      capped at `max_wait_seconds`), then transient 503.
    - Other HTTP statuses: the STATUSES table (400 INVALID_ARGUMENT: permanent 400 with Google's
      scrubbed message; 401 / 403: the operator's credentials; 404, the model retired: transient
      503 with `not_found_hint` in the log), after the 400s that mean something else (_special_400).
    - A call whose request was sent whole and whose answer was lost (a read timeout, a reset): not
      retried, since Google may be running it and will bill it (Predict and generateContent take no
      request id); a timeout is a transient 504, anything else a transient 503. One that failed
      before it was sent (a connect timeout, a refused connection) is retried.
    - Auth failures: transient 503, detail in the log. Unparseable responses: transient 501.
    """
    from google.auth.exceptions import GoogleAuthError
    from google.genai import errors

    attempts = 0
    try:
        async for attempt in call.options.retrying():
            with attempt:
                attempts = attempt.num
                try:
                    return await make()
                except errors.APIError as exc:
                    raise _api_error(call, what, exc) from None
                except httpx.TransportError as exc:
                    if request_sent(exc):
                        code, message = lost_code(exc)
                        raise call.fail(code, message, f"{answer_lost(what, exc)}; not retried (the provider "
                                        f"may have billed it)", transient=True) from None
                    if isinstance(exc, httpx.TimeoutException):
                        raise call.try_again(f"{what} timed out before it was sent ({type(exc).__name__})") from None
                    raise call.try_again(f"{what} could not connect: {type(exc).__name__}: {exc}") from None
                except GoogleAuthError as exc:
                    raise call.fail(FailCode.UNAVAILABLE, PROVIDER_UNAVAILABLE,
                                    f"{what}: could not get a Google access token: {type(exc).__name__}: {exc}",
                                    transient=True) from None
                except ValueError as exc:  # JSON decode errors, errors.UnknownApiResponseError, pydantic validation
                    raise call.fail(FailCode.GENERATION, MALFORMED, f"{what}: unreadable response: "
                                    f"{type(exc).__name__}: {str(exc)[:200]}", transient=True) from None
    except TryAgain as exc:
        raise call.fail(FailCode.UNAVAILABLE, PROVIDER_UNAVAILABLE, f"{exc.problem}; gave up after {attempts} attempts",
                        transient=True) from None
    raise AssertionError("unreachable: the retry context returns or raises")


def _api_error(call: GoogleCall, what: str, exc: Any) -> Exception:
    """A TryAgain for an answer worth another try, else the BackendError the status means."""
    code, status = exc.code or 0, exc.status or ""
    message = safe_text(exc.message or "", call.secrets)
    problem = f"{what} answered HTTP {code} {status}: {message}"
    if code in RETRYABLE_STATUSES or code >= 500:
        return call.try_again(problem, _retry_delay(exc))
    rule = _special_400(exc, status, message) if code == 400 else None
    rule = rule or STATUSES.rule(code)
    if code == 404:  # the table says the model is gone; this call knows which, and what to route instead
        rule = replace(rule, hint=f"model {call.model!r} was not found. {call.not_found_hint}".strip())
    return call.fail_by(rule, problem, message or status)


def _special_400(exc: Any, status: str, message: str) -> Rule | None:
    """The 400s the table cannot tell apart by status alone: Google answers a bad API key, a project
    without billing and a prompt its safety filter refuses all with 400, and only the body says which."""
    if _operator_key_problem(exc):
        return CREDENTIALS
    if status == "FAILED_PRECONDITION":
        return UNAVAILABLE
    if _SAFETY_WORDS.search(message):
        return SAFETY_REFUSAL
    return None


def image_of(call: GoogleCall, data: bytes, seed: int) -> GeneratedImage:
    """A GeneratedImage from inline bytes, typed by content (not by what the provider claims)."""
    mime = sniff_image_type(data)
    if mime is None:
        raise call.fail(FailCode.GENERATION, MALFORMED, f"an image part is not PNG, JPEG or WebP ({len(data)} bytes)",
                        transient=True)
    return generated(data, mime, seed)


class GoogleImagenBackend(ProviderBackend[GoogleClient]):
    """Imagen 4 on Vertex AI: google/imagen4-fast, google/imagen4 and google/imagen4-ultra, each on its
    own Imagen model (`model`, `model_map`). Also takes `z-image` text-to-image as overflow.

    Seeds: Imagen takes one seed per request and derives the other images' seeds from it. We send
    `job.seeds[0]` (folded into 32 bits, with add_watermark=False, which a seed requires) and label
    image i with `job.seeds[0] + i`, which is what the worker picked for it. Asking again with that
    seed and one image will not reproduce image i > 0; the same request again will. imagen4's and
    imagen4-ultra's string seeds become integers first (`provider_seed`).

    Output: Imagen writes PNG or JPEG (`outputOptions.mimeType`, VisionGenerativeModelParams above);
    a task asking for jpeg gets JPEG from Imagen, anything else PNG (the worker converts to WebP).
    """

    type_name = "google"
    models = frozenset(IMAGEN_MODELS)
    Options = ImagenOptions

    @staticmethod
    def not_found_hint(public: str) -> str:
        return (f"Google shut Imagen 4 down on 2026-08-17: route {public} to a `gemini-image` backend (or kie, "
                f"or a local one) in the routing file.")

    async def open_client(self) -> GoogleClient:
        # The SDK warns on every generate_images call that the method is deprecated (Imagen's
        # shutdown, above); the 404 handling covers that, so keep the warning out of the logs.
        warnings.filterwarnings("ignore", message="The generate_images method is deprecated")
        return await open_client(self.name, self.options, self.context, vertexai=True)

    async def generate(self, job: Job) -> list[GeneratedImage]:
        from google.genai import types

        client = self.started()
        params = job.params
        model = self.options.provider_model(params.model)
        count = len(job.seeds) or params.num_images
        first_seed = job.seeds[0] if job.seeds else 0
        config = types.GenerateImagesConfig(
            number_of_images=count,
            negative_prompt=params.negative_prompt or None,
            aspect_ratio=None if params.aspect_ratio == "auto" else params.aspect_ratio,
            seed=provider_seed(first_seed),
            add_watermark=False,
            person_generation=types.PersonGeneration.ALLOW_ADULT,
            output_mime_type="image/jpeg" if params.output_format == "jpeg" else "image/png",
            include_rai_reason=True,
            image_size=self.options.image_size,
        )
        call = GoogleCall(self.name, model, client, self.options, self.not_found_hint(params.model))
        sdk = client.sdk
        response = await call_google(call, f"Imagen {model}:predict",
                                     lambda: sdk.aio.models.generate_images(model=model, prompt=params.prompt,
                                                                            config=config))
        images: list[bytes] = []
        reasons: list[str] = []
        for item in response.generated_images or []:
            data = item.image.image_bytes if item.image is not None else None
            if data:
                images.append(data)
            elif item.rai_filtered_reason:
                reasons.append(safe_text(item.rai_filtered_reason, call.secrets))
        if len(images) < count and (reasons or images):
            reason = reasons[0] if reasons else f"{count - len(images)} of {count} images were filtered"
            raise call.fail(FailCode.MODERATED, f"{MODERATED}: {reason}",
                            f"Imagen returned {len(images)} of {count} images; filtered: {reasons}", transient=False)
        if not images:
            raise call.fail(FailCode.GENERATION, MALFORMED, "Imagen returned no images and no filter reason",
                            transient=True)
        result = [image_of(call, data, first_seed + i) for i, data in enumerate(images[:count])]
        job.report_progress(100)
        return result
