"""The `google` (Imagen on Vertex AI) and `gemini-image` backends, through the real google-genai SDK,
against a fake Google API on loopback (tests/upstream/fake_google.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import time
from collections.abc import AsyncIterator

import httpx
import pytest

# The [google] extra: without google-genai these tests skip instead of failing one by one.
pytest.importorskip("google.genai")

from fake_google import PROMPT_REFUSED, RAI_REASON, FakeGoogle
from PIL import Image

from safelight.backends import BackendConfig, backend_class
from safelight.backends.base import (
    BackendContext,
    BackendError,
    Job,
)
from safelight.backends.upstream.gemini_image import GeminiImageBackend
from safelight.backends.upstream.google import GoogleImagenBackend
from safelight.backends.upstream.provider import PROVIDER_UNAVAILABLE
from safelight.catalog import GenerationParams, get_model, validate_input
from safelight.kie import FailCode
from safelight.net import OutboundPolicy
from safelight.worker.worker import pick_seeds
from tests.helpers import free_port, png_bytes, start_server

IMAGEN = "imagen-4.0-fast-generate-001"
GEMINI = "gemini-3.1-flash-image"
VERTEX_PREDICT = f"/v1beta1/projects/proj-test/locations/us-central1/publishers/google/models/{IMAGEN}:predict"
GEMINI_API_PATH = f"/v1/models/{GEMINI}:generateContent"


@pytest.fixture(autouse=True)
def clean_google_env(monkeypatch):
    """The SDK and google-auth read these from the process environment; tests must not depend on them."""
    for name in ("GOOGLE_API_KEY", "GEMINI_API_KEY", "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION",
                 "GOOGLE_GENAI_API_VERSION", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE",
                 "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_GENAI_HTTP_CLIENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # google.auth.default never probes a metadata server


@pytest.fixture
async def fake() -> AsyncIterator[FakeGoogle]:
    async with FakeGoogle() as server:
        yield server


@pytest.fixture
async def opened() -> AsyncIterator[list]:
    """Backends a test started; closed at teardown."""
    backends: list = []
    yield backends
    for backend in backends:
        await backend.close()


def context(fake: FakeGoogle) -> BackendContext:
    return BackendContext(policy=OutboundPolicy.from_string("127.0.0.1/32"),
                          env={"GOOGLE_KEY": fake.api_key, "GOOGLE_TOKEN": fake.token, "WRONG_KEY": "wrong-key-98765",
                               "WRONG_TOKEN": "ya29.wrong-token-55555"})


async def imagen(fake: FakeGoogle, opened: list, **options) -> GoogleImagenBackend:
    options = {"project": "proj-test", "access_token_env": "GOOGLE_TOKEN", "base_url": fake.base_url,
               "backoff_seconds": 0.01, **options}
    options = {k: v for k, v in options.items() if v is not None}
    backend = GoogleImagenBackend("vertex-imagen", BackendConfig(type="google", **options), context(fake))
    await backend.start()
    opened.append(backend)
    return backend


async def gemini(fake: FakeGoogle, opened: list, **options) -> GeminiImageBackend:
    options = {"api_key_env": "GOOGLE_KEY", "base_url": fake.base_url, "backoff_seconds": 0.01, **options}
    options = {k: v for k, v in options.items() if v is not None}
    backend = GeminiImageBackend("gemini", BackendConfig(type="gemini-image", **options), context(fake))
    await backend.start()
    opened.append(backend)
    return backend


def params(model: str = "google/imagen4-fast", **raw) -> GenerationParams:
    spec = get_model(model)
    return spec.to_params(validate_input(spec, {"prompt": "a lighthouse at dusk", **raw}))


def job(p: GenerationParams, seed: int = 1234) -> Job:
    return Job(task_id="task-1", params=p, seeds=[seed + i for i in range(p.num_images)])


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image.size


def seed_of(data: bytes) -> int:
    """The fake paints each image in a colour that encodes the seed it was made with."""
    r, g, b = Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0))
    return r + 256 * g + 65536 * b


async def failure(backend, j: Job) -> BackendError:
    with pytest.raises(BackendError) as caught:
        await backend.generate(j)
    return caught.value


# --- Imagen on Vertex ------------------------------------------------------------------------


async def test_imagen_sends_the_documented_predict_request(fake, opened):
    backend = await imagen(fake, opened)
    p = params(negative_prompt="fog, people", aspect_ratio="9:16", num_images="3", seed=1234)
    images = await backend.generate(job(p))

    [request] = fake.requests
    assert request.path == VERTEX_PREDICT
    assert request.headers["authorization"] == f"Bearer {fake.token}"
    assert "x-goog-api-key" not in request.headers
    assert request.body == {
        "instances": [{"prompt": "a lighthouse at dusk"}],
        "parameters": {"sampleCount": 3, "aspectRatio": "9:16", "negativePrompt": "fog, people", "seed": 1234,
                       "addWatermark": False, "personGeneration": "ALLOW_ADULT", "includeRaiReason": True,
                       "outputOptions": {"mimeType": "image/png"}},
    }
    assert len(images) == 3
    assert [png_size(i.data) for i in images] == [(18, 32)] * 3
    # Imagen derives per-image seeds; each image is labelled seeds[0] + i.
    assert [i.seed for i in images] == [1234, 1235, 1236]
    assert [seed_of(i.data) for i in images] == [1234, 1235, 1236]
    assert {(i.content_type, i.extension) for i in images} == {("image/png", "png")}


async def test_imagen_auto_aspect_and_empty_negative_are_omitted(fake, opened):
    backend = await imagen(fake, opened, image_size="2K")
    images = await backend.generate(job(params(aspect_ratio="auto"), seed=7))
    sent = fake.requests[0].body["parameters"]
    assert "aspectRatio" not in sent and "negativePrompt" not in sent
    assert sent["sampleCount"] == 1 and sent["seed"] == 7 and sent["sampleImageSize"] == "2K"
    assert png_size(images[0].data) == (32, 32)


async def test_imagen_serves_z_image_and_folds_large_seeds(fake, opened):
    backend = await imagen(fake, opened)
    p = params("z-image", aspect_ratio="16:9")
    images = await backend.generate(job(p, seed=2**32 + 5))
    sent = fake.requests[0].body
    assert sent["instances"] == [{"prompt": "a lighthouse at dusk"}]
    assert sent["parameters"]["aspectRatio"] == "16:9"
    assert sent["parameters"]["seed"] == 5  # folded into Google's 32-bit seed range
    assert images[0].seed == 2**32 + 5 and png_size(images[0].data) == (32, 18)


async def test_imagen_express_mode_uses_the_api_key_header(fake, opened):
    backend = await imagen(fake, opened, access_token_env=None, project=None, api_key_env="GOOGLE_KEY")
    images = await backend.generate(job(params()))
    [request] = fake.requests
    assert request.path == f"/v1beta1/publishers/google/models/{IMAGEN}:predict"
    assert request.headers["x-goog-api-key"] == fake.api_key
    assert "authorization" not in request.headers
    assert len(images) == 1


def service_account_file(tmp_path, fake: FakeGoogle) -> str:
    """A service-account key file whose token_uri is the fake's token endpoint."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "adc-project", "private_key_id": "k1", "private_key": pem,
        "client_email": "imagen@adc-project.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": f"{fake.base_url}/token",
    }))
    return str(path)


