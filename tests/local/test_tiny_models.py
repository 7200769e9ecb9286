"""The tiny random-weight pipelines: they run, save, reload offline, and batch like single runs."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The [gpu] extra: without it these tests skip instead of failing at collection.
pytest.importorskip("numpy")
pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from safelight.backends.local.pipeline_backend import missing_files  # noqa: E402
from tests import tiny_pipelines as tiny  # noqa: E402

PROMPTS = ["a red cat", "a blue dog sitting on a green hill under the sun"]
FLUX2 = ["flux2-klein", "flux2-dev"]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's spinning threads
    made this file 4-5x slower (5 s with 1 thread against 20-26 s with 2 while other processes ran)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _quiet_progress_bars() -> Iterator[None]:
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    yield
    diffusers_logging.enable_progress_bar()


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any socket connection fails: proves loading touches neither the Hub nor anything else."""

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def pipelines() -> dict[str, Any]:
    return {kind: tiny.build_tiny_pipeline(kind, seed=0) for kind in tiny.KINDS}


def generate(pipe: Any, kind: str, prompt: str | list[str], seed: int | list[int], **kwargs: Any) -> Any:
    """Run a tiny pipeline with its call defaults; seeds become one CPU generator each."""
    if isinstance(seed, list):
        generator: Any = [torch.Generator().manual_seed(s) for s in seed]
    else:
        generator = torch.Generator().manual_seed(seed)
    if isinstance(prompt, list):
        prompt = list(prompt)  # ZImagePipeline rewrites list prompts in place
    args = {**tiny.TINY_CALL_DEFAULTS[kind], "height": 64, "width": 48, **kwargs}
    return pipe(prompt=prompt, generator=generator, **args).images


# ------------------------------------------------------------------------------------------------ tokenizers


def test_qwen_tokenizer_chat_template_and_ids() -> None:
    tok = tiny.qwen_tokenizer()
    assert len(tok) == 261
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    messages = [{"role": "user", "content": "a cat"}]
    assert (
        tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=True)
        == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (
        tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
        == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    ids = tok("<|im_start|>hé").input_ids
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and len(ids) == 4  # special + 3 UTF-8 bytes
    assert tok.decode(tok("héllo wörld").input_ids) == "héllo wörld"


def test_mistral_tokenizer_special_ids_and_template() -> None:
    tok = tiny.mistral_tokenizer()
    assert [tok.unk_token_id, tok.convert_tokens_to_ids("[IMG]"), tok.bos_token_id, tok.eos_token_id] == [0, 1, 2, 3]
    assert tok.pad_token_id == 4 and len(tok) == 267
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "SYS"}]},
        {"role": "user", "content": [{"type": "text", "text": "a cat"}]},
    ]
    assert (
        tok.apply_chat_template(messages, tokenize=False) == "<s>[SYSTEM_PROMPT]SYS[/SYSTEM_PROMPT][INST]a cat[/INST]"
    )
    # The exact call Flux2Pipeline makes: batched, padded to max_length with <pad>, a single <s>.
    out = tok.apply_chat_template(
        [messages],
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        padding="max_length",
        truncation=True,
        max_length=24,
    )
    ids = out["input_ids"][0].tolist()
    assert len(ids) == 24 and ids[0] == 2 and ids.count(2) == 1
    assert ids[13:] == [4] * 11 and out["attention_mask"][0].tolist() == [1] * 13 + [0] * 11


# ------------------------------------------------------------------------------------------------ builders


@pytest.mark.parametrize("kind", tiny.KINDS)
def test_builders_are_a_function_of_the_seed(kind: str) -> None:
    builder = {
        "zimage": tiny.tiny_zimage_components,
        "flux2-klein": tiny.tiny_flux2_klein_components,
        "flux2-dev": tiny.tiny_flux2_dev_components,
    }[kind]
    torch.manual_seed(1234)
    expected_next = torch.rand(1)
    torch.manual_seed(1234)
    a, b, c = builder(7), builder(7), builder(8)
    assert torch.equal(torch.rand(1), expected_next)  # the caller's global RNG is untouched
    for name in ("transformer", "vae", "text_encoder"):
        sa, sb, sc = a[name].state_dict(), b[name].state_dict(), c[name].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point() and sa[k].numel() > 1)
    assert len(a["tokenizer"]) <= a["text_encoder"].get_input_embeddings().num_embeddings
    if kind == "zimage":
        assert torch.equal(a["transformer"].x_pad_token, torch.ones_like(a["transformer"].x_pad_token))


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tiny pipeline kind 'sdxl'"):
        tiny.save_tiny_pipeline("sdxl", tmp_path)


