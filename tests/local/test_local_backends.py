"""The local diffusers backends, run for real on CPU with tiny random-weight pipelines saved to disk
with save_pretrained and loaded back through the production loading path."""

import asyncio
import io
import json
import shutil
import textwrap
from dataclasses import replace

import httpx
import pytest
from PIL import Image

# The [gpu] extra: without it these tests skip instead of failing at collection.
pytest.importorskip("numpy")
pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import numpy as np  # noqa: E402

from safelight.backends import (  # noqa: E402
    BackendConfig,  # noqa: E402
    BackendStartError,
    Job,
)
from safelight.backends.local.flux2 import Flux2Backend  # noqa: E402
from safelight.backends.local.z_image import ZImageBackend  # noqa: E402
from safelight.catalog import get_model, validate_input  # noqa: E402
from safelight.worker import Worker  # noqa: E402
from tests.helpers import free_port, start_server  # noqa: E402
from tests.tiny_pipelines import save_tiny_pipeline  # noqa: E402

# Tiny pipelines on CPU: float32, 2 steps, short prompts, one-layer prompt embedding for FLUX.2.
ZIMAGE_OPTIONS = {"device": "cpu", "dtype": "float32", "steps": 2, "max_sequence_length": 128}
FLUX2_OPTIONS = {**ZIMAGE_OPTIONS, "variant": "klein", "text_encoder_out_layers": [1]}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    return {kind: save_tiny_pipeline(kind, root / kind) for kind in ("zimage", "flux2-klein")}


def params_for(model, model_input):
    spec = get_model(model)
    return spec.to_params(validate_input(spec, model_input))


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


# --- loading ---