async def test_imagen_with_application_default_credentials(fake, opened, tmp_path, monkeypatch):
    """No key, no token option: google.auth.default() finds the service account (and its project),
    and the SDK gets an access token from its token_uri (the fake) before the call."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", service_account_file(tmp_path, fake))
    backend = await imagen(fake, opened, access_token_env=None, project=None)
    images = await backend.generate(job(params()))
    images += await backend.generate(job(params()))
    assert len(fake.token_requests) == 1  # the token is reused until it expires
    assert fake.token_requests[0]["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert [r.headers["authorization"] for r in fake.requests] == [f"Bearer {fake.token}"] * 2
    assert fake.requests[0].path == VERTEX_PREDICT.replace("proj-test", "adc-project")
    assert len(images) == 2


async def test_imagen_without_credentials_fails_at_start(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    backend = GoogleImagenBackend("vertex-imagen", BackendConfig(type="google", project="p", base_url=fake.base_url),
                                  context(fake))
    with pytest.raises(BackendError) as caught:
        await backend.start()
    assert caught.value.fail_code == FailCode.UNAVAILABLE and caught.value.transient
    assert "Application Default Credentials" in caught.value.detail

    unset = GoogleImagenBackend("vertex-imagen", BackendConfig(type="google", project="p", access_token_env="NOPE"),
                                context(fake))
    with pytest.raises(BackendError) as caught:
        await unset.start()
    assert caught.value.transient and "NOPE" in caught.value.detail


async def test_imagen_all_filtered_is_moderated(fake, opened):
    backend = await imagen(fake, opened)
    fake.script.append("moderated")
    error = await failure(backend, job(params(num_images="2")))
    assert (error.fail_code, error.transient) == (FailCode.MODERATED, False)
    assert "safety filter" in error.message and "Support codes: 58061214" in error.message


async def test_imagen_fewer_images_than_asked_is_moderated(fake, opened):
    backend = await imagen(fake, opened)
    fake.script.append("partial")
    error = await failure(backend, job(params(num_images="3")))
    assert (error.fail_code, error.transient) == (FailCode.MODERATED, False)
    assert RAI_REASON[:40] in error.message
    assert "2 of 3" in error.detail


async def test_imagen_prompt_refused_with_400_is_moderated(fake, opened):
    backend = await imagen(fake, opened)
    fake.script.append("400_safety")
    error = await failure(backend, job(params()))
    assert (error.fail_code, error.transient) == (FailCode.MODERATED, False)
    assert "Responsible AI" in error.message and PROMPT_REFUSED[-20:] in error.message


async def test_imagen_invalid_argument_is_a_permanent_input_error(fake, opened):
    backend = await imagen(fake, opened)
    fake.script.append("400")
    error = await failure(backend, job(params()))
    assert (error.fail_code, error.transient) == (FailCode.INPUT, False)
    assert error.message.startswith("the provider rejected the request: Request contains an invalid argument")
    assert "secret-project" not in error.message  # project paths are scrubbed from user-facing text
    assert len(fake.requests) == 1


@pytest.mark.parametrize("mode", ["401", "403"])
async def test_imagen_auth_refusal_is_the_operators_problem(fake, opened, mode):
    backend = await imagen(fake, opened)
    fake.script.append(mode)
    error = await failure(backend, job(params()))
    assert (error.fail_code, error.transient, error.message) == (FailCode.UNAVAILABLE, True, PROVIDER_UNAVAILABLE)
    assert f"HTTP {mode}" in error.detail and "credentials" in error.detail
    assert len(fake.requests) == 1  # not retried


async def test_imagen_wrong_token_and_wrong_key(fake, opened):
    backend = await imagen(fake, opened, access_token_env="WRONG_TOKEN")
    error = await failure(backend, job(params()))
    assert (error.fail_code, error.transient) == (FailCode.UNAVAILABLE, True)
    assert "UNAUTHENTICATED" in error.detail

    # Google answers a bad API key with 400 INVALID_ARGUMENT; that is still not the user's fault.
    express = await imagen(fake, opened, access_token_env=None, project=None, api_key_env="WRONG_KEY")
    error = await failure(express, job(params()))
    assert (error.fail_code, error.transient, error.message) == (FailCode.UNAVAILABLE, True, PROVIDER_UNAVAILABLE)
    assert "API key not valid" in error.detail


async def test_imagen_retired_model_points_the_operator_at_gemini(fake, opened):
    backend = await imagen(fake, opened)
    fake.script.append("404")
    error = await failure(backend, job(params()))
    assert (error.fail_code, error.transient, error.message) == (FailCode.UNAVAILABLE, True, PROVIDER_UNAVAILABLE)
    assert "gemini-image" in error.detail and "2026-08-17" in error.detail
    assert len(fake.requests) == 1


async def test_imagen_429_waits_for_retry_after_then_succeeds(fake, opened):
    backend = await imagen(fake, opened, backoff_seconds=5.0)  # the provider's Retry-After wins over backoff
    fake.script.extend(["429:0.3", "ok"])
    started = time.monotonic()
    images = await backend.generate(job(params(num_images="2")))
    elapsed = time.monotonic() - started
    assert len(images) == 2 and len(fake.requests) == 2
    assert 0.3 <= elapsed < 2.0
    assert fake.requests[0].body == fake.requests[1].body


async def test_imagen_retry_after_is_capped_by_max_wait(fake, opened):
    backend = await imagen(fake, opened, max_wait_seconds=0.05)
    fake.script.extend(["429:3600", "ok"])
    started = time.monotonic()
    assert len(await backend.generate(job(params()))) == 1
    assert time.monotonic() - started < 1.0


async def test_imagen_429_beyond_the_budget_is_transient(fake, opened):
    backend = await imagen(fake, opened, retries=2)
    fake.script.extend(["429"] * 5)
    error = await failure(backend, job(params()))
    assert (error.fail_code, error.transient, error.message) == (FailCode.UNAVAILABLE, True, PROVIDER_UNAVAILABLE)
    assert "RESOURCE_EXHAUSTED" in error.detail and "gave up after 3 attempts" in error.detail
    assert len(fake.requests) == 3


@pytest.mark.parametrize("mode", ["500", "503"])
async def test_imagen_server_errors_are_retried(fake, opened, mode):
    backend = await imagen(fake, opened)
    fake.script.extend([mode, "ok"])
    assert len(await backend.generate(job(params()))) == 1
    assert len(fake.requests) == 2

    fake.script.extend([mode] * 3)
    error = await failure(backend, job(params()))
    assert (error.fail_code, error.transient) == (FailCode.UNAVAILABLE, True)
    assert f"HTTP {mode}" in error.detail and len(fake.requests) == 5


async def test_imagen_timeout_is_transient_and_not_retried(fake, opened):
    backend = await imagen(fake, opened, timeout_seconds=0.2)
    fake.script.append("slow:0.6")
    started = time.monotonic()
    error = await failure(backend, job(params()))
    assert (error.fail_code, error.transient) == (FailCode.TIMEOUT, True)
    assert time.monotonic() - started < 0.55
    assert len(fake.requests) == 1


async def test_imagen_connection_refused_is_transient(fake, opened):
    backend = await imagen(fake, opened, base_url=f"http://127.0.0.1:{free_port()}", retries=1)
    error = await failure(backend, job(params()))
    assert (error.fail_code, error.transient) == (FailCode.UNAVAILABLE, True)
    assert "could not connect" in error.detail and "gave up after 2 attempts" in error.detail


@pytest.mark.parametrize("mode", ["malformed", "empty", "not_image"])
async def test_imagen_malformed_responses_are_transient(fake, opened, mode):
    backend = await imagen(fake, opened)
    fake.script.append(mode)
    error = await failure(backend, job(params()))
    assert (error.fail_code, error.transient) == (FailCode.GENERATION, True)
    assert "malformed" in error.message


# --- Gemini image ----------------------------------------------------------------------------


def thinking_level(body: dict) -> str | None:
    """The SDK sends thinkingConfig's inner key in snake_case; Google's JSON parser takes either spelling."""
    config = body["generationConfig"].get("thinkingConfig") or {}
    return config.get("thinkingLevel", config.get("thinking_level"))


async def test_gemini_makes_one_call_per_image_with_folded_negative_prompt(fake, opened):
    backend = await gemini(fake, opened)
    fake.script.extend(["slow:0.2", "slow:0.2", "slow:0.2"])
    p = params(negative_prompt="fog, people", aspect_ratio="4:3", num_images="3", seed=40)
    images = await backend.generate(job(p, seed=40))

    assert len(fake.requests) == 3 and fake.max_in_flight == 3  # concurrent
    for request in fake.requests:
        assert request.path == GEMINI_API_PATH and request.api == "gemini"
        assert request.headers["x-goog-api-key"] == fake.api_key and "authorization" not in request.headers
        assert request.body["contents"] == [{"role": "user",
                                             "parts": [{"text": "a lighthouse at dusk\n\nAvoid: fog, people"}]}]
        config = dict(request.body["generationConfig"])
        assert config.pop("seed") in {40, 41, 42}
        assert config == {"responseModalities": ["IMAGE"], "imageConfig": {"aspectRatio": "4:3", "imageSize": "1K"}}
    assert sorted(r.body["generationConfig"]["seed"] for r in fake.requests) == [40, 41, 42]
    assert [i.seed for i in images] == [40, 41, 42]
    assert [seed_of(i.data) for i in images] == [40, 41, 42]
    assert [png_size(i.data) for i in images] == [(32, 24)] * 3


async def test_gemini_auto_aspect_thinking_level_and_no_negative(fake, opened):
    backend = await gemini(fake, opened, thinking_level="MINIMAL", image_size="2K", model="gemini-3-pro-image")
    images = await backend.generate(job(params(aspect_ratio="auto"), seed=9))
    [request] = fake.requests
    assert request.path == "/v1/models/gemini-3-pro-image:generateContent"
    assert request.body["contents"][0]["parts"] == [{"text": "a lighthouse at dusk"}]
    assert request.body["generationConfig"]["imageConfig"] == {"imageSize": "2K"}
    assert thinking_level(request.body) == "MINIMAL"
    assert images[0].seed == 9 and png_size(images[0].data) == (32, 32)


async def test_gemini_on_vertex_with_a_token(fake, opened):
    backend = await gemini(fake, opened, vertexai=True, api_key_env=None, access_token_env="GOOGLE_TOKEN",
                           project="proj-test")
    images = await backend.generate(job(params("z-image", aspect_ratio="1:1"), seed=3))
    [request] = fake.requests
    assert request.path == (f"/v1beta1/projects/proj-test/locations/global/publishers/google/models/"
                            f"{GEMINI}:generateContent")
    assert request.headers["authorization"] == f"Bearer {fake.token}"
    assert request.body["generationConfig"]["seed"] == 3
    assert len(images) == 1


async def test_gemini_skips_thought_images(fake, opened):
    backend = await gemini(fake, opened)
    fake.script.append("thought_image")
    [image] = await backend.generate(job(params(), seed=77))
    assert seed_of(image.data) == 77  # not the draft (seed + 999)


@pytest.mark.parametrize("mode, reason", [("moderated", "IMAGE_SAFETY"), ("prompt_blocked", "PROHIBITED_CONTENT")])
async def test_gemini_safety_blocks_are_moderated(fake, opened, mode, reason):
    backend = await gemini(fake, opened)
    fake.script.append(mode)
    error = await failure(backend, job(params()))
    assert (error.fail_code, error.transient) == (FailCode.MODERATED, False)
    assert reason in error.message and "safety filter" in error.message


async def test_gemini_one_moderated_call_fails_the_task_permanently(fake, opened):
    backend = await gemini(fake, opened, retries=1)
    fake.script.extend(["503", "moderated", "ok", "503"])  # another call runs out of retries: moderation wins
    error = await failure(backend, job(params(num_images="3")))
    assert (error.fail_code, error.transient) == (FailCode.MODERATED, False)


@pytest.mark.parametrize("mode", ["no_image", "empty", "malformed", "not_image"])
async def test_gemini_no_image_for_other_reasons_is_transient(fake, opened, mode):
    backend = await gemini(fake, opened)
    fake.script.append(mode)
    error = await failure(backend, job(params()))
    assert (error.fail_code, error.transient) == (FailCode.GENERATION, True)
    if mode == "no_image":
        assert "finishReason STOP" in error.detail and "a poem" in error.detail


async def test_gemini_error_mapping(fake, opened):
    backend = await gemini(fake, opened, retries=1)
    fake.script.extend(["429:0.05", "ok"])
    assert len(await backend.generate(job(params()))) == 1

    cases = [("400", FailCode.INPUT, False), ("400_safety", FailCode.MODERATED, False),
             ("401", FailCode.UNAVAILABLE, True), ("403", FailCode.UNAVAILABLE, True),
             ("404", FailCode.UNAVAILABLE, True)]
    for mode, code, transient in cases:
        fake.script.append(mode)
        error = await failure(backend, job(params()))
        assert (mode, error.fail_code, error.transient) == (mode, code, transient)

    fake.script.extend(["500", "500"])
    error = await failure(backend, job(params()))
    assert (error.fail_code, error.transient) == (FailCode.UNAVAILABLE, True) and "gave up after 2" in error.detail

    wrong = await gemini(fake, opened, api_key_env="WRONG_KEY")
    error = await failure(wrong, job(params()))
    assert (error.fail_code, error.transient, error.message) == (FailCode.UNAVAILABLE, True, PROVIDER_UNAVAILABLE)


# --- The Imagen 4 family (Imagen on Vertex) ----------------------------------------------------


def like_the_worker(p: GenerationParams) -> Job:
    """The Job the worker builds: its seeds are the task's seed and successors, or random ones."""
    return Job(task_id="task-1", params=p, seeds=pick_seeds(p.seed, p.num_images))


