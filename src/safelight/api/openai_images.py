"""The OpenAI Images API over Safelight's tasks: `POST /v1/images/generations`, `POST /v1/images/edits`,
`GET /v1/models`, for the `openai` SDK, LiteLLM, LangChain and every "OpenAI-compatible" tool.

A request becomes ordinary tasks, admitted by the code createTask uses (`Admission`: input schema,
price, route, URL policy, queue caps, idempotency, the credit reservation), run by the same workers,
backends and fallbacks, and shown by recordInfo and the task list. The answer waits for them on the
task events, as `Prefer: wait` does, at most SAFELIGHT_OPENAI_WAIT_SECONDS, and carries the images
as `b64_json` (the default, as OpenAI's GPT image models) or `url` (signed links).

OpenAI's parameters are translated by reading the model's input schema:

- `model`: a public model id, or an alias from the routing file's `[openai.aliases]`; required.
- `size` (`WxH` or `auto`): the model's nearest aspect ratio (`aspect_ratio`) or size preset
  (`image_size`), within 15 %, and its `resolution` (1K, 2K, ...) nearest in pixels; a size the
  model has nothing near is refused, naming what it accepts.
- `n` (1-10): as few tasks as the model's `num_images` allows: one task of n images where it has
  the field (split when n is above its maximum), else n tasks of one image each.
- `quality`: the model's `rendering_speed` (low TURBO, medium BALANCED, high QUALITY) or `quality`;
  ignored by a model with neither. `output_format`: the model's `output_format`; a model without
  one takes only png.
- edits: `image` (or `image[]`, as the SDK sends a list) and `mask` are stored as the account's
  uploads, and their links become the task's input URLs, as an upload then createTask would: the
  first image goes to the model's first image field (the image edited), the others to the next.

Errors are OpenAI's `{"error": {"message", "type", "param", "code"}}` with real HTTP statuses
(tables below); `X-Safelight-Task-Id` names the tasks of every answer that created some.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.engine import RowMapping
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse, Response

from safelight.admission import CreateRequest, idempotency_key
from safelight.catalog import BUCKETS, MODELS, ModelSpec
from safelight.catalog.base import IMAGE_SIZE_PRESETS
from safelight.kie import Code, FailCode, KieError, TaskState
from safelight.net import sniff_image_type
from safelight.routing import Routing
from safelight.store import KeyGrant, TaskNotCancellable

from .auth import admission_of, bearer_key, require_account, require_key, runtime_of
from .envelope import BodyError, parse_json_object, read_body
from .jobs import wait_for_end
from .middleware import BodyTimeout
from .ratelimit import RateLimiter
from .shapes import OPENAI_ERRORS, OpenAIImages, OpenAIModel, OpenAIModelList

router = APIRouter(tags=["openai"])

MAX_N = 10
MAX_EDIT_IMAGES = 16
# A size maps onto the model's nearest aspect ratio only if it is within 15 % of it: 1536x1024 (3:2)
# becomes 4:3 on a model without 3:2, but 1024x4096 finds nothing near on a model whose tallest is 9:16.
ASPECT_TOLERANCE = math.log(1.15)
RESPONSE_FORMATS = ("b64_json", "url")
QUALITIES = ("auto", "low", "medium", "high", "xhigh", "max", "standard", "hd")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
RENDERING_SPEED = {"low": "TURBO", "medium": "BALANCED", "standard": "BALANCED", "high": "QUALITY",
                   "hd": "QUALITY", "xhigh": "QUALITY", "max": "QUALITY"}
MASK_FIELDS = ("mask_url", "mask_image_url", "mask")
TASK_HEADER = "X-Safelight-Task-Id"
ROUTES = "POST /v1/images/generations, POST /v1/images/edits and GET /v1/models"
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")
_RESOLUTION = re.compile(r"^(\d+)K$")
_INPUT_FIELD = re.compile(r"\binput\.([A-Za-z_]\w*)")
_IMAGE_PART = re.compile(r"^image(\[\d*\])?$")


# --- errors ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """What OpenAI answers for one kind of error: HTTP status, `type` and `code`, and whether a client
    should try again (the `x-should-retry` header the openai SDK follows)."""

    status: int
    type: str
    code: str | None
    retry: bool = False


INVALID = Problem(400, "invalid_request_error", "invalid_value")
MODEL_NOT_FOUND = Problem(404, "invalid_request_error", "model_not_found")
UNKNOWN_URL = Problem(404, "invalid_request_error", None)
SERVER_ERROR = Problem(500, "server_error", "internal_error", retry=True)
# The answer's wait ran out; the tasks run on. Not retried: a retry would create new tasks.
STILL_RUNNING = Problem(504, "server_error", "timeout")

# Safelight's refusals (kie's codes, as Admission and the auth raise them) in OpenAI's terms.
ADMISSION_ERRORS: Mapping[int, Problem] = {
    Code.UNAUTHORIZED: Problem(401, "invalid_request_error", "invalid_api_key"),
    Code.INSUFFICIENT_CREDITS: Problem(429, "insufficient_quota", "insufficient_quota"),
    # A per-key credit cap: OpenAI's answer to a project over its budget.
    Code.KEY_LIMIT_EXCEEDED: Problem(429, "insufficient_quota", "insufficient_quota"),
    Code.NOT_FOUND: Problem(404, "invalid_request_error", "not_found"),
    Code.INVALID: INVALID,
    Code.RATE_LIMITED: Problem(429, "requests", "rate_limit_exceeded", retry=True),
    Code.MAINTENANCE: Problem(503, "server_error", "service_unavailable", retry=True),
    Code.SERVER_ERROR: SERVER_ERROR,
    Code.FEATURE_DISABLED: MODEL_NOT_FOUND,  # the model is disabled, or not routed on this server
}

# A failed task's failCode in OpenAI's terms (every failed task is refunded).
TASK_FAILURES: Mapping[str, Problem] = {
    FailCode.INPUT: Problem(400, "invalid_request_error", "invalid_input"),
    FailCode.UPSTREAM_INPUT: Problem(400, "invalid_request_error", "invalid_input"),
    FailCode.MODERATED: Problem(400, "invalid_request_error", "content_policy_violation"),
    FailCode.INTERNAL: SERVER_ERROR,
    FailCode.GENERATION: Problem(500, "server_error", "generation_failed", retry=True),
    FailCode.UNAVAILABLE: Problem(503, "server_error", "service_unavailable", retry=True),
    FailCode.TIMEOUT: Problem(504, "server_error", "timeout"),
    FailCode.NOT_SERVED: Problem(400, "invalid_request_error", "not_served"),
    FailCode.CANCELLED: Problem(400, "invalid_request_error", "cancelled"),
}


class OpenAIError(Exception):
    def __init__(self, problem: Problem, message: str, *, param: str | None = None,
                 retry_after: float | None = None, task_ids: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problem, self.message, self.param = problem, message, param
        self.retry_after, self.task_ids = retry_after, tuple(task_ids)

    def response(self) -> JSONResponse:
        problem = self.problem
        headers = {"x-should-retry": "true" if problem.retry else "false"}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        if self.task_ids:
            headers[TASK_HEADER] = ",".join(self.task_ids)
        body = {"error": {"message": self.message, "type": problem.type, "param": self.param, "code": problem.code}}
        return JSONResponse(body, status_code=problem.status, headers=headers)


def invalid(param: str | None, message: str) -> OpenAIError:
    return OpenAIError(INVALID, message, param=param)


def from_refusal(exc: KieError, params: Mapping[str, str] | None = None) -> OpenAIError:
    """A KieError as OpenAI's error; a 422 about `input.<field>` names the request parameter that
    field was built from (`params`: input field -> parameter)."""
    problem = ADMISSION_ERRORS.get(exc.code, SERVER_ERROR)
    param = None
    if exc.code == Code.INVALID and params and (found := _INPUT_FIELD.search(exc.msg)):
        param = params.get(found.group(1))
    retry_after = exc.retry_after
    if retry_after is None and exc.code == Code.RATE_LIMITED:
        retry_after = 10
    return OpenAIError(problem, exc.msg, param=param, retry_after=retry_after)


Route = Callable[[Request], Awaitable[Response]]


def _openai_errors(handler: Route) -> Route:
    """Render refusals in OpenAI's shape (kie's envelope is for kie's routes)."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except OpenAIError as exc:
            return exc.response()
        except KieError as exc:
            return from_refusal(exc).response()
        except BodyError as exc:
            return invalid(None, str(exc)).response()

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