async def test_an_incomplete_weights_directory_fails_at_start_naming_the_missing_files(weights, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(weights["zimage"], broken)
    for path in (broken / "transformer").glob("*.safetensors"):
        path.unlink()
    (broken / "vae" / "config.json").unlink()
    backend = ZImageBackend("local", BackendConfig(type="diffusers.zimage", weights=str(broken), **ZIMAGE_OPTIONS))
    with pytest.raises(BackendStartError) as caught:
        await backend.start()
    message = str(caught.value)
    assert message.startswith(f"backend local: weights directory {broken} is incomplete; missing: ")
    assert "transformer/*.safetensors" in message and "vae/config.json" in message
    assert "text_encoder" not in message  # only what is actually missing

    (broken / "model_index.json").unlink()
    with pytest.raises(BackendStartError, match="missing: model_index.json"):
        backend.preflight()


def test_weights_that_are_neither_a_directory_nor_cached_say_how_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    backend = ZImageBackend("local", BackendConfig(type="diffusers.zimage", weights="Tongyi-MAI/Z-Image-Turbo"))
    with pytest.raises(BackendStartError) as caught:
        backend.preflight()
    assert "not in the local Hugging Face cache" in str(caught.value)
    assert "huggingface-cli download Tongyi-MAI/Z-Image-Turbo" in str(caught.value)
    missing_dir = ZImageBackend("local", BackendConfig(type="diffusers.zimage", weights=str(tmp_path / "nope")))
    with pytest.raises(BackendStartError, match=f"backend local: weights directory {tmp_path / 'nope'} does not exist"):
        missing_dir.preflight()


def test_the_server_refuses_to_start_with_missing_weights(settings, tmp_path):
    from safelight.api.app import create_app

    config = tmp_path / "safelight.toml"
    config.write_text(textwrap.dedent(f"""
        [backends.local]
        type = "diffusers.zimage"
        weights = "{tmp_path / 'absent'}"

        [models."z-image"]
        route = ["local"]
    """))
    with pytest.raises(BackendStartError, match="backend local: weights directory .* does not exist"):
        create_app(settings.model_copy(update={"routing_file": str(config)}), check_backends=True)


# --- generation through the real worker ---


@pytest.fixture
async def local_server(settings, weights, tmp_path):
    config = tmp_path / "safelight.toml"
    options = "\n".join(f"{k} = {json.dumps(v)}" for k, v in ZIMAGE_OPTIONS.items())
    flux_options = "\n".join(f"{k} = {json.dumps(v)}" for k, v in FLUX2_OPTIONS.items())
    config.write_text(f"""
[backends.zimage]
type = "diffusers.zimage"
weights = "{weights['zimage']}"
max_batch = 4
{options}

[backends.flux]
type = "diffusers.flux2"
weights = "{weights['flux2-klein']}"
{flux_options}

[models."z-image"]
route = ["zimage"]

[models."flux-2/pro-image-to-image"]
route = ["flux"]

[models."google/imagen4-ultra"]
route = ["zimage"]

[models."ideogram/v3-text-to-image"]
route = ["zimage"]

[models."nano-banana-pro"]
route = ["flux"]
""")
    port = free_port()
    settings = settings.model_copy(update={"routing_file": str(config), "port": port,
                                           "public_url": f"http://127.0.0.1:{port}", "task_timeout_seconds": 120})
    server, task = await start_server(settings)
    runtime = server.config.app.state.runtime
    key = (await runtime.store.accounts.create_key("local", credits=1000)).key
    client = httpx.AsyncClient(base_url=settings.public_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    try:
        yield client, runtime
    finally:
        await client.aclose()
        server.should_exit = True
        await task


async def run_task(client, body, timeout=90.0):
    created = (await client.post("/api/v1/jobs/createTask", json=body)).json()
    assert created["code"] == 200, created
    task_id = created["data"]["taskId"]
    deadline = asyncio.get_running_loop().time() + timeout
    progress_seen = set()
    while True:
        record = (await client.get("/api/v1/jobs/recordInfo", params={"taskId": task_id})).json()["data"]
        if record.get("progress") is not None:
            progress_seen.add(record["progress"])
        if record["state"] in ("success", "fail"):
            return record, progress_seen
        assert asyncio.get_running_loop().time() < deadline, record
        await asyncio.sleep(0.05)


async def fetch_results(client, record):
    urls = json.loads(record["resultJson"])["resultUrls"]
    return [(await client.get(url)).content for url in urls]


async def test_z_image_task_gives_a_png_of_its_bucket_size(local_server):
    client, runtime = local_server
    record, _ = await run_task(client, {"model": "z-image", "input": {"prompt": "a red fox", "aspect_ratio": "16:9"}})
    assert record["state"] == "success", record
    (image,) = await fetch_results(client, record)
    assert image[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(image)).size == (1344, 768)
    row = await runtime.store.tasks.get(record["taskId"])
    assert row["backend"] == "zimage"
    assert isinstance(json.loads(record["resultJson"])["seeds"][0], int)


async def test_flux2_with_three_references_and_auto_follows_the_first_reference(local_server, image_server):
    client, _ = local_server
    refs = [f"{image_server}/img/96x64.png", f"{image_server}/img/64x64.png", f"{image_server}/img/128x80.png"]
    record, _ = await run_task(client, {"model": "flux-2/pro-image-to-image", "input": {
        "prompt": "put the hat from image 2 on the cat in image 1", "input_urls": refs,
        "aspect_ratio": "auto", "resolution": "1K"}})
    assert record["state"] == "success", record
    (image,) = await fetch_results(client, record)
    assert Image.open(io.BytesIO(image)).size == (96, 64)


async def test_imagen4_ultra_on_z_image_with_a_string_seed(local_server):
    client, runtime = local_server
    record, _ = await run_task(client, {"model": "google/imagen4-ultra", "input": {
        "prompt": "a red fox", "aspect_ratio": "9:16", "seed": "42", "negative_prompt": "rain"}})
    assert record["state"] == "success", record
    (image,) = await fetch_results(client, record)
    assert Image.open(io.BytesIO(image)).size == (768, 1344)
    assert json.loads(record["resultJson"])["seeds"] == [42]  # kie's string seed, as the generator's seed
    assert record["creditsConsumed"] == 12
    assert (await runtime.store.tasks.get(record["taskId"]))["backend"] == "zimage"


async def test_ideogram_v3_text_to_image_on_z_image_takes_the_preset_size(local_server):
    client, _ = local_server
    record, _ = await run_task(client, {"model": "ideogram/v3-text-to-image", "input": {
        "prompt": "a poster that says hello", "image_size": "landscape_16_9", "style": "DESIGN"}})
    assert record["state"] == "success", record
    (image,) = await fetch_results(client, record)
    assert Image.open(io.BytesIO(image)).size == (1024, 576)


async def test_nano_banana_pro_on_flux2_edits_from_image_input_and_generates_without(local_server, image_server):
    client, runtime = local_server
    refs = [f"{image_server}/img/128x80.png", f"{image_server}/img/64x64.png"]
    record, _ = await run_task(client, {"model": "nano-banana-pro", "input": {
        "prompt": "the cat from image 1 wearing the hat from image 2", "image_input": refs, "aspect_ratio": "auto"}})
    assert record["state"] == "success", record
    (image,) = await fetch_results(client, record)
    assert Image.open(io.BytesIO(image)).size == (128, 80)  # auto follows the first image
    assert record["creditsConsumed"] == 18
    assert (await runtime.store.tasks.get(record["taskId"]))["backend"] == "flux"
    # No image_input: text to image, at the bucket of its aspect ratio.
    record, _ = await run_task(client, {"model": "nano-banana-pro", "input": {
        "prompt": "a comic poster", "aspect_ratio": "21:9"}})
    assert record["state"] == "success", record
    (image,) = await fetch_results(client, record)
    assert Image.open(io.BytesIO(image)).size == (1536, 640)


def test_z_image_gives_ideogram_v3_styles_as_prompt_hints():
    backend = ZImageBackend("z", BackendConfig(type="diffusers.zimage", weights="w"))
    jobs = [Job(task_id=style, seeds=[1], params=params_for("ideogram/v3-text-to-image", {
        "prompt": "a poster", "style": style})) for style in ("DESIGN", "REALISTIC", "AUTO")]
    prompts = [backend.call_arguments([job])["prompt"] for job in jobs]
    assert prompts == [["a poster, graphic design, clean typography"], ["a poster, photorealistic"], ["a poster"]]


# --- batching, seeds, progress ---


async def test_a_batch_of_four_matches_four_unbatched_runs_with_the_same_seeds(runtime, weights):
    backend = ZImageBackend("zimage", BackendConfig(type="diffusers.zimage", weights=str(weights["zimage"]),
                                                    max_batch=4, **ZIMAGE_OPTIONS))
    calls = []
    original = backend.generate_batch

    async def spy(jobs):
        calls.append(len(jobs))
        return await original(jobs)

    backend.generate_batch = spy
    worker = Worker(store=runtime.store, storage=runtime.storage, loader=runtime.input_loader(),
                    backends={"zimage": backend}, routes={"z-image": ["zimage"]}, task_timeout_seconds=120)
    prompts = ["a lighthouse", "a red fox", "a teapot", "a city at night"]
    ids = []
    for prompt in prompts:
        body = {"model": "z-image", "input": {"prompt": prompt, "aspect_ratio": "1:1"}}
        params = params_for("z-image", body["input"])
        ids.append(await runtime.store.tasks.create(account_id=runtime.test_account, model="z-image",
                                                    param=json.dumps(body), callback_url=None, num_images=1, cost=1,
                                                    batch_key=params.batch_key))
    await worker.start()  # the four are waiting already: one claim takes them all
    try:
        rows = []
        for task_id in ids:
            for _ in range(1200):
                row = await runtime.store.tasks.get(task_id)
                if row["state"] in ("success", "fail"):
                    break
                await asyncio.sleep(0.05)
            rows.append(row)
        assert [row["state"] for row in rows] == ["success"] * 4, [row["fail_msg"] for row in rows]
        assert calls == [4]
        for prompt, row in zip(prompts, rows, strict=True):
            result = json.loads(row["result"])
            batched = pixels(await runtime.storage.get(result["files"][0]))
            seed = result["seeds"][0]
            alone = await backend.generate(Job(task_id="again", params=params_for("z-image", {
                "prompt": prompt, "aspect_ratio": "1:1"}), seeds=[seed]))
            difference = np.abs(batched - pixels(alone[0].data))
            # Same seed, same image: CPU matmuls over a batch of 4 may round differently from a
            # batch of 1, so allow a rounding step of the 8-bit output, never a different picture.
            assert difference.max() <= 2 and difference.mean() < 0.05, (difference.max(), difference.mean())
        # Different seeds do give different pictures (the comparison above could not pass by accident).
        first, second = [pixels(await runtime.storage.get(json.loads(r["result"])["files"][0])) for r in rows[:2]]
        assert np.abs(first - second).mean() > 1
    finally:
        await worker.stop()


async def test_progress_follows_the_denoising_steps(weights):
    backend = ZImageBackend("zimage", BackendConfig(type="diffusers.zimage", weights=str(weights["zimage"]),
                                                    **ZIMAGE_OPTIONS))
    await backend.start()
    seen = []
    job = Job(task_id="p", params=params_for("z-image", {"prompt": "x", "aspect_ratio": "1:1"}), seeds=[3],
              report_progress=seen.append)
    await backend.generate(job)
    assert seen == [50, 95]  # 2 steps: 5 + 90 * step / steps
    await backend.close()


async def test_results_are_encoded_in_the_tasks_output_format(weights):
    backend = ZImageBackend("zimage", BackendConfig(type="diffusers.zimage", weights=str(weights["zimage"]),
                                                    **ZIMAGE_OPTIONS))
    await backend.start()
    params = params_for("z-image", {"prompt": "x", "aspect_ratio": "1:1"})
    made = {}
    for name, magic in (("png", b"\x89PNG"), ("jpeg", b"\xff\xd8\xff"), ("webp", b"RIFF")):
        (image,) = await backend.generate(Job(task_id=name, params=replace(params, output_format=name), seeds=[5]))
        assert image.data.startswith(magic) and image.content_type == f"image/{name}"
        made[name] = pixels(image.data)
    await backend.close()
    assert made["png"].shape == made["jpeg"].shape == made["webp"].shape == (1024, 1024, 3)

    def blocks(array):  # 16x16 block means: the tiny pipeline's output is noise, which lossy encoding smears
        return array.reshape(64, 16, 64, 16, 3).mean(axis=(1, 3))

    # The same picture, within lossy-encoding error.
    for lossy in ("jpeg", "webp"):
        error = np.abs(blocks(made["png"]) - blocks(made[lossy]))
        assert error.mean() < 1.5 and error.max() < 10, (lossy, error.mean(), error.max())


async def test_imagen_on_z_image_turbo_runs_num_images_with_consecutive_seeds(weights):
    backend = ZImageBackend("zimage", BackendConfig(type="diffusers.zimage", weights=str(weights["zimage"]),
                                                    **ZIMAGE_OPTIONS))
    await backend.start()
    params = params_for("google/imagen4-fast", {"prompt": "x", "num_images": "2", "seed": 41, "aspect_ratio": "1:1"})
    images = await backend.generate(Job(task_id="i", params=params, seeds=[41, 42]))
    assert [image.seed for image in images] == [41, 42]
    assert np.abs(pixels(images[0].data) - pixels(images[1].data)).mean() > 1
    await backend.close()


def test_flux2_options_pick_the_pipeline_and_its_defaults(weights):
    klein = Flux2Backend("f", BackendConfig(type="diffusers.flux2", weights="w"))
    dev = Flux2Backend("f", BackendConfig(type="diffusers.flux2", weights="w", variant="dev"))
    assert (klein.pipeline_class, klein.steps, klein.guidance) == ("Flux2KleinPipeline", 4, 1.0)
    assert (dev.pipeline_class, dev.steps, dev.guidance) == ("Flux2Pipeline", 28, 4.0)
    with pytest.raises(ValueError, match="backends.f.variant: Input should be 'klein' or 'dev'"):
        Flux2Backend("f", BackendConfig(type="diffusers.flux2", weights="w", variant="pro"))


# --- nsfw_checker with a configured safety checker ---


def save_safety_checker(directory, *, flag_everything: bool):
    """A tiny random CLIP safety checker; its concept thresholds decide the verdict for any image."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(0)
    small = {"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    checker = StableDiffusionSafetyChecker(CLIPConfig(text_config={**small, "vocab_size": 99}, projection_dim=16,
                                                      vision_config={**small, "image_size": 32, "patch_size": 8}))
    with torch.no_grad():  # score = similarity - threshold: -10 flags everything, +10 nothing
        checker.concept_embeds_weights.fill_(-10.0 if flag_everything else 10.0)
        checker.special_care_embeds_weights.fill_(-10.0 if flag_everything else 10.0)
    checker.save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("flag_everything", [True, False])
async def test_a_configured_safety_checker_judges_only_the_tasks_that_ask(weights, tmp_path, flag_everything):
    checker = save_safety_checker(tmp_path / "checker", flag_everything=flag_everything)
    config = BackendConfig(type="diffusers.zimage", weights=str(weights["zimage"]), max_batch=2,
                           safety_checker=str(checker), **ZIMAGE_OPTIONS)
    assert ZImageBackend.offers_safety_checker(config.options)
    assert not ZImageBackend.offers_safety_checker({"weights": "w"})
    backend = ZImageBackend("zimage", config)
    await backend.start()
    checked = Job(task_id="checked", seeds=[1], params=params_for(
        "z-image", {"prompt": "x", "aspect_ratio": "1:1", "nsfw_checker": True}))
    unchecked = Job(task_id="unchecked", seeds=[2],
                    params=params_for("z-image", {"prompt": "x", "aspect_ratio": "1:1"}))
    first, second = await backend.generate_batch([checked, unchecked])
    if flag_everything:
        assert first.fail_code == "451" and not first.transient
        assert "safety checker" in first.message
    else:
        assert len(first) == 1 and first[0].data.startswith(b"\x89PNG")
    assert len(second) == 1  # never judged: it did not ask
    await backend.close()


async def test_cancel_stops_a_local_pipeline_at_its_next_step(runtime, weights):
    """A generating task cancelled mid-denoise: the pipeline skips its remaining steps (diffusers'
    step callback sets the interrupt), the task ends as 499, refunded."""
    backend = ZImageBackend("zimage", BackendConfig(type="diffusers.zimage", weights=str(weights["zimage"]),
                                                    **{**ZIMAGE_OPTIONS, "steps": 40}))
    worker = Worker(store=runtime.store, storage=runtime.storage, loader=runtime.input_loader(),
                    backends={"zimage": backend}, routes={"z-image": ["zimage"]}, task_timeout_seconds=300)
    body = {"model": "z-image", "input": {"prompt": "stop me", "aspect_ratio": "1:1"}}
    task_id = await runtime.store.tasks.create(account_id=runtime.test_account, model="z-image",
                                               param=json.dumps(body), callback_url=None, num_images=1, cost=1)
    await worker.start()
    try:
        for _ in range(1200):  # until the pipeline has done a step
            row = await runtime.store.tasks.get(task_id)
            if row["state"] == "generating" and (row["progress"] or 0) > 5:
                break
            await asyncio.sleep(0.05)
        assert row["progress"] < 95, "the pipeline finished before the test could cancel it"
        cancelled = await runtime.store.tasks.cancel(task_id, runtime.test_account)
        assert (cancelled["state"], cancelled["fail_code"]) == ("fail", "499")
        for _ in range(1200):
            if backend.cancelled_calls:
                break
            await asyncio.sleep(0.05)
        assert backend.cancelled_calls == 1
        row = await runtime.store.tasks.get(task_id)
        assert row["progress"] < 95 and row["result"] is None and row["credits_consumed"] == 0
    finally:
        await worker.stop()