@pytest.mark.parametrize("model, imagen_model", [("google/imagen4", "imagen-4.0-generate-001"),
                                                 ("google/imagen4-ultra", "imagen-4.0-ultra-generate-001")])
async def test_imagen4_and_ultra_each_call_their_imagen_model(fake, opened, model, imagen_model):
    backend = await imagen(fake, opened)
    p = params(model, negative_prompt="rain", aspect_ratio="3:4", seed="1234")
    [image] = await backend.generate(like_the_worker(p))
    [request] = fake.requests
    assert request.path == VERTEX_PREDICT.replace(IMAGEN, imagen_model)
    assert request.body == {
        "instances": [{"prompt": "a lighthouse at dusk"}],
        "parameters": {"sampleCount": 1, "aspectRatio": "3:4", "negativePrompt": "rain", "seed": 1234,
                       "addWatermark": False, "personGeneration": "ALLOW_ADULT", "includeRaiReason": True,
                       "outputOptions": {"mimeType": "image/png"}},
    }
    assert image.seed == 1234 and seed_of(image.data) == 1234 and png_size(image.data) == (24, 32)


async def test_imagen4_string_seeds_map_onto_vertex_seeds_deterministically(fake, opened):
    """kie's imagen4 seed is any string up to 500 characters: an integer string is that integer, other
    text a stable hash, both folded into Vertex's 31-bit range; "" sends a fresh seed each time."""
    backend = await imagen(fake, opened)
    text = "blue moon over the harbour " * 18  # 486 characters
    for seed in (text, text, "-7", str(2**40 + 3), "", ""):
        await backend.generate(like_the_worker(params("google/imagen4-ultra", seed=seed)))
    sent = [r.body["parameters"]["seed"] for r in fake.requests]
    hashed = int.from_bytes(hashlib.sha256(text.strip().encode()).digest()[:8], "big") >> 1
    assert sent[:4] == [hashed % 2**31, hashed % 2**31, 2**31 - 7, 3]
    assert all(0 <= s < 2**31 for s in sent) and sent[4] != sent[5]  # no seed: the worker draws one per task