# ------------------------------------------------------------------------------------------------ running


@pytest.mark.parametrize("kind", tiny.KINDS)
def test_runs_at_the_requested_size_and_seeds_matter(pipelines: dict[str, Any], kind: str) -> None:
    pipe = pipelines[kind]
    images = generate(pipe, kind, "a red cat", 1, height=64, width=48)
    assert len(images) == 1 and images[0].size == (48, 64) and images[0].mode == "RGB"
    assert generate(pipe, kind, "a red cat", 1, height=32, width=80)[0].size == (80, 32)

    same = generate(pipe, kind, "a red cat", 1, output_type="np")
    again = generate(pipe, kind, "a red cat", 1, output_type="np")
    other_seed = generate(pipe, kind, "a red cat", 2, output_type="np")
    other_prompt = generate(pipe, kind, "a blue dog", 1, output_type="np")
    assert np.array_equal(same, again)  # repeated single runs are bit-exact
    assert np.abs(same - other_seed).max() > 0.05
    assert np.abs(same - other_prompt).max() > 1e-3
    assert same.std() > 0.01  # not a flat image


def test_size_rules() -> None:
    zimage = tiny.build_tiny_pipeline("zimage")
    with pytest.raises(ValueError, match="divisible by 16"):
        generate(zimage, "zimage", "a cat", 0, height=40, width=48)
    assert generate(zimage, "zimage", "a cat", 0, height=16, width=16)[0].size == (16, 16)
    klein = tiny.build_tiny_pipeline("flux2-klein")
    assert generate(klein, "flux2-klein", "a cat", 0, height=72, width=40)[0].size == (32, 64)  # rounded down
    with pytest.raises(ValueError, match="at least 64px"):
        generate(klein, "flux2-klein", "a cat", 0, image=[Image.new("RGB", (32, 64))])


@pytest.mark.parametrize("kind", FLUX2)
def test_flux2_three_references_of_different_sizes(pipelines: dict[str, Any], kind: str) -> None:
    pipe = pipelines[kind]
    rng = np.random.default_rng(0)
    refs = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(96, 64), (64, 128), (200, 80)]
    ]
    follows_first = generate(pipe, kind, "combine them", 3, image=refs, height=None, width=None)
    assert follows_first[0].size == (96, 64)
    with_refs = generate(pipe, kind, "combine them", 3, image=refs, output_type="np")
    without = generate(pipe, kind, "combine them", 3, output_type="np")
    assert with_refs.shape == (1, 64, 48, 3)
    assert np.abs(with_refs - without).max() > 1e-3  # the references reach the transformer


def test_klein_is_distilled_is_a_pipeline_config_value(tmp_path: Path, no_network: None) -> None:
    from diffusers import Flux2KleinPipeline

    assert tiny.build_tiny_pipeline("flux2-klein").config.is_distilled is True
    tiny.save_tiny_pipeline("flux2-klein", tmp_path, is_distilled=False)
    assert json.loads((tmp_path / "model_index.json").read_text())["is_distilled"] is False
    base = Flux2KleinPipeline.from_pretrained(tmp_path, local_files_only=True)
    assert base.config.is_distilled is False
    # Not distilled + guidance > 1 runs real CFG, so guidance changes the image (it is ignored when distilled).
    cfg = generate(base, "flux2-klein", "a cat", 0, guidance_scale=4.0, output_type="np")
    plain = generate(base, "flux2-klein", "a cat", 0, guidance_scale=1.0, output_type="np")
    assert np.abs(cfg - plain).max() > 1e-3


# ------------------------------------------------------------------------------------------------ save / load