# --- what a model's input can take --------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """An input field with a fixed set of values."""

    name: str
    values: tuple[Any, ...]
    optional: bool  # the model has a default for it


@dataclass(frozen=True)
class ModelShape:
    """What OpenAI's parameters can set on one model's input, read from its JSON schema."""

    aspect: Choice | None = None  # "W:H" values (and perhaps "auto")
    preset: Choice | None = None  # image_size presets: square_hd, landscape_16_9, ...
    resolution: Choice | None = None  # 1K, 2K, ...
    count: Choice | None = None  # num_images, as ints
    count_as_text: bool = False  # num_images is "1".."4", a string, as kie spells it
    quality: Choice | None = None
    output_format: Choice | None = None
    # Where the request's images go, in order: (field, how many it takes, whether it is a list). The
    # first image fills the first field (`image_url`, the one to edit), the rest the next ones.
    image_fields: tuple[tuple[str, int, bool], ...] = ()
    image_required: bool = False
    mask_field: str | None = None
    mask_is_list: bool = False
    fields: frozenset[str] = field(default_factory=frozenset)

    @property
    def image_max(self) -> int:
        return min(sum(capacity for _name, capacity, _is_list in self.image_fields), MAX_EDIT_IMAGES)


_SHAPES: dict[str, ModelShape] = {}