async def test_imagen_model_option_and_model_map(fake, opened):
    backend = await imagen(fake, opened, model="imagen-4.0-fast-generate-002",
                           model_map={"google/imagen4-ultra": "imagen-5.0-ultra"})
    for model in ("google/imagen4-fast", "z-image", "google/imagen4", "google/imagen4-ultra"):
        await backend.generate(job(params(model, aspect_ratio="1:1")))
    assert [r.model for r in fake.requests] == ["imagen-4.0-fast-generate-002", "imagen-4.0-fast-generate-002",
                                                "imagen-4.0-generate-001", "imagen-5.0-ultra"]
    with pytest.raises(ValueError) as caught:
        GoogleImagenBackend.check_options("g", BackendConfig(type="google", model_map={"nano-banana-pro": "x"}))
    assert str(caught.value) == ("backends.g.model_map: 'nano-banana-pro' is not a model this backend serves; it "
                                 "serves google/imagen4, google/imagen4-fast, google/imagen4-ultra, z-image")
    with pytest.raises(ValueError, match="backends.g.model_map: the model id for 'google/imagen4' is empty"):
        GoogleImagenBackend.check_options("g", BackendConfig(type="google", model_map={"google/imagen4": " "}))


async def test_imagen_jpeg_tasks_ask_imagen_for_jpeg(fake, opened):
    backend = await imagen(fake, opened)
    p = dataclasses.replace(params("google/imagen4"), output_format="jpeg")
    [image] = await backend.generate(job(p))
    assert fake.requests[0].body["parameters"]["outputOptions"] == {"mimeType": "image/jpeg"}
    assert (image.content_type, image.extension) == ("image/jpeg", "jpg") and image.data[:3] == b"\xff\xd8\xff"


