"""The OpenAI Images API (issue 14), driven by the official `openai` SDK against a real server: the
sandbox serves z-image and flux-2, a fake kie.ai serves google/imagen4-fast through the kie backend
(and fails, or blocks, when told to). Every request is an ordinary task: recordInfo shows it, and the
ledger moves as createTask's would."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
from PIL import Image
from pydantic import Field

from safelight.api.openai_images import ImageRequest, build_inputs, size_fields, split_count
from safelight.catalog import MODELS, GenerationParams, ModelInput, ModelSpec
from safelight.routing import RoutingError, load_routing
from safelight.runtime import Runtime
from tests.fake_kie import FakeKie, Script
from tests.helpers import free_port, png_bytes, start_server

KIE_KEY = "kie-upstream-key-for-openai-tests"
RECORD = "/api/v1/jobs/recordInfo"
ROUTING = """
[backends.kie]
type = "kie"
base_url = "{kie}"
api_key_env = "KIE_API_KEY"
poll_interval_seconds = 0.02
max_poll_interval_seconds = 0.05
retries = 1
backoff_seconds = 0.01

[models."google/imagen4-fast"]
route = ["kie"]

[openai.aliases]
"gpt-image-1" = "z-image"
"dall-e-2" = "flux-2/pro-image-to-image"
"""


@dataclass
class Served:
    base_url: str
    runtime: Runtime
    key: str
    account_id: int
    kie: FakeKie
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    def sdk(self, key: str | None = None) -> openai.AsyncOpenAI:
        """The official SDK, pointed at this server. No retries: each request here is meant to be sent once."""
        client = openai.AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key=key or self.key, max_retries=0, timeout=30)
        self.clients.append(client)
        return client

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)

    async def record(self, task_id: str) -> dict[str, Any]:
        async with self.http() as client:
            body = (await client.get(RECORD, params={"taskId": task_id})).json()
        assert body["code"] == 200, body
        return body["data"]

    async def balance(self, account_id: int | None = None) -> int:
        account_id = account_id or self.account_id
        balance = await self.runtime.store.accounts.balance(account_id)
        assert balance == await self.runtime.store.accounts.ledger_sum(account_id)
        return balance


@contextlib.asynccontextmanager
async def serve(settings, tmp_path, monkeypatch, routing: str = ROUTING, **overrides) -> AsyncIterator[Served]:
    monkeypatch.setenv("KIE_API_KEY", KIE_KEY)
    async with FakeKie(api_key=KIE_KEY) as kie:
        config = tmp_path / "safelight.toml"
        config.write_text(routing.format(kie=kie.base_url))
        port = free_port()
        settings = settings.model_copy(update={"routing_file": str(config), "port": port,
                                               "public_url": f"http://127.0.0.1:{port}", **overrides})
        server, task = await start_server(settings)
        runtime: Runtime = server.config.app.state.runtime
        created = await runtime.store.accounts.create_key("openai", credits=1000)
        served = Served(settings.public_url, runtime, created.key, created.account_id, kie)
        try:
            yield served
        finally:
            for client in served.clients:
                await client.close()
            server.should_exit = True
            await task


@pytest.fixture
async def served(settings, tmp_path, monkeypatch) -> AsyncIterator[Served]:
    async with serve(settings, tmp_path, monkeypatch) as it:
        yield it


def image_of(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def task_ids(raw: Any) -> list[str]:
    return raw.headers["x-safelight-task-id"].split(",")


# --- generations ----------------------------------------------------------------------------------


async def test_generate_b64_json_is_a_task_charged_once(settings, tmp_path, monkeypatch, database_url):
    async with serve(settings, tmp_path, monkeypatch, database_url=database_url) as served:
        raw = await served.sdk().images.with_raw_response.generate(model="z-image", prompt="a lighthouse at dusk",
                                                                   size="1024x1024", user="user-7")
        result = raw.parse()
        assert raw.status_code == 200 and result.created > 0 and len(result.data) == 1
        assert result.data[0].url is None
        image = image_of(base64.b64decode(result.data[0].b64_json))
        assert image.format == "PNG" and image.size == (1024, 1024)
        [task_id] = task_ids(raw)
        record = await served.record(task_id)
        assert record["state"] == "success" and record["model"] == "z-image" and record["creditsConsumed"] == 1
        assert json.loads(record["param"]) == {"model": "z-image", "input": {"prompt": "a lighthouse at dusk",
                                                                              "aspect_ratio": "1:1"}}
        assert await served.balance() == 999


async def test_generate_url_is_a_signed_link_to_the_stored_result(served):
    raw = await served.sdk().images.with_raw_response.generate(model="z-image", prompt="harbour", size="1536x1024",
                                                               response_format="url", quality="high",
                                                               output_format="png")
    result = raw.parse()
    [image] = result.data
    assert image.b64_json is None and image.url.startswith(f"{served.base_url}/files/results/")
    async with httpx.AsyncClient() as anonymous:  # a signed link needs no key, as OpenAI's URLs
        fetched = await anonymous.get(image.url)
    assert fetched.status_code == 200 and image_of(fetched.content).size == (1152, 896)  # 3:2 -> z-image's 4:3
    record = await served.record(task_ids(raw)[0])
    assert json.loads(record["param"])["input"]["aspect_ratio"] == "4:3"


async def test_the_sync_client_works_too(served):
    with openai.OpenAI(base_url=f"{served.base_url}/v1", api_key=served.key, max_retries=0, timeout=30) as client:
        result = await asyncio.to_thread(client.images.generate, model="gpt-image-1", prompt="sync", size="auto")
    assert image_of(base64.b64decode(result.data[0].b64_json)).size == (1024, 1024)


async def test_an_alias_and_the_model_list(served):
    sdk = served.sdk()
    raw = await sdk.images.with_raw_response.generate(model="gpt-image-1", prompt="aliased")
    record = await served.record(task_ids(raw)[0])
    assert record["model"] == "z-image" and record["state"] == "success"

    models = await sdk.models.list()
    listed = {model.id: model for model in models.data}
    assert set(MODELS) <= set(listed) and {"gpt-image-1", "dall-e-2"} <= set(listed)
    assert all(model.object == "model" and model.owned_by == "safelight" for model in listed.values())
    assert listed["gpt-image-1"].model_extra["root"] == "z-image"
    assert (await sdk.models.retrieve("flux-2/pro-image-to-image")).id == "flux-2/pro-image-to-image"
    with pytest.raises(openai.NotFoundError) as missing:
        await sdk.models.retrieve("dall-e-3")
    assert missing.value.code == "model_not_found"

    with pytest.raises(openai.NotFoundError) as unknown:
        await sdk.images.generate(model="dall-e-3", prompt="x")
    assert unknown.value.param == "model" and "gpt-image-1 (z-image)" in unknown.value.message
    with pytest.raises(openai.BadRequestError) as omitted:
        await sdk.images.generate(prompt="no model")
    assert omitted.value.param == "model" and "model is required" in omitted.value.message
    # An edit model without images is sent to the edits route.
    with pytest.raises(openai.BadRequestError) as needs_images:
        await sdk.images.generate(model="dall-e-2", prompt="x")
    assert needs_images.value.param == "model" and "/v1/images/edits" in needs_images.value.message


async def test_n_2_is_two_tasks_or_one_task_of_two_images(served):
    sdk = served.sdk()
    # z-image has no num_images: two tasks of one image, each charged once.
    raw = await sdk.images.with_raw_response.generate(model="z-image", prompt="twins", n=2, response_format="url")
    assert len(raw.parse().data) == 2 and len(set(task_ids(raw))) == 2
    for task_id in task_ids(raw):
        assert (await served.record(task_id))["creditsConsumed"] == 1
    assert await served.balance() == 998
    # google/imagen4-fast has num_images: one task of two images (served by kie here).
    raw = await sdk.images.with_raw_response.generate(model="google/imagen4-fast", prompt="pair", n=2)
    result = raw.parse()
    [task_id] = task_ids(raw)
    assert json.loads((await served.record(task_id))["param"])["input"]["num_images"] == "2"
    assert [image_of(base64.b64decode(image.b64_json)).size for image in result.data] == [(32, 24), (33, 24)]
    assert await served.balance() == 998 - 2 * 4


async def test_bad_parameters_are_400s_naming_the_parameter(served):
    sdk = served.sdk()
    with pytest.raises(openai.BadRequestError) as tall:
        await sdk.images.generate(model="z-image", prompt="x", size="1024x4096")
    assert tall.value.param == "size" and tall.value.type == "invalid_request_error"
    assert "1:1 (1024x1024)" in tall.value.message and "9:16 (768x1344)" in tall.value.message
    with pytest.raises(openai.BadRequestError) as garbled:
        await sdk.images.generate(model="z-image", prompt="x", size="big")
    assert garbled.value.param == "size" and "WIDTHxHEIGHT" in garbled.value.message
    with pytest.raises(openai.BadRequestError) as many:
        await sdk.images.generate(model="z-image", prompt="x", n=11)
    assert many.value.param == "n"
    with pytest.raises(openai.BadRequestError) as jpeg:
        await sdk.images.generate(model="z-image", prompt="x", output_format="jpeg")
    assert jpeg.value.param == "output_format"
    # The model's own rules come from admission (createTask's), mapped onto the parameter.
    with pytest.raises(openai.BadRequestError) as long_prompt:
        await sdk.images.generate(model="z-image", prompt="x" * 1001)
    assert long_prompt.value.param == "prompt" and "input.prompt" in long_prompt.value.message
    # Nothing above created a task or moved credits.
    assert await served.runtime.store.tasks.list_for(served.account_id, limit=10) == []
    assert await served.balance() == 1000


async def test_a_bad_key_and_an_unknown_route(served):
    with pytest.raises(openai.AuthenticationError) as bad:
        await served.sdk(key="sk-not-a-safelight-key").images.generate(model="z-image", prompt="x")
    assert bad.value.code == "invalid_api_key" and bad.value.type == "invalid_request_error"
    async with served.http() as client:
        chat = await client.post("/v1/chat/completions", json={"model": "z-image", "messages": []})
        kie = await client.post("/api/v1/jobs/createTask", json={"model": "nope", "input": {}})
    assert chat.status_code == 404 and "POST /v1/images/generations" in chat.json()["error"]["message"]
    assert kie.status_code == 200 and kie.json()["code"] == 422  # kie's routes keep kie's envelope


async def test_an_empty_balance_is_insufficient_quota_and_creates_nothing(served):
    poor = await served.runtime.store.accounts.create_key("poor", credits=1)
    sdk = served.sdk(key=poor.key)
    with pytest.raises(openai.RateLimitError) as refused:
        await sdk.images.generate(model="google/imagen4-fast", prompt="costs 4")
    error = refused.value
    assert error.status_code == 429 and error.code == "insufficient_quota" and error.type == "insufficient_quota"
    assert error.response.headers["x-should-retry"] == "false" and "the balance is 1" in error.message
    # Two tasks of one credit each with one credit: refused up front, neither created.
    with pytest.raises(openai.RateLimitError) as pair:
        await sdk.images.generate(model="z-image", prompt="two", n=2)
    assert pair.value.code == "insufficient_quota" and "these 2 tasks cost 2 credits" in pair.value.message
    assert await served.runtime.store.tasks.list_for(poor.account_id, limit=10) == []
    assert await served.balance(poor.account_id) == 1


async def test_a_backend_failure_is_a_500_naming_the_task_and_refunded(served):
    with pytest.raises(openai.InternalServerError) as failed:
        await served.sdk().images.generate(model="google/imagen4-fast", prompt="this one will fail")
    error = failed.value
    assert error.status_code == 500 and error.code == "generation_failed" and error.type == "server_error"
    [task_id] = error.response.headers["x-safelight-task-id"].split(",")
    assert task_id in error.message and "failCode 501" in error.message
    record = await served.record(task_id)
    assert record["state"] == "fail" and record["failCode"] == "501" and record["creditsConsumed"] in (0, None)
    assert await served.balance() == 1000


async def test_when_one_of_n_tasks_fails_the_answer_has_the_images_that_exist(settings, tmp_path, monkeypatch):
    on_kie = ROUTING.replace('[models."google/imagen4-fast"]', '[models."z-image"]')
    async with serve(settings, tmp_path, monkeypatch, routing=on_kie) as served:
        served.kie.scripts.extend([Script(fail=(500, "upstream error")), Script()])
        raw = await served.sdk().images.with_raw_response.generate(model="z-image", prompt="two", n=2)
        [image] = raw.parse().data
        assert image_of(base64.b64decode(image.b64_json)).size == (32, 24)
        states = sorted([(await served.record(task_id))["state"] for task_id in task_ids(raw)])
        assert states == ["fail", "success"]
        assert await served.balance() == 999  # only the image delivered is paid for


async def test_moderation_is_a_content_policy_violation(served):
    served.kie.scripts.append(Script(fail=(451, "the prompt was flagged as sensitive")))
    with pytest.raises(openai.BadRequestError) as blocked:
        await served.sdk().images.generate(model="google/imagen4-fast", prompt="something")
    assert blocked.value.code == "content_policy_violation" and "sensitive" in blocked.value.message
    assert await served.balance() == 1000


async def test_a_long_wait_ends_with_a_504_naming_the_running_task(settings, tmp_path, monkeypatch):
    async with serve(settings, tmp_path, monkeypatch, openai_wait_seconds=0.5) as served:
        with pytest.raises(openai.InternalServerError) as late:
            await served.sdk().images.generate(model="google/imagen4-fast", prompt="runs forever")
        error = late.value
        [task_id] = error.response.headers["x-safelight-task-id"].split(",")
        assert error.status_code == 504 and error.response.headers["x-should-retry"] == "false"
        assert f"recordInfo?taskId={task_id}" in error.message and "SAFELIGHT_OPENAI_WAIT_SECONDS" in error.message
        assert (await served.record(task_id))["state"] in ("queuing", "generating")  # it keeps running
        async with served.http() as client:  # an ordinary task: kie's cancel ends it (and the test, at once)
            cancelled = (await client.post("/api/v1/jobs/cancel", json={"taskId": task_id})).json()
        assert cancelled["data"]["failCode"] == "499"


async def test_the_rate_limit_counts_tasks_and_sends_retry_after(settings, tmp_path, monkeypatch):
    async with serve(settings, tmp_path, monkeypatch, rate_limit_per_key=2, rate_limit_window_seconds=60) as served:
        sdk = served.sdk()
        await sdk.images.generate(model="z-image", prompt="one")
        with pytest.raises(openai.RateLimitError) as limited:
            await sdk.images.generate(model="z-image", prompt="two more", n=2)
        error = limited.value
        assert error.code == "rate_limit_exceeded" and int(error.response.headers["retry-after"]) >= 1
        assert error.response.headers["x-should-retry"] == "true"


async def test_an_idempotency_key_gives_the_same_task(served):
    sdk = served.sdk()
    first = await sdk.images.with_raw_response.generate(model="z-image", prompt="once",
                                                        extra_headers={"Idempotency-Key": "req-1"})
    again = await sdk.images.with_raw_response.generate(model="z-image", prompt="once",
                                                        extra_headers={"Idempotency-Key": "req-1"})
    assert task_ids(first) == task_ids(again)
    assert await served.balance() == 999


# --- edits ----------------------------------------------------------------------------------------


async def test_edit_one_image(served):
    raw = await served.sdk().images.with_raw_response.edit(
        model="flux-2/pro-image-to-image", image=("cat.png", png_bytes(300, 200), "image/png"),
        prompt="give the cat a crown", size="1024x1024")
    [image] = raw.parse().data
    assert image_of(base64.b64decode(image.b64_json)).size == (1024, 1024)
    record = await served.record(task_ids(raw)[0])
    task_input = json.loads(record["param"])["input"]
    assert task_input["aspect_ratio"] == "1:1" and task_input["resolution"] == "1K"
    [url] = task_input["input_urls"]
    # The upload is the account's own file: a signed link to this server, readable like any upload.
    assert url.startswith(f"{served.base_url}/files/uploads/{served.account_id}/openai/")
    async with httpx.AsyncClient() as anonymous:
        assert (await anonymous.get(url)).content == png_bytes(300, 200)
    assert record["state"] == "success" and await served.balance() == 1000 - 5


async def test_edit_several_images_with_an_alias(served):
    images = [("a.png", png_bytes(64, 64, (255, 0, 0)), "image/png"),
              ("b.png", png_bytes(64, 64, (0, 255, 0)), "image/png"),
              ("c.png", png_bytes(64, 64, (0, 0, 255)), "image/png")]
    raw = await served.sdk().images.with_raw_response.edit(model="dall-e-2", image=images, prompt="combine all three",
                                                           response_format="url")  # sent as image[]
    assert raw.parse().data[0].url.startswith(served.base_url)
    record = await served.record(task_ids(raw)[0])
    task_input = json.loads(record["param"])["input"]
    assert record["model"] == "flux-2/pro-image-to-image" and len(task_input["input_urls"]) == 3
    assert task_input["aspect_ratio"] == "auto"  # size auto: follow the first image
    async with httpx.AsyncClient() as anonymous:
        stored = [(await anonymous.get(url)).content for url in task_input["input_urls"]]
    assert stored == [data for _name, data, _type in images]


async def test_edit_with_a_mask(served):
    photo, mask = png_bytes(96, 64), png_bytes(96, 64, (0, 0, 0))
    raw = await served.sdk().images.with_raw_response.edit(
        model="ideogram/v3-edit", prompt="a red balloon in the sky", quality="low",
        image=("photo.png", photo, "image/png"), mask=("mask.png", mask, "image/png"))
    assert len(raw.parse().data) == 1
    record = await served.record(task_ids(raw)[0])
    task_input = json.loads(record["param"])["input"]
    assert record["state"] == "success" and task_input["rendering_speed"] == "TURBO"
    async with httpx.AsyncClient() as anonymous:
        assert (await anonymous.get(task_input["image_url"])).content == photo
        assert (await anonymous.get(task_input["mask_url"])).content == mask
    # The model needs its mask: the refusal (admission's, as createTask's) names the parameter.
    with pytest.raises(openai.BadRequestError) as unmasked:
        await served.sdk().images.edit(model="ideogram/v3-edit", prompt="x", image=("p.png", photo, "image/png"))
    assert unmasked.value.param == "mask" and "input.mask_url" in unmasked.value.message


async def test_edit_refusals_name_the_parameter(served):
    sdk = served.sdk()
    image = ("cat.png", png_bytes(64, 64), "image/png")
    with pytest.raises(openai.BadRequestError) as masked:
        await sdk.images.edit(model="flux-2/pro-image-to-image", image=image, prompt="hat",
                              mask=("mask.png", png_bytes(64, 64, (0, 0, 0)), "image/png"))
    assert masked.value.param == "mask" and "takes no mask" in masked.value.message
    with pytest.raises(openai.BadRequestError) as text_only:
        await sdk.images.edit(model="z-image", image=image, prompt="hat")
    assert text_only.value.param == "model" and "flux-2/pro-image-to-image" in text_only.value.message
    with pytest.raises(openai.BadRequestError) as not_image:
        await sdk.images.edit(model="flux-2/pro-image-to-image", image=("a.txt", b"hello", "text/plain"), prompt="hat")
    assert not_image.value.param == "image" and "image[0] is not a PNG" in not_image.value.message
    with pytest.raises(openai.BadRequestError) as too_many:
        await sdk.images.edit(model="flux-2/pro-image-to-image", image=[image] * 9, prompt="hat")
    assert too_many.value.param == "image" and "at most 8" in too_many.value.message
    assert await served.runtime.store.tasks.list_for(served.account_id, limit=10) == []


async def test_a_refused_edit_leaves_no_upload(served):
    poor = await served.runtime.store.accounts.create_key("poor", credits=0)
    with pytest.raises(openai.RateLimitError):
        await served.sdk(key=poor.key).images.edit(model="flux-2/pro-image-to-image", prompt="hat",
                                                   image=("cat.png", png_bytes(64, 64), "image/png"))
    assert await served.runtime.storage.older_than(f"uploads/{poor.account_id}", float("inf")) == []


# --- the translation, and the routing file --------------------------------------------------------


def test_n_is_split_into_as_few_tasks_as_the_model_allows():
    assert split_count(2, [1, 2, 3, 4]) == [2]
    assert split_count(10, [1, 2, 3, 4]) == [4, 4, 2]
    assert split_count(3, [1]) == [1, 1, 1]


def test_sizes_map_to_the_models_buckets_presets_and_resolutions():
    from safelight.api.openai_images import shape_of

    flux = MODELS["flux-2/pro-image-to-image"]
    assert size_fields(flux.id, shape_of(flux), (2048, 2048)) == {"aspect_ratio": "1:1", "resolution": "2K"}
    assert size_fields(flux.id, shape_of(flux), (1536, 1024)) == {"aspect_ratio": "3:2", "resolution": "1K"}
    assert size_fields(flux.id, shape_of(flux), None) == {"aspect_ratio": "auto", "resolution": "1K"}
    ideogram = MODELS["ideogram/character"]
    assert size_fields(ideogram.id, shape_of(ideogram), (1024, 1024)) == {"image_size": "square_hd"}
    assert size_fields(ideogram.id, shape_of(ideogram), (512, 512)) == {"image_size": "square"}
    assert size_fields(ideogram.id, shape_of(ideogram), (1792, 1024)) == {"image_size": "landscape_16_9"}
    assert size_fields(ideogram.id, shape_of(ideogram), None) == {}  # the model's default


class _MaskedInput(ModelInput):
    prompt: str
    image_urls: list[str] = Field(min_length=1, max_length=2)
    mask_url: str | None = None
    num_images: int = Field(1, ge=1, le=4)
    rendering_speed: str = "BALANCED"


def test_a_model_with_a_mask_field_gets_the_mask_and_an_integer_count():
    spec = ModelSpec(id="test/masked", title="", description="", input_schema=_MaskedInput, prices={"default": 1},
                     to_params=lambda value: GenerationParams(model="test/masked", prompt=value.prompt),
                     url_fields=("image_urls",))
    request = ImageRequest(spec=spec, prompt="fill", n=6, size=None, quality="high", output_format=None,
                           response_format="url")
    built = build_inputs(request, images=["https://a.example/1.png"], mask="https://a.example/m.png")
    assert [task["num_images"] for task in built.inputs] == [4, 2]
    assert built.inputs[0]["mask_url"] == "https://a.example/m.png"
    assert built.inputs[0]["image_urls"] == ["https://a.example/1.png"]
    assert built.params["mask_url"] == "mask" and built.params["num_images"] == "n"


def test_routing_aliases_are_checked(tmp_path):
    config = tmp_path / "safelight.toml"
    config.write_text('[openai.aliases]\n"gpt-image-1" = "z-image"\n')
    assert load_routing(config).openai_aliases == {"gpt-image-1": "z-image"}
    config.write_text('[openai.aliases]\n"gpt-image-1" = "dall-e-3"\n')
    with pytest.raises(RoutingError, match=r"openai\.aliases\.'gpt-image-1' maps to 'dall-e-3'"):
        load_routing(config)
    config.write_text('[openai.aliases]\n"z-image" = "google/imagen4-fast"\n')
    with pytest.raises(RoutingError, match=r"openai\.aliases\.'z-image' is a model id"):
        load_routing(config)
    config.write_text('[openai]\nalias = {}\n')
    with pytest.raises(RoutingError, match="openai.alias"):
        load_routing(config)