def shape_of(spec: ModelSpec) -> ModelShape:
    shape = _SHAPES.get(spec.id)
    if shape is None:
        shape = _SHAPES[spec.id] = _read_shape(spec)
    return shape


def _read_shape(spec: ModelSpec) -> ModelShape:
    schema = spec.input_schema.model_json_schema()
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    props = {name: _resolve(prop, defs) for name, prop in schema.get("properties", {}).items()}

    def choice(name: str) -> Choice | None:
        values = _enum(props[name], defs) if name in props else None
        return Choice(name, values, name not in required) if values else None

    shape = ModelShape(fields=frozenset(props))
    for name in sorted(props, key=lambda name: name != "aspect_ratio"):  # aspect_ratio first, if there is one
        found = choice(name)
        if found is None:
            continue
        plain = [v for v in found.values if v != "auto"]
        if shape.aspect is None and plain and all(isinstance(v, str) and re.fullmatch(r"\d+:\d+", v) for v in plain):
            shape = replace(shape, aspect=found)
        elif shape.preset is None and plain and all(v in IMAGE_SIZE_PRESETS for v in plain):
            shape = replace(shape, preset=found)
    if (resolution := choice("resolution")) and all(_RESOLUTION.match(str(v)) for v in resolution.values):
        shape = replace(shape, resolution=resolution)
    if "num_images" in props:
        shape = _with_count(shape, props["num_images"], defs, optional="num_images" not in required)
    for name in ("rendering_speed", "quality"):
        if (quality := choice(name)) is not None:
            shape = replace(shape, quality=quality)
            break
    shape = replace(shape, output_format=choice("output_format"))
    image_fields = []
    for name in spec.url_fields:
        if "mask" in name or name not in props:
            continue
        is_list = props[name].get("type") == "array"
        image_fields.append((name, int(props[name].get("maxItems", MAX_EDIT_IMAGES)) if is_list else 1, is_list))
    if image_fields:
        shape = replace(shape, image_fields=tuple(image_fields), image_required=image_fields[0][0] in required)
    for name in MASK_FIELDS:
        if name in props:
            shape = replace(shape, mask_field=name, mask_is_list=props[name].get("type") == "array")
            break
    return shape