async def test_a_retired_imagen4_model_names_itself_and_the_way_out(fake, opened):
    backend = await imagen(fake, opened)
    fake.script.append("404")
    error = await failure(backend, job(params("google/imagen4-ultra")))
    assert (error.fail_code, error.transient, error.message) == (FailCode.UNAVAILABLE, True, PROVIDER_UNAVAILABLE)
    assert "'imagen-4.0-ultra-generate-001' was not found" in error.detail
    assert "route google/imagen4-ultra to a `gemini-image` backend" in error.detail and "2026-08-17" in error.detail


# --- The nano-banana family (Gemini) -----------------------------------------------------------


@pytest.mark.parametrize("model, raw, gemini_model, image_config", [
    ("google/nano-banana", {"aspect_ratio": "16:9", "output_format": "jpeg"}, "gemini-2.5-flash-image",
     {"aspectRatio": "16:9"}),
    ("google/nano-banana", {"image_size": "4:5"}, "gemini-2.5-flash-image", {"aspectRatio": "4:5"}),
    ("nano-banana-2", {"aspect_ratio": "8:1", "resolution": "4K"}, "gemini-3.1-flash-image",
     {"aspectRatio": "8:1", "imageSize": "4K"}),
    ("nano-banana-2", {}, "gemini-3.1-flash-image", {"imageSize": "1K"}),  # auto, no input image: Gemini's square
    ("nano-banana-pro", {"aspect_ratio": "21:9", "resolution": "2K"}, "gemini-3-pro-image",
     {"aspectRatio": "21:9", "imageSize": "2K"}),
    ("google/imagen4-ultra", {"aspect_ratio": "9:16", "seed": "5"}, "gemini-3-pro-image",
     {"aspectRatio": "9:16", "imageSize": "1K"}),
    ("google/imagen4", {"aspect_ratio": "auto"}, GEMINI, {"imageSize": "1K"}),
])
async def test_each_model_calls_its_gemini_model_with_its_image_config(fake, opened, model, raw, gemini_model,
                                                                       image_config):
    backend = await gemini(fake, opened, thinking_level="MINIMAL")
    [image] = await backend.generate(like_the_worker(params(model, **raw)))
    [request] = fake.requests
    assert request.path == f"/v1/models/{gemini_model}:generateContent"
    assert request.body["contents"] == [{"role": "user", "parts": [{"text": "a lighthouse at dusk"}]}]
    config = dict(request.body["generationConfig"])
    seed = config.pop("seed")
    assert config.pop("imageConfig") == image_config
    # The thinking level is for the Imagen stand-ins; the nano-banana models keep their own.
    assert thinking_level(request.body) == ("MINIMAL" if model.startswith("google/imagen4") else None)
    config.pop("thinkingConfig", None)
    assert config == {"responseModalities": ["IMAGE"]}
    assert "tools" not in request.body
    assert image.seed % 2**31 == seed and seed_of(image.data) == seed % 2**24  # the colour holds 24 bits
    assert image.content_type == "image/png"  # the Gemini API answers PNG; the worker makes a jpeg task's JPEG


def reference(fmt: str, size: tuple[int, int], colour: tuple[int, int, int]) -> tuple[bytes, str, Image.Image]:
    buffer = io.BytesIO()
    picture = Image.new("RGB", size, colour)
    picture.save(buffer, format=fmt)
    return buffer.getvalue(), f"image/{fmt.lower()}", picture


