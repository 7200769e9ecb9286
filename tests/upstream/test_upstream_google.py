"""The `google` (Imagen on Vertex AI) and `gemini-image` backends, through the real google-genai SDK,
against a fake Google API on loopback (tests/upstream/fake_google.py)."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import AsyncIterator

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
from tests.helpers import free_port

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


# --- Both ------------------------------------------------------------------------------------


def test_registration_and_options():
    assert backend_class("google") is GoogleImagenBackend
    assert backend_class("gemini-image") is GeminiImageBackend
    for cls in (GoogleImagenBackend, GeminiImageBackend):
        assert cls.models == frozenset({"google/imagen4-fast", "z-image"})
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