def _resolve(prop: dict[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    ref = prop.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return {**defs.get(ref.removeprefix("#/$defs/"), {}), **{k: v for k, v in prop.items() if k != "$ref"}}
    return prop


def _enum(prop: Mapping[str, Any], defs: Mapping[str, Any]) -> tuple[Any, ...] | None:
    if "enum" in prop:
        return tuple(prop["enum"])
    if "const" in prop:
        return (prop["const"],)
    for branch in prop.get("anyOf", []):
        if (found := _enum(_resolve(branch, defs), defs)) is not None:
            return found
    return None


def _with_count(shape: ModelShape, prop: dict[str, Any], defs: Mapping[str, Any], *, optional: bool) -> ModelShape:
    values = _enum(prop, defs)
    if values:
        counts = tuple(sorted(int(v) for v in values if str(v).isdigit()))
        return replace(shape, count=Choice("num_images", counts, optional),
                       count_as_text=all(isinstance(v, str) for v in values))
    for branch in [prop, *(_resolve(b, defs) for b in prop.get("anyOf", []))]:
        if branch.get("type") == "integer":
            low = max(1, int(branch.get("minimum", 1)))
            high = min(int(branch.get("maximum", MAX_N)), MAX_N)
            return replace(shape, count=Choice("num_images", tuple(range(low, high + 1)), optional))
    return shape


# --- the request, translated ----------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRequest:
    """An OpenAI images request, checked; `size` None means auto."""

    spec: ModelSpec
    prompt: str
    n: int
    size: tuple[int, int] | None
    quality: str
    output_format: str | None
    response_format: str


def model_names(routing: Routing) -> str:
    names = ", ".join(MODELS)
    if routing.openai_aliases:
        names += "; aliases: " + ", ".join(f"{alias} ({target})" for alias, target in routing.openai_aliases.items())
    return names


def parse_request(body: Mapping[str, Any], routing: Routing, *, form: bool) -> ImageRequest:
    """The parameters of a generations body (JSON) or an edits form (strings); 400 naming the first bad one."""
    model = body.get("model")
    if model in (None, ""):
        raise invalid("model", f"model is required (this server has no default model): a Safelight model id or an "
                               f"alias of this server; models: {model_names(routing)}")
    if not isinstance(model, str):
        raise invalid("model", "model must be a string")
    spec = MODELS.get(routing.openai_aliases.get(model, model))
    if spec is None:
        raise OpenAIError(MODEL_NOT_FOUND, f"The model {model[:100]!r} does not exist on this server; models: "
                                           f"{model_names(routing)}", param="model")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise invalid("prompt", "prompt is required: a text description of the image")
    stream = body.get("stream")
    if stream is True or (isinstance(stream, str) and stream.lower() == "true"):
        raise invalid("stream", "streaming is not available on this server; omit stream")
    background = body.get("background")
    if background not in (None, "auto", "opaque"):
        raise invalid("background", f"background must be auto or opaque on this server (no transparent "
                                    f"backgrounds); got {str(background)[:30]!r}")
    return ImageRequest(spec=spec, prompt=prompt, n=_count(body.get("n"), form), size=_size(body.get("size")),
                        quality=_one_of(body, "quality", QUALITIES, "auto"),
                        output_format=_output_format(body.get("output_format")),
                        response_format=_one_of(body, "response_format", RESPONSE_FORMATS, "b64_json"))


def _count(value: Any, form: bool) -> int:
    if value is None:
        return 1
    if form and isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_N:
        raise invalid("n", f"n must be an integer from 1 to {MAX_N}; got {str(value)[:20]!r}")
    return value


def _size(value: Any) -> tuple[int, int] | None:
    if value is None or value == "auto":
        return None
    found = _SIZE.match(value) if isinstance(value, str) else None
    if found is None or int(found.group(1)) == 0 or int(found.group(2)) == 0:
        raise invalid("size", f"size must be WIDTHxHEIGHT (such as 1024x1024 or 1536x1024) or auto; "
                              f"got {str(value)[:30]!r}")
    return int(found.group(1)), int(found.group(2))


def _one_of(body: Mapping[str, Any], name: str, allowed: Sequence[str], default: str) -> str:
    value = body.get(name)
    if value is None:
        return default
    if value not in allowed:
        raise invalid(name, f"{name} must be one of {', '.join(allowed)}; got {str(value)[:30]!r}")
    return str(value)


def _output_format(value: Any) -> str | None:
    if value is None:
        return None
    value = "jpeg" if value == "jpg" else value
    if value not in OUTPUT_FORMATS:
        raise invalid("output_format", f"output_format must be one of {', '.join(OUTPUT_FORMATS)} on this server; "
                                       f"got {str(value)[:30]!r}")
    return str(value)


@dataclass
class Inputs:
    """The task inputs of one request, and which request parameter each input field came from."""

    inputs: list[dict[str, Any]]
    params: dict[str, str]


def build_inputs(request: ImageRequest, *, images: Sequence[str] = (), mask: str | None = None) -> Inputs:
    """The model inputs for `request` (one per task), or a 400 naming the parameter the model cannot honour."""
    spec, shape = request.spec, shape_of(request.spec)
    base: dict[str, Any] = {"prompt": request.prompt}
    # Every field a parameter can set, so that the model's refusal of one (even one left out, such as
    # a required mask) names the parameter.
    params = {"prompt": "prompt", **{name: "image" for name, _capacity, _is_list in shape.image_fields}}
    for choice, param in ((shape.aspect, "size"), (shape.preset, "size"), (shape.resolution, "size"),
                          (shape.count, "n"), (shape.quality, "quality"), (shape.output_format, "output_format")):
        if choice is not None:
            params[choice.name] = param
    if shape.mask_field:
        params[shape.mask_field] = "mask"
    for name, value in size_fields(spec.id, shape, request.size).items():
        base[name], params[name] = value, "size"
    if (quality := quality_field(spec.id, shape, request.quality)) is not None:
        base[quality[0]], params[quality[0]] = quality[1], "quality"
    if (output := output_format_field(spec.id, shape, request.output_format)) is not None:
        base[output[0]], params[output[0]] = output[1], "output_format"
    remaining = list(images)
    for name, capacity, is_list in shape.image_fields:
        if not remaining:
            break
        taken, remaining = remaining[:capacity], remaining[capacity:]
        base[name], params[name] = taken if is_list else taken[0], "image"
    if mask is not None and shape.mask_field:
        base[shape.mask_field] = [mask] if shape.mask_is_list else mask
        params[shape.mask_field] = "mask"
    if shape.count is None:
        return Inputs([dict(base) for _ in range(request.n)], params)
    params[shape.count.name] = "n"
    inputs = []
    for count in split_count(request.n, shape.count.values):
        inputs.append({**base, shape.count.name: str(count) if shape.count_as_text else count})
    return Inputs(inputs, params)


def split_count(n: int, allowed: Sequence[int]) -> list[int]:
    """n images as few tasks' num_images as `allowed` permits: 10 with 1-4 is [4, 4, 2]."""
    largest = max(allowed)
    counts = [largest] * (n // largest)
    rest = n % largest
    if rest:
        counts += [rest] if rest in allowed else [min(allowed)] * rest
    return counts


def _ratio(value: str) -> float:
    width, height = value.split(":")
    return int(width) / int(height)


def size_fields(model: str, shape: ModelShape, size: tuple[int, int] | None) -> dict[str, Any]:
    """The input fields that give `size` (None: auto) on this model."""
    fields: dict[str, Any] = {}
    if size is None:
        if shape.aspect is not None and "auto" in shape.aspect.values:
            fields[shape.aspect.name] = "auto"
        elif shape.aspect is not None and not shape.aspect.optional:
            fields[shape.aspect.name] = "1:1" if "1:1" in shape.aspect.values else shape.aspect.values[0]
        if shape.preset is not None and not shape.preset.optional:
            fields[shape.preset.name] = "square_hd" if "square_hd" in shape.preset.values else shape.preset.values[0]
        if shape.resolution is not None and not shape.resolution.optional:
            fields[shape.resolution.name] = min(shape.resolution.values, key=_megapixels)
        return fields
    width, height = size
    target = math.log(width / height)
    if shape.aspect is not None:
        ratios = [v for v in shape.aspect.values if v != "auto"]
        best = min(ratios, key=lambda v: abs(math.log(_ratio(v)) - target))
        if abs(math.log(_ratio(best)) - target) > ASPECT_TOLERANCE:
            raise invalid("size", f"size {width}x{height} is not available for {model}: its aspect ratios are "
                                  f"{_describe_ratios(ratios)}, or auto")
        fields[shape.aspect.name] = best
    elif shape.preset is not None:
        presets = [v for v in shape.preset.values if v in IMAGE_SIZE_PRESETS]

        def distance(preset: str) -> tuple[float, float]:
            w, h = IMAGE_SIZE_PRESETS[preset]
            return abs(math.log(w / h) - target), abs(math.log(w * h / (width * height)))

        best = min(presets, key=distance)
        if distance(best)[0] > ASPECT_TOLERANCE:
            sizes = ", ".join(f"{p} ({IMAGE_SIZE_PRESETS[p][0]}x{IMAGE_SIZE_PRESETS[p][1]})" for p in presets)
            raise invalid("size", f"size {width}x{height} is not available for {model}: its sizes are {sizes}, or auto")
        fields[shape.preset.name] = best
    else:
        raise invalid("size", f"{model} has no size option: send size auto, or leave size out")
    if shape.resolution is not None:
        pixels = math.log(width * height / 2**20)
        fields[shape.resolution.name] = min(shape.resolution.values,
                                            key=lambda v: abs(math.log(_megapixels(v)) - pixels))
    return fields


def _megapixels(resolution: Any) -> float:
    """1K is about one megapixel, 2K four, 4K sixteen."""
    found = _RESOLUTION.match(str(resolution))
    return float(int(found.group(1)) ** 2) if found else 1.0


def _describe_ratios(ratios: Sequence[str]) -> str:
    return ", ".join(f"{r} ({'x'.join(map(str, BUCKETS['1K'][r]))})" if r in BUCKETS["1K"] else r for r in ratios)


def quality_field(model: str, shape: ModelShape, quality: str) -> tuple[str, Any] | None:
    if quality == "auto" or shape.quality is None:
        return None  # a model without a quality option renders as it does: quality is a hint
    if shape.quality.name == "rendering_speed" and RENDERING_SPEED[quality] in shape.quality.values:
        return shape.quality.name, RENDERING_SPEED[quality]
    if quality in shape.quality.values:
        return shape.quality.name, quality
    raise invalid("quality", f"quality {quality} is not available for {model}; it takes auto, low, medium or high")


def output_format_field(model: str, shape: ModelShape, output_format: str | None) -> tuple[str, Any] | None:
    if output_format is None:
        return None
    if shape.output_format is None:
        if output_format == "png":
            return None
        raise invalid("output_format", f"{model} has no output format option: send output_format png, or leave "
                                       "it out")
    for spelling in (output_format, "jpg") if output_format == "jpeg" else (output_format,):
        if spelling in shape.output_format.values:
            return shape.output_format.name, spelling
    raise invalid("output_format", f"output_format {output_format} is not available for {model}; it takes "
                                   f"{', '.join(map(str, shape.output_format.values))}")


# --- creating the tasks and waiting for them --------------------------------------------------------


async def create_tasks(request: Request, caller: KeyGrant, spec: ModelSpec, built: Inputs,
                       key: str | None = None) -> list[str]:
    """Admit and create one task per input, as createTask does (each counting against the caller's
    key caps). When a later one is refused, the earlier ones are cancelled (refunded), so a refused
    request leaves no task running."""
    account_id = caller.account_id
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is not None:
        for _ in built.inputs:  # each task counts as one createTask
            if (wait := await limiter.hit(bearer_key(request) or "")) is not None:
                raise OpenAIError(ADMISSION_ERRORS[Code.RATE_LIMITED],
                                  f"Rate limit reached: at most {limiter.limit} tasks per {limiter.window:g} s for "
                                  f"this key; this request needs {len(built.inputs)}", retry_after=wait)
    admission = admission_of(request)
    creates = [CreateRequest(model=spec.id, input=task_input,
                             idempotency_key=None if key is None else key if len(built.inputs) == 1 else f"{key}#{i}")
               for i, task_input in enumerate(built.inputs)]
    created: list[str] = []
    try:
        if len(creates) > 1 and key is None:
            # Several tasks: refuse up front what the balance cannot cover in full.
            total = 0
            for create in creates:
                total += (await admission.admit(create, account_id)).cost
            balance = await runtime_of(request).store.accounts.balance(account_id)
            if total > balance:
                raise KieError(Code.INSUFFICIENT_CREDITS, f"Credits insufficient: these {len(creates)} tasks cost "
                                                          f"{total} credits, the balance is {balance}")
        for create in creates:
            created.append(await admission.create(account_id, create, key=caller))
    except KieError as exc:
        await _cancel(request, account_id, created)
        raise from_refusal(exc, built.params) from None
    return created


async def _cancel(request: Request, account_id: int, task_ids: Sequence[str]) -> None:
    for task_id in task_ids:
        try:
            await runtime_of(request).store.tasks.cancel(task_id, account_id, "cancelled: the rest of its OpenAI "
                                                                              "images request was refused")
        except TaskNotCancellable:
            pass  # it already ended (and a success is charged: its images are in recordInfo)


async def answer(request: Request, account_id: int, task_ids: list[str], response_format: str) -> Response:
    """Wait for the tasks, then OpenAI's `{"created", "data"}`; the images of every task that succeeded."""
    runtime = runtime_of(request)
    wait = runtime.settings.openai_wait_seconds
    rows: list[RowMapping | None] = list(await asyncio.gather(
        *(wait_for_end(request, task_id, account_id, wait) for task_id in task_ids)))
    running = [task_id for task_id, row in zip(task_ids, rows, strict=True)
               if row is None or row["state"] not in TaskState.TERMINAL]
    if running:
        raise OpenAIError(STILL_RUNNING, f"the images are not ready after {wait:g} s (SAFELIGHT_OPENAI_WAIT_SECONDS); "
                                         f"task {', '.join(running)} keeps running, and GET "
                                         f"/api/v1/jobs/recordInfo?taskId={running[0]} shows its images when it ends",
                          task_ids=task_ids)
    ended = [row for row in rows if row is not None]
    succeeded = [row for row in ended if row["state"] == TaskState.SUCCESS]
    if not succeeded:
        failed = ended[0]
        problem = TASK_FAILURES.get(failed["fail_code"] or "", SERVER_ERROR)
        raise OpenAIError(problem, f"{failed['fail_msg']} (task {failed['id']}, failCode {failed['fail_code']})",
                          task_ids=task_ids)
    data: list[dict[str, str]] = []
    for row in succeeded:
        for key in json.loads(row["result"])["files"]:
            if response_format == "url":
                data.append({"url": runtime.result_url(key)})
            else:
                data.append({"b64_json": base64.b64encode(await runtime.storage.get(key)).decode("ascii")})
    return JSONResponse({"created": ended[0]["create_time"] // 1000, "data": data},
                        headers={TASK_HEADER: ",".join(task_ids)})


# --- the routes -----------------------------------------------------------------------------------

GENERATIONS_DOC = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["model", "prompt"],
        "properties": {"model": {"type": "string", "description": "a model id or an [openai.aliases] name"},
                       "prompt": {"type": "string"}, "n": {"type": "integer", "minimum": 1, "maximum": MAX_N},
                       "size": {"type": "string", "example": "1024x1024"},
                       "quality": {"type": "string", "enum": list(QUALITIES)},
                       "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS)},
                       "output_format": {"type": "string", "enum": list(OUTPUT_FORMATS)},
                       "user": {"type": "string"}}}}}},
}
EDITS_DOC = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["image", "prompt", "model"],
        "properties": {"image": {"type": "string", "format": "binary", "description": "or image[] (several)"},
                       "mask": {"type": "string", "format": "binary"}, "prompt": {"type": "string"},
                       "model": {"type": "string"}, "n": {"type": "integer"}, "size": {"type": "string"},
                       "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS)}}}}}},
}