@pytest.mark.parametrize("model, field", [("google/nano-banana-edit", "image_urls"), ("nano-banana-2", "image_input"),
                                          ("nano-banana-pro", "image_input")])
async def test_reference_images_go_inline_after_the_prompt_in_input_order(fake, opened, model, field):
    backend = await gemini(fake, opened)
    refs = [reference("PNG", (40, 30), (10, 20, 30)), reference("JPEG", (24, 48), (200, 100, 0)),
            reference("WEBP", (16, 16), (0, 90, 0))]
    urls = [f"https://images.example/{i}" for i in range(3)]
    p = params(model, **{field: urls, "aspect_ratio": "auto"})
    j = Job(task_id="t", params=p, seeds=[11], references=[r[2] for r in refs],
            reference_files=[(r[0], r[1]) for r in refs])
    await backend.generate(j)
    [request] = fake.requests
    parts = request.body["contents"][0]["parts"]
    assert parts[0] == {"text": "a lighthouse at dusk"} and len(parts) == 4
    assert request.images == [(r[1], r[0]) for r in refs]  # the fetched bytes, as fetched
    assert "aspectRatio" not in request.body["generationConfig"]["imageConfig"]  # auto: Gemini follows image 1

    # References known only as decoded images are sent as PNG.
    fake.requests.clear()
    await backend.generate(dataclasses.replace(j, reference_files=[]))
    assert [(mime, Image.open(io.BytesIO(data)).size) for mime, data in fake.requests[0].images] == [
        ("image/png", (40, 30)), ("image/png", (24, 48)), ("image/png", (16, 16))]


async def test_references_over_the_inline_limit_fail_naming_the_field(fake, opened):
    backend = await gemini(fake, opened, max_inline_mb=0.001)  # 1000 bytes
    data, mime, picture = reference("PNG", (300, 300), (1, 2, 3))
    p = params("nano-banana-pro", image_input=["https://images.example/a"])
    error = await failure(backend, Job(task_id="t", params=p, seeds=[1], references=[picture],
                                       reference_files=[(data, mime)]))
    assert (error.fail_code, error.transient) == (FailCode.INPUT, False)
    assert error.message.startswith("input.image_input: the images add up to ")
    assert error.message.endswith("MB as sent inline; this provider takes at most 0.001 MB in one request")
    assert fake.requests == []


async def test_nano_banana_2_google_search_is_the_search_tool(fake, opened):
    backend = await gemini(fake, opened)
    await backend.generate(job(params("nano-banana-2", google_search=True, aspect_ratio="1:4")))
    assert fake.requests[0].body["tools"] == [{"googleSearch": {}}]
    assert fake.requests[0].body["generationConfig"]["imageConfig"] == {"aspectRatio": "1:4", "imageSize": "1K"}


@pytest.mark.parametrize("output_format, mime, magic", [("jpg", "image/jpeg", b"\xff\xd8\xff"),
                                                        ("png", "image/png", b"\x89PNG")])
async def test_on_vertex_gemini_is_asked_for_the_output_format(fake, opened, output_format, mime, magic):
    backend = await gemini(fake, opened, vertexai=True, api_key_env=None, access_token_env="GOOGLE_TOKEN",
                           project="proj-test")
    [image] = await backend.generate(job(params("nano-banana-pro", output_format=output_format, resolution="4K")))
    [request] = fake.requests
    assert request.path.endswith("/locations/global/publishers/google/models/gemini-3-pro-image:generateContent")
    assert request.body["generationConfig"]["imageConfig"] == {"aspectRatio": "1:1", "imageSize": "4K",
                                                               "imageOutputOptions": {"mimeType": mime}}
    assert image.content_type == mime and image.data.startswith(magic)


async def test_gemini_model_option_and_model_map(fake, opened):
    backend = await gemini(fake, opened, model="gemini-nano-banana-2.1",
                           model_map={"nano-banana-pro": "gemini-3-pro-image-preview"})
    for model in ("google/imagen4-fast", "z-image", "google/imagen4", "google/imagen4-ultra", "google/nano-banana",
                  "nano-banana-pro"):
        await backend.generate(job(params(model, aspect_ratio="1:1")))
    assert [r.model for r in fake.requests] == ["gemini-nano-banana-2.1"] * 3 + [
        "gemini-3-pro-image", "gemini-2.5-flash-image", "gemini-3-pro-image-preview"]
    with pytest.raises(ValueError) as caught:
        GeminiImageBackend.check_options("g", BackendConfig(type="gemini-image", api_key_env="K",
                                                            model_map={"ideogram/character": "x"}))
    assert str(caught.value).startswith("backends.g.model_map: 'ideogram/character' is not a model this backend "
                                        "serves; it serves google/imagen4, google/imagen4-fast, ")


# --- Both ------------------------------------------------------------------------------------


