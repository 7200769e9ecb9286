"""A fake of the Google endpoints the google-genai SDK calls for images, on loopback.

Paths (`{v}` is any API version, `v1`, `v1beta`, `v1beta1`):
- Vertex Imagen:  POST /{v}/projects/{p}/locations/{l}/publishers/google/models/{model}:predict
                  POST /{v}/publishers/google/models/{model}:predict              (express mode)
- Vertex Gemini:  POST /{v}/projects/{p}/locations/{l}/publishers/google/models/{model}:generateContent
                  POST /{v}/publishers/google/models/{model}:generateContent      (express mode)
- Gemini API:     POST /{v}/models/{model}:generateContent
- OAuth token:    POST /token (service-account JWT grant, for Application Default Credentials tests)

Auth as Google checks it: project paths want `Authorization: Bearer <token>` (401 UNAUTHENTICATED
otherwise); express and Gemini API paths want `x-goog-api-key` (a wrong key is a 400
INVALID_ARGUMENT with reason API_KEY_INVALID, no key a 403 PERMISSION_DENIED). Errors use Google's
body, {"error": {"code", "message", "status", "details"?}}.

Models (generateContent): what Google documents for each Gemini image model
(ai.google.dev/gemini-api/docs/image-generation): gemini-2.5-flash-image takes ten aspect ratios and
one size (1K); gemini-3.1-flash-image adds 1:4, 4:1, 1:8, 8:1 and takes 512, 1K, 2K, 4K;
gemini-3-pro-image takes the ten ratios at 1K, 2K, 4K. Other model ids take all of them. A ratio or
size the model lacks is a 400 INVALID_ARGUMENT, as is an inline image part that is not an image.
Output types: Vertex takes `imageConfig.imageOutputOptions.mimeType` (Gemini) and
`parameters.outputOptions.mimeType` (Imagen), PNG or JPEG; the Gemini API knows no
imageOutputOptions (400, "Unknown name") and answers PNG.

Behaviours are scripted per request with `fake.script.append("kind[:arg]")`; an empty script
means "ok". Kinds: ok, slow:SECONDS, moderated, partial (Imagen: the last image filtered),
prompt_blocked / no_image / thought_image (Gemini), empty, not_image, malformed, 429[:RETRY_AFTER],
500, 503, 404, 400, 400_safety, 401, 403.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.helpers import free_port, serve_app

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
IMAGEN_ASPECTS = {"1:1", "3:4", "4:3", "9:16", "16:9"}
GEMINI_ASPECTS = {"1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"}
WIDE_ASPECTS = GEMINI_ASPECTS | {"1:4", "4:1", "1:8", "8:1"}
# Each Gemini image model's aspect ratios and image sizes; a model not listed takes all of them.
GEMINI_MODELS = {
    "gemini-2.5-flash-image": (GEMINI_ASPECTS, {"1K"}),
    "gemini-3.1-flash-image": (WIDE_ASPECTS, {"512", "1K", "2K", "4K"}),
    "gemini-3-pro-image": (GEMINI_ASPECTS, {"1K", "2K", "4K"}),
}
ANY_GEMINI = (WIDE_ASPECTS, {"512", "1K", "2K", "4K"})
INPUT_TYPES = {"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"}
OUTPUT_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG"}
# Small stand-ins for the real sizes, same aspect ratios (1:1 → 1024×1024 at the provider).
SIZES = {"1:1": (32, 32), "3:4": (24, 32), "4:3": (32, 24), "9:16": (18, 32), "16:9": (32, 18),
         "2:3": (20, 30), "3:2": (30, 20), "4:5": (24, 30), "5:4": (30, 24), "21:9": (42, 18),
         "1:4": (8, 32), "4:1": (32, 8), "1:8": (4, 32), "8:1": (32, 4)}
RAI_REASON = ("Your current safety filter threshold filtered out 1 generated images. You will not be charged for "
              "blocked images. Try rephrasing the prompt. Support codes: 58061214")
PROMPT_REFUSED = ("Image generation failed with the following error: The prompt could not be submitted. This prompt "
                  "contains sensitive words that violate Google's Responsible AI practices. Try rephrasing the "
                  "prompt. Support codes: 42876398")

PATH = re.compile(
    r"^/(?P<version>v\d+[a-z0-9]*)/"
    r"(?:(?:projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/)?publishers/google/models/"
    r"|(?P<gemini_api>models/))"
    r"(?P<model>[^/:]+):(?P<method>predict|generateContent)$"
)


@dataclass
class Recorded:
    path: str
    method: str  # "predict" or "generateContent"
    api: str  # "vertex", "vertex-express" or "gemini"
    model: str
    project: str | None
    location: str | None
    headers: dict[str, str]
    body: Any

    @property
    def images(self) -> list[tuple[str, bytes]]:
        """The inline image parts of a generateContent request: (mimeType, bytes), in order."""
        parts = (self.body.get("contents") or [{}])[0].get("parts") or []
        return [(mime_of(p["inlineData"]), unb64(p["inlineData"]["data"])) for p in parts if "inlineData" in p]

    @property
    def text(self) -> str:
        parts = (self.body.get("contents") or [{}])[0].get("parts") or []
        return "".join(p["text"] for p in parts if "text" in p)


@dataclass
class FakeGoogle:
    api_key: str = "fake-google-key-0123456789"
    token: str = "ya29.fake-access-token-abcdef"
    script: list[str] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self.app = Starlette(routes=[Route("/token", self.token_endpoint, methods=["POST"]),
                                     Route("/{rest:path}", self.handle, methods=["GET", "POST"])])
        self.base_url = ""

    async def __aenter__(self) -> FakeGoogle:
        port = free_port()
        self.server, self.task = await serve_app(self.app, port, lifespan="off")
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        await self.task

    # --- endpoints ---------------------------------------------------------------------------

    async def token_endpoint(self, request: Request) -> Response:
        """Google's OAuth token endpoint for a service account: a signed JWT in, an access token out."""
        async with request.form() as received:
            form = {k: str(v) for k, v in received.items()}
        self.token_requests.append(form)
        assertion = form.get("assertion", "").split(".")
        if form.get("grant_type") != JWT_GRANT or len(assertion) != 3:
            return JSONResponse({"error": "invalid_grant", "error_description": "Bad Request"}, status_code=400)
        claims = json.loads(base64.urlsafe_b64decode(assertion[1] + "=" * (-len(assertion[1]) % 4)))
        # google-auth always addresses the assertion to Google's token URI, whichever token_uri it posts to.
        if (claims.get("aud") != "https://oauth2.googleapis.com/token"
                or "cloud-platform" not in claims.get("scope", "")
                or not str(claims.get("iss", "")).endswith(".iam.gserviceaccount.com")):
            return JSONResponse({"error": "invalid_grant", "error_description": "Invalid JWT"}, status_code=400)
        return JSONResponse({"access_token": self.token, "expires_in": 3599, "token_type": "Bearer"})

    async def handle(self, request: Request) -> Response:
        match = PATH.match(request.url.path)
        if request.method != "POST" or not match:
            return error(404, "NOT_FOUND", f"The requested URL {request.url.path} was not found on this server.")
        api = "gemini" if match["gemini_api"] else ("vertex" if match["project"] else "vertex-express")
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.requests.append(Recorded(request.url.path, match["method"], api, match["model"], match["project"],
                                      match["location"], {k.lower(): v for k, v in request.headers.items()}, body))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request, api, match["method"], body)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: Request, api: str, method: str, body: Any) -> Response:
        refused = self._check_auth(request, api)
        if refused is not None:
            return refused
        if not isinstance(body, dict):
            return error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        kind, _, arg = (self.script.pop(0) if self.script else "ok").partition(":")
        if kind == "slow":
            await asyncio.sleep(float(arg))
            kind = "ok"
        if kind == "429":
            headers = {"Retry-After": arg} if arg else {}
            return error(429, "RESOURCE_EXHAUSTED", "Quota exceeded for aiplatform.googleapis.com/"
                         "generate_content_requests_per_minute_per_project_per_base_model.", headers=headers)
        if kind in ("500", "503"):
            status = "INTERNAL" if kind == "500" else "UNAVAILABLE"
            return error(int(kind), status, "The service is currently unavailable.")
        if kind == "404":
            model = request.url.path.rsplit("/", 1)[-1].split(":")[0]
            return error(404, "NOT_FOUND", f"Publisher Model `projects/secret-project/locations/us-central1/"
                         f"publishers/google/models/{model}` was not found or your project does not have access.")
        if kind == "400":
            return error(400, "INVALID_ARGUMENT", "Request contains an invalid argument: the prompt for "
                         "projects/secret-project is too long.")
        if kind == "400_safety":
            return error(400, "INVALID_ARGUMENT", PROMPT_REFUSED)
        if kind == "401":
            return error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if kind == "403":
            return error(403, "PERMISSION_DENIED", "Permission 'aiplatform.endpoints.predict' denied on resource.")
        if kind == "malformed":
            return Response('{"predictions": [ {"bytesBase64Enc', media_type="application/json")
        if method == "predict":
            return self._predict(body, kind)
        return self._generate_content(body, kind, api, request.url.path.rsplit("/", 1)[-1].split(":")[0])

    def _check_auth(self, request: Request, api: str) -> Response | None:
        key = request.headers.get("x-goog-api-key")
        bearer = request.headers.get("authorization", "")
        if api == "vertex":
            if bearer != f"Bearer {self.token}":
                return error(401, "UNAUTHENTICATED", "Request is missing required authentication credential. "
                             "Expected OAuth 2 access token, login cookie or other valid authentication credential.")
            return None
        if not key:
            return error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers without "
                         "established identity). Please use API Key or other form of API consumer identity.")
        if key != self.api_key:
            return error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                         details=[{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                                   "domain": "googleapis.com"}])
        return None

    def _predict(self, body: dict, kind: str) -> Response:
        instances, params = body.get("instances"), body.get("parameters") or {}
        if not (isinstance(instances, list) and len(instances) == 1 and instances[0].get("prompt")):
            return error(400, "INVALID_ARGUMENT", "instances[0].prompt is required.")
        count = params.get("sampleCount", 4)
        aspect = params.get("aspectRatio", "1:1")
        if not isinstance(count, int) or not 1 <= count <= 4:
            return error(400, "INVALID_ARGUMENT", "sampleCount must be between 1 and 4.")
        if aspect not in IMAGEN_ASPECTS:
            return error(400, "INVALID_ARGUMENT", f"Unsupported aspect ratio {aspect}.")
        if "seed" in params and params.get("addWatermark", True):
            return error(400, "INVALID_ARGUMENT", "Seed is not supported when watermark is enabled.")
        if params.get("sampleImageSize", "1K").upper() not in ("1K", "2K"):
            return error(400, "INVALID_ARGUMENT", f"Unsupported sample image size {params['sampleImageSize']}.")
        mime = (params.get("outputOptions") or {}).get("mimeType", "image/png")
        if mime not in OUTPUT_TYPES:
            return error(400, "INVALID_ARGUMENT", f"Unsupported output mime type {mime}.")
        seed = params.get("seed", 0)
        with_reason = bool(params.get("includeRaiReason"))
        predictions: list[dict] = [{"bytesBase64Encoded": b64(image_png(aspect, seed + i, OUTPUT_TYPES[mime])),
                                    "mimeType": mime} for i in range(count)]
        if kind == "partial":
            predictions = predictions[:-1] + ([{"raiFilteredReason": RAI_REASON}] if with_reason else [])
        elif kind == "moderated":
            predictions = [{"raiFilteredReason": RAI_REASON}] if with_reason else []
        elif kind == "empty":
            predictions = []
        elif kind == "not_image":
            predictions = [{"bytesBase64Encoded": b64(b"<html>not an image</html>"), "mimeType": "image/png"}]
        return JSONResponse({"predictions": predictions} if predictions else {})

    def _generate_content(self, body: dict, kind: str, api: str, model: str) -> Response:
        contents = body.get("contents")
        config = body.get("generationConfig") or {}
        if not (isinstance(contents, list) and contents and contents[0].get("parts")):
            return error(400, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not specified")
        for part in contents[0]["parts"]:
            if "inlineData" in part and not readable_image(part["inlineData"]):
                return error(400, "INVALID_ARGUMENT", "Unable to process input image. Please retry or report in "
                             "https://developers.generativeai.google/guide/troubleshooting")
        image_config = config.get("imageConfig") or {}
        aspects, sizes = GEMINI_MODELS.get(model, ANY_GEMINI)
        aspect = image_config.get("aspectRatio", "1:1")
        if aspect not in aspects:
            return error(400, "INVALID_ARGUMENT", f"Unsupported aspect ratio {aspect} for {model}.")
        if image_config.get("imageSize", "1K") not in sizes:
            return error(400, "INVALID_ARGUMENT", f"Unsupported image size {image_config['imageSize']} for {model}.")
        options = image_config.get("imageOutputOptions")
        if options is not None and api == "gemini":
            return error(400, "INVALID_ARGUMENT", 'Invalid JSON payload received. Unknown name "imageOutputOptions" '
                         "at 'generation_config.image_config': Cannot find field.")
        mime = (options or {}).get("mimeType", "image/png")
        if mime not in OUTPUT_TYPES:
            return error(400, "INVALID_ARGUMENT", f"Unsupported output mime type {mime}.")
        seed = config.get("seed", 0)
        image = {"inlineData": {"mimeType": mime, "data": b64(image_png(aspect, seed, OUTPUT_TYPES[mime]))}}
        usage = {"promptTokenCount": 12, "candidatesTokenCount": 1290, "totalTokenCount": 1302}
        if kind == "prompt_blocked":
            return JSONResponse({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": usage})
        if kind == "moderated":
            candidate = {"finishReason": "IMAGE_SAFETY", "index": 0,
                         "finishMessage": "Unable to show the generated image."}
        elif kind == "no_image":
            candidate = {"content": {"role": "model", "parts": [{"text": "Here is a poem instead of a picture."}]},
                         "finishReason": "STOP", "index": 0}
        elif kind == "thought_image":
            draft = {"inlineData": {"mimeType": "image/png", "data": b64(image_png(aspect, seed + 999))},
                     "thought": True}
            candidate = {"content": {"role": "model", "parts": [draft, image]}, "finishReason": "STOP", "index": 0}
        elif kind == "not_image":
            bad = {"inlineData": {"mimeType": "image/png", "data": b64(b"GIF89a not really")}}
            candidate = {"content": {"role": "model", "parts": [bad]}, "finishReason": "STOP", "index": 0}
        elif kind == "empty":
            return JSONResponse({"usageMetadata": usage})
        else:
            candidate = {"content": {"role": "model", "parts": [image]}, "finishReason": "STOP", "index": 0}
        return JSONResponse({"candidates": [candidate], "usageMetadata": usage, "modelVersion": "fake"})


def error(code: int, status: str, message: str, *, details: list | None = None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=code, headers=headers)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def mime_of(inline: dict) -> str | None:
    """An inlineData part's type. The SDK writes its inner key in snake_case (`mime_type`); Google's
    JSON parser takes either spelling of a field name."""
    return inline.get("mimeType", inline.get("mime_type"))


def unb64(text: str) -> bytes:
    """Bytes from base64 as protobuf JSON takes it: the standard alphabet or the URL-safe one (which
    the SDK sends)."""
    return base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)


def image_png(aspect: str, seed: int, fmt: str = "PNG") -> bytes:
    """A small image (PNG unless `fmt` says JPEG) of the aspect's shape whose colour encodes the seed."""
    buffer = io.BytesIO()
    colour = (seed % 256, (seed // 256) % 256, (seed // 65536) % 256)
    Image.new("RGB", SIZES[aspect], colour).save(buffer, format=fmt)
    return buffer.getvalue()


def readable_image(inline: Any) -> bool:
    """Whether an inlineData part is an image of a type Gemini takes, as its mimeType says."""
    if not isinstance(inline, dict) or mime_of(inline) not in INPUT_TYPES:
        return False
    try:
        image = Image.open(io.BytesIO(unb64(inline.get("data") or "")))
        image.load()
    except Exception:
        return False
    return Image.MIME.get(image.format or "") == mime_of(inline)