async def _admitted(request: Request) -> KeyGrant:
    caller = await require_key(request)
    account_id = caller.account_id
    admission = admission_of(request)
    await admission.ensure_open()
    if request.headers.get("idempotency-key") is None:
        admission.refuse_if_full(account_id)  # before reading the body, as createTask
    return caller


@router.post("/v1/images/generations", summary="Create images (OpenAI Images API)", openapi_extra=GENERATIONS_DOC,
             responses={200: {"model": OpenAIImages}, **OPENAI_ERRORS})
@_openai_errors
async def generations(request: Request) -> Response:
    caller = await _admitted(request)
    account_id = caller.account_id
    runtime = runtime_of(request)
    body = parse_json_object(await read_body(request, runtime.settings.max_body_bytes), "{model, prompt, ...}")
    image_request = parse_request(body, runtime.routing, form=False)
    shape = shape_of(image_request.spec)
    if shape.image_required:
        raise invalid("model", f"{image_request.spec.id} edits images: send them to POST /v1/images/edits")
    key = request.headers.get("idempotency-key")
    built = build_inputs(image_request)
    task_ids = await create_tasks(request, caller, image_request.spec, built,
                                  idempotency_key(key) if key is not None else None)
    return await answer(request, account_id, task_ids, image_request.response_format)