def _written(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


@pytest.mark.parametrize("kind", tiny.KINDS)
def test_save_and_reload_offline_gives_the_same_pixels(
    pipelines: dict[str, Any], kind: str, tmp_path: Path, no_network: None
) -> None:
    directory = tiny.save_tiny_pipeline(kind, tmp_path / kind, seed=0)
    written = _written(directory)
    index = json.loads((directory / "model_index.json").read_text())
    assert index["_class_name"] == tiny.PIPELINE_CLASSES[kind].__name__
    assert {"scheduler", "vae", "text_encoder", "tokenizer", "transformer"} <= index.keys()

    # The production loader's completeness check accepts exactly what save_pretrained wrote.
    assert missing_files(directory) == []
    assert "transformer/diffusion_pytorch_model.safetensors" in written

    loaded = tiny.PIPELINE_CLASSES[kind].from_pretrained(directory, local_files_only=True)
    assert type(loaded.tokenizer) is type(pipelines[kind].tokenizer)
    from_memory = generate(pipelines[kind], kind, PROMPTS[1], 5, output_type="np")
    from_disk = generate(loaded, kind, PROMPTS[1], 5, output_type="np")
    assert np.array_equal(from_memory, from_disk)


def test_missing_files_names_what_a_loader_needs(tmp_path: Path) -> None:
    directory = tiny.save_tiny_pipeline("flux2-dev", tmp_path)
    (directory / "vae/diffusion_pytorch_model.safetensors").unlink()
    (directory / "tokenizer/chat_template.jinja").unlink()
    assert sorted(missing_files(directory)) == ["tokenizer/chat_template.jinja", "vae/*.safetensors"]

    # Sharded weights: the shards an index names must all be there; the template may live in tokenizer_config.
    weights = directory / "transformer/diffusion_pytorch_model.safetensors"
    weights.rename(directory / "transformer/diffusion_pytorch_model-00001-of-00002.safetensors")
    (directory / "transformer/diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps(
            {
                "weight_map": {
                    "a": "diffusion_pytorch_model-00001-of-00002.safetensors",
                    "b": "diffusion_pytorch_model-00002-of-00002.safetensors",
                }
            }
        )
    )
    config_path = directory / "tokenizer/tokenizer_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "chat_template": "{{ x }}"}))
    assert sorted(missing_files(directory)) == [
        "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
        "vae/*.safetensors",
    ]


# ------------------------------------------------------------------------------------------------ batching


@pytest.mark.parametrize("kind", tiny.KINDS)
def test_a_batch_with_one_generator_per_image_matches_single_runs(pipelines: dict[str, Any], kind: str) -> None:
    """What the worker's batching relies on. On CPU it holds to float rounding, not bit for bit.

    Measured (torch 2.13 CPU, 1 or 2 threads): max |batch - single| is about 2e-6 at 64x48 and 1.5e-5 at 256x256
    on the [0, 1] float image, i.e. at most 1/255 on a few uint8 pixels; the GEMMs and convolutions take
    different code paths for batch 1 and 2.
    """
    pipe = pipelines[kind]
    batch = generate(pipe, kind, PROMPTS, [11, 22], output_type="np")
    singles = np.concatenate([generate(pipe, kind, PROMPTS[i], s, output_type="np") for i, s in enumerate([11, 22])])
    assert batch.shape == singles.shape == (2, 64, 48, 3)
    np.testing.assert_allclose(batch, singles, rtol=0, atol=1e-4)
    as_png_pixels = (np.round(batch * 255) - np.round(singles * 255)).astype(int)
    assert np.abs(as_png_pixels).max() <= 1
    # The same prompt twice with two seeds (one task asking for two images) also matches.
    same_prompt = generate(pipe, kind, [PROMPTS[0]] * 2, [11, 22], output_type="np")
    np.testing.assert_allclose(same_prompt[0], singles[0], rtol=0, atol=1e-4)
    assert np.abs(same_prompt[0] - same_prompt[1]).max() > 0.05


def test_zimage_pipeline_rewrites_list_prompts_in_place(pipelines: dict[str, Any]) -> None:
    """diffusers 0.42.1 hazard (documented in tiny.py): callers must pass ZImagePipeline a fresh list."""
    prompts = ["a red cat"]
    pipelines["zimage"](prompt=prompts, height=16, width=16, output_type="latent", **tiny.TINY_CALL_DEFAULTS["zimage"])
    assert prompts[0].startswith("<|im_start|>user\na red cat")