def test_registration_and_options():
    assert backend_class("google") is GoogleImagenBackend
    assert backend_class("gemini-image") is GeminiImageBackend
    imagen = {"google/imagen4-fast", "google/imagen4", "google/imagen4-ultra", "z-image"}
    assert GoogleImagenBackend.models == frozenset(imagen)
    assert GeminiImageBackend.models == frozenset(imagen | {"google/nano-banana", "google/nano-banana-edit",
                                                            "nano-banana-2", "nano-banana-pro"})
    for cls in (GoogleImagenBackend, GeminiImageBackend):
        assert cls.offers_safety_checker({}) is True
    with pytest.raises(ValueError, match="backends.g.colour"):
        GoogleImagenBackend.check_options("g", BackendConfig(type="google", colour="red"))
    with pytest.raises(ValueError, match="not both"):
        GeminiImageBackend.check_options("g", BackendConfig(type="gemini-image", api_key_env="A",
                                                            access_token_env="B"))
    with pytest.raises(ValueError, match="needs api_key_env"):
        GeminiImageBackend.check_options("g", BackendConfig(type="gemini-image"))
    GeminiImageBackend.check_options("g", BackendConfig(type="gemini-image", vertexai=True, project="p"))
    with pytest.raises(ValueError, match="backends.g.image_size"):
        GoogleImagenBackend.check_options("g", BackendConfig(type="google", image_size="4K"))
    for cls, type_name in ((GoogleImagenBackend, "google"), (GeminiImageBackend, "gemini-image")):
        for old, new in (("timeout", "timeout_seconds"), ("max_wait", "max_wait_seconds")):
            with pytest.raises(ValueError) as caught:
                cls.check_options("g", BackendConfig(type=type_name, api_key_env="K", **{old: 5}))
            assert str(caught.value) == f"backends.g.{old} was renamed to {new}"
    options = GeminiImageBackend("g", BackendConfig(type="gemini-image", api_key_env="K")).options
    assert (options.timeout_seconds, options.retries, options.backoff_seconds,
            options.max_wait_seconds) == (120, 2, 1, 30)


async def test_generate_on_a_backend_never_started_is_an_internal_error(fake):
    backend = GoogleImagenBackend("vertex-imagen", BackendConfig(type="google", project="p", base_url=fake.base_url,
                                                                 access_token_env="GOOGLE_TOKEN"), context(fake))
    with pytest.raises(RuntimeError, match="backend vertex-imagen was not started"):
        await backend.generate(job(params()))
    assert fake.requests == []


async def test_keys_never_reach_logs_or_errors(fake, opened, caplog, tmp_path, monkeypatch):
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "google", "google_genai", "google.auth", "urllib3", "safelight"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    secrets = [fake.api_key, fake.token, "wrong-key-98765", "ya29.wrong-token-55555", "PRIVATE KEY"]
    errors: list[BackendError] = []
    modes = ["400", "400_safety", "401", "403", "404", "429", "500", "503", "malformed", "moderated", "partial",
             "empty", "not_image", "no_image", "prompt_blocked"]

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", service_account_file(tmp_path, fake))
    backends = [
        await imagen(fake, opened, retries=0),
        await imagen(fake, opened, retries=0, access_token_env=None),  # ADC
        await imagen(fake, opened, retries=0, access_token_env=None, project=None, api_key_env="GOOGLE_KEY"),
        await gemini(fake, opened, retries=0),
        await gemini(fake, opened, retries=0, vertexai=True, api_key_env=None, access_token_env="GOOGLE_TOKEN",
                     project="proj-test"),
    ]
    refused = [  # credentials the fake refuses: every call fails on auth
        await imagen(fake, opened, retries=0, access_token_env="WRONG_TOKEN"),
        await imagen(fake, opened, retries=0, access_token_env=None, project=None, api_key_env="WRONG_KEY"),
        await gemini(fake, opened, retries=0, api_key_env="WRONG_KEY"),
    ]
    for backend in backends + refused:
        for mode in ["ok", *modes] if backend in backends else ["ok"]:
            fake.script[:] = [mode]
            try:
                await backend.generate(job(params(num_images="2")))
            except BackendError as exc:
                errors.append(exc)
    assert len(errors) > 40
    assert len(fake.requests) > 80
    assert any("HTTP Request" in r.getMessage() for r in caplog.records if r.name == "httpx")  # httpx did log
    text = caplog.text + "\n".join(f"{e.message}\n{e.detail}\n{e}" for e in errors)
    for secret in secrets:
        assert secret not in text


# --- End to end: createTask -> a live server's worker -> the fake Google -> the stored result --------


FAST = "retries = 1\nbackoff_seconds = 0.01"