@dataclass
class _Upload:
    field: str  # the request's parameter, for errors: image[0], mask
    data: bytes


@router.post("/v1/images/edits", summary="Edit images (OpenAI Images API)", openapi_extra=EDITS_DOC,
             responses={200: {"model": OpenAIImages}, **OPENAI_ERRORS})
@_openai_errors
async def edits(request: Request) -> Response:
    caller = await _admitted(request)
    account_id = caller.account_id
    runtime = runtime_of(request)
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise invalid(None, "send multipart/form-data: image (or image[]), prompt, model, and the optional mask, "
                            "n, size, response_format")
    fields, images, mask = await _read_form(request, runtime.settings.input_max_bytes)
    image_request = parse_request(fields, runtime.routing, form=True)
    spec, shape = image_request.spec, shape_of(image_request.spec)
    if not shape.image_fields:
        editors = [s.id for s in MODELS.values() if s.url_fields]
        raise invalid("model", f"{spec.id} does not take input images; models that do: {', '.join(editors)}")
    if not images:
        raise invalid("image", "image is required: one image file, or several as image[]")
    if len(images) > shape.image_max:
        raise invalid("image", f"{spec.id} takes at most {shape.image_max} images; got {len(images)}")
    if mask is not None and shape.mask_field is None:
        raise invalid("mask", f"{spec.id} takes no mask: it edits the whole image as the prompt says; leave mask "
                              "out, or use a model with a mask option")
    for upload in [*images, *([mask] if mask else [])]:
        if sniff_image_type(upload.data) is None:
            raise invalid(upload.field.partition("[")[0], f"{upload.field} is not a PNG, JPEG or WebP image")
    # The files are stored as the account's uploads, and their signed links are the task's input URLs.
    folder = f"uploads/{account_id}/openai/{uuid.uuid4().hex}"
    keys = [f"{folder}/{upload.field.replace('[', '-').rstrip(']')}{_extension(upload.data)}"
            for upload in [*images, *([mask] if mask else [])]]
    ttl = runtime.settings.upload_retention_seconds
    links = [runtime.signer.link(key, ttl) for key in keys]
    built = build_inputs(image_request, images=links[:len(images)], mask=links[len(images)] if mask else None)
    for key, upload in zip(keys, [*images, *([mask] if mask else [])], strict=True):
        await runtime.storage.put(key, upload.data)
    try:
        task_ids = await create_tasks(request, caller, spec, built)
    except OpenAIError:
        await runtime.storage.delete_many(keys)  # refused: nothing of it stays
        raise
    return await answer(request, account_id, task_ids, image_request.response_format)