@contextlib.asynccontextmanager
async def serving(settings, tmp_path, monkeypatch, fake: FakeGoogle, routing: str):
    """A whole Safelight whose routing file is `routing`, with the fake's credentials in its environment;
    yields (runtime, client) with an account of 1000 credits."""
    monkeypatch.setenv("GOOGLE_TOKEN", fake.token)
    monkeypatch.setenv("GOOGLE_KEY", fake.api_key)
    config = tmp_path / "safelight.toml"
    config.write_text(routing)
    port = free_port()
    settings = settings.model_copy(update={"routing_file": str(config), "port": port,
                                           "public_url": f"http://127.0.0.1:{port}"})
    server, task = await start_server(settings)
    runtime = server.config.app.state.runtime
    key = (await runtime.store.accounts.create_key("google", credits=1000)).key
    client = httpx.AsyncClient(base_url=settings.public_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    try:
        yield runtime, client
    finally:
        await client.aclose()
        server.should_exit = True
        await task


async def finish(client: httpx.AsyncClient, body: dict) -> dict:
    created = (await client.post("/api/v1/jobs/createTask", json=body)).json()
    assert created["code"] == 200, created
    for _ in range(500):
        record = (await client.get("/api/v1/jobs/recordInfo",
                                   params={"taskId": created["data"]["taskId"]})).json()["data"]
        if record["state"] in ("success", "fail"):
            return record
        await asyncio.sleep(0.02)
    raise AssertionError(record)


async def result_file(client: httpx.AsyncClient, record: dict) -> httpx.Response:
    [url] = json.loads(record["resultJson"])["resultUrls"]
    return await client.get(url)


def vertex_backend(fake: FakeGoogle, name: str = "vertex") -> str:
    return (f'[backends.{name}]\ntype = "google"\nproject = "proj-test"\naccess_token_env = "GOOGLE_TOKEN"\n'
            f'base_url = "{fake.base_url}"\n{FAST}\n')


async def test_end_to_end_imagen4_ultra_on_vertex_with_a_string_seed(settings, tmp_path, monkeypatch, fake):
    routing = vertex_backend(fake) + '\n[models."google/imagen4-ultra"]\nroute = ["vertex"]\n'
    async with serving(settings, tmp_path, monkeypatch, fake, routing) as (_runtime, client):
        body = {"model": "google/imagen4-ultra", "input": {"prompt": "a red kite", "negative_prompt": "rain",
                                                           "aspect_ratio": "16:9", "seed": "kite-7"}}
        records = [await finish(client, body), await finish(client, body)]
        assert [(r["state"], r["creditsConsumed"]) for r in records] == [("success", 12)] * 2
        files = [await result_file(client, r) for r in records]
    hashed = int.from_bytes(hashlib.sha256(b"kite-7").digest()[:8], "big") >> 1
    assert [r.model for r in fake.requests] == ["imagen-4.0-ultra-generate-001"] * 2
    # The same string, the same seed, task after task.
    assert [r.body["parameters"]["seed"] for r in fake.requests] == [hashed % 2**31] * 2
    assert fake.requests[0].body["parameters"]["negativePrompt"] == "rain"
    assert files[0].content == files[1].content and png_size(files[0].content) == (32, 18)
    assert files[0].headers["content-type"] == "image/png"


async def test_end_to_end_a_retired_imagen_falls_back_to_gemini(settings, tmp_path, monkeypatch, fake):
    """Google answers 404 for the shut-down Imagen 4: the task moves on to gemini-image and succeeds there."""
    routing = (vertex_backend(fake) + f'\n[backends.gemini]\ntype = "gemini-image"\napi_key_env = "GOOGLE_KEY"\n'
               f'base_url = "{fake.base_url}"\n{FAST}\n\n[models."google/imagen4"]\nroute = ["vertex", "gemini"]\n')
    fake.script.append("404")
    async with serving(settings, tmp_path, monkeypatch, fake, routing) as (runtime, client):
        record = await finish(client, {"model": "google/imagen4", "input": {"prompt": "a red kite",
                                                                            "negative_prompt": "rain"}})
        assert (record["state"], record["creditsConsumed"]) == ("success", 6)
        row = await runtime.store.tasks.get(record["taskId"])
    attempts = json.loads(row["backend_attempts"])
    assert [(a["backend"], a["outcome"]) for a in attempts] == [("vertex", "fallback"), ("gemini", "success")]
    assert [(r.method, r.model) for r in fake.requests] == [("predict", "imagen-4.0-generate-001"),
                                                            ("generateContent", GEMINI)]
    assert fake.requests[1].text == "a red kite\n\nAvoid: rain"
    assert fake.requests[1].body["generationConfig"]["imageConfig"] == {"aspectRatio": "1:1", "imageSize": "1K"}


async def test_end_to_end_nano_banana_pro_edits_fetched_images_on_vertex(settings, tmp_path, monkeypatch, fake,
                                                                        image_server):
    routing = (f'[backends.gemini]\ntype = "gemini-image"\nvertexai = true\nproject = "proj-test"\n'
               f'access_token_env = "GOOGLE_TOKEN"\nbase_url = "{fake.base_url}"\n{FAST}\n\n'
               f'[models."nano-banana-pro"]\nroute = ["gemini"]\n')
    async with serving(settings, tmp_path, monkeypatch, fake, routing) as (_runtime, client):
        record = await finish(client, {"model": "nano-banana-pro", "input": {
            "prompt": "the cat from image 1 on the sofa from image 2", "resolution": "2K", "output_format": "jpg",
            "image_input": [f"{image_server}/img/64x48.png", f"{image_server}/img/40x40.png"]}})
        assert (record["state"], record["creditsConsumed"]) == ("success", 18)
        file = await result_file(client, record)
    [request] = fake.requests
    assert request.api == "vertex" and request.model == "gemini-3-pro-image"
    assert request.text == "the cat from image 1 on the sofa from image 2"
    assert request.images == [("image/png", png_bytes(64, 48)), ("image/png", png_bytes(40, 40))]
    assert request.body["generationConfig"]["imageConfig"] == {"aspectRatio": "1:1", "imageSize": "2K",
                                                               "imageOutputOptions": {"mimeType": "image/jpeg"}}
    assert file.headers["content-type"] == "image/jpeg" and file.content.startswith(b"\xff\xd8\xff")


async def test_end_to_end_nano_banana_edit_on_the_gemini_api(settings, tmp_path, monkeypatch, fake, image_server):
    """The Gemini API returns PNG and takes no output type: a jpeg task's image is re-encoded by the worker."""
    routing = (f'[backends.gemini]\ntype = "gemini-image"\napi_key_env = "GOOGLE_KEY"\nbase_url = "{fake.base_url}"\n'
               f'{FAST}\n\n[models."google/nano-banana-edit"]\nroute = ["gemini"]\n')
    async with serving(settings, tmp_path, monkeypatch, fake, routing) as (_runtime, client):
        record = await finish(client, {"model": "google/nano-banana-edit", "input": {
            "prompt": "make it night", "output_format": "jpeg", "image_size": "3:2",
            "image_urls": [f"{image_server}/img/30x20.png"]}})
        assert (record["state"], record["creditsConsumed"]) == ("success", 8)
        file = await result_file(client, record)
    [request] = fake.requests
    assert (request.api, request.model) == ("gemini", "gemini-2.5-flash-image")
    assert request.images == [("image/png", png_bytes(30, 20))]
    assert request.body["generationConfig"]["imageConfig"] == {"aspectRatio": "3:2"}
    assert file.headers["content-type"] == "image/jpeg" and file.content.startswith(b"\xff\xd8\xff")