def _extension(data: bytes) -> str:
    return {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}.get(sniff_image_type(data) or "", "")


async def _read_form(request: Request, max_bytes: int) -> tuple[dict[str, str], list[_Upload], _Upload | None]:
    """The form's text fields, its images (`image`, `image[]` or `image[N]`, in order) and its mask."""
    try:
        form = await request.form(max_files=MAX_EDIT_IMAGES + 2, max_fields=64, max_part_size=64 * 1024)
    except BodyTimeout:
        raise  # answered 408 by the middleware, with the connection closed
    except Exception as exc:  # malformed multipart, too many parts, a field over the limit
        raise invalid(None, f"could not read the multipart body: {exc}") from None
    try:
        fields: dict[str, str] = {}
        images: list[_Upload] = []
        mask: _Upload | None = None
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                is_mask = name == "mask"
                if not is_mask and not _IMAGE_PART.match(name):
                    raise invalid(name, f"{name} is not a file parameter of this route; send image (or image[]) "
                                        "and mask")
                label = "mask" if is_mask else f"image[{len(images)}]"
                data = await value.read(max_bytes + 1)
                if len(data) > max_bytes:
                    raise invalid("mask" if is_mask else "image",
                                  f"{label} is larger than {max_bytes} bytes (SAFELIGHT_INPUT_MAX_BYTES)")
                if is_mask:
                    mask = _Upload(label, data)
                else:
                    images.append(_Upload(label, data))
            elif _IMAGE_PART.match(name) or name == "mask":
                raise invalid(name, f"{name} must be a file (multipart part with a filename), not text")
            else:
                fields.setdefault(name, value)
        return fields, images, mask
    finally:
        await form.close()


@router.get("/v1/models", summary="List models (OpenAI format)",
            responses={200: {"model": OpenAIModelList}, 401: OPENAI_ERRORS[401]})
@_openai_errors
async def list_models(request: Request) -> Response:
    await require_account(request)
    return JSONResponse({"object": "list", "data": await _served_models(request)})


@router.get("/v1/models/{model:path}", summary="Retrieve a model (OpenAI format)",
            responses={200: {"model": OpenAIModel}, 401: OPENAI_ERRORS[401], 404: OPENAI_ERRORS[404]},
            # read from path_params (it may hold '/'): declared here for the document
            openapi_extra={"parameters": [{"name": "model", "in": "path", "required": True,
                                           "schema": {"type": "string"}, "example": "z-image"}]})
@_openai_errors
async def retrieve_model(request: Request) -> Response:
    await require_account(request)
    model = request.path_params["model"]
    for entry in await _served_models(request):
        if entry["id"] == model:
            return JSONResponse(entry)
    raise OpenAIError(MODEL_NOT_FOUND, f"The model {model[:100]!r} does not exist on this server", param="model")


async def _served_models(request: Request) -> list[dict[str, Any]]:
    """The models this server serves now (routed, not disabled), then the aliases of those; an alias
    says what it stands for in `root`, as vLLM's model list does."""
    disabled = await admission_of(request).disabled_models()
    routing = runtime_of(request).routing
    served = [model for model in MODELS if routing.route_for(model) and model not in disabled]
    entries = [{"id": model, "object": "model", "created": 0, "owned_by": "safelight"} for model in served]
    entries += [{"id": alias, "object": "model", "created": 0, "owned_by": "safelight", "root": target}
                for alias, target in routing.openai_aliases.items() if target in served]
    return entries


@router.api_route("/v1/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def unknown_route(request: Request) -> Response:
    """Other OpenAI routes (chat, embeddings, ...), and wrong methods: OpenAI's 404 rather than kie's envelope."""
    return OpenAIError(UNKNOWN_URL, f"Invalid URL ({request.method} {request.url.path}): this server's OpenAI "
                                    f"routes are {ROUTES}").response()
