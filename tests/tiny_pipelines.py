"""Tiny random-weight diffusers pipelines, built entirely in code (no Hub, no downloads).

Test-only code, not shipped in the wheel: used by the test suite (tests/local, tests/upstream) and by
`bench/gpu.py` (`--tiny`, and `qwen_tokenizer` for its offline full-size models). Each builder returns the
components of a real diffusers pipeline class (`ZImagePipeline`, `Flux2KleinPipeline`, `Flux2Pipeline`) with the
production architecture shrunk to under half a million parameters (spec/backends.md §A.4) and byte-level
tokenizers built from a table (§A.5). `save_tiny_pipeline` writes the ordinary diffusers directory layout, which
`<Pipeline>.from_pretrained(directory, local_files_only=True)` loads back with `HF_HUB_OFFLINE=1`.

Deviations from diffusers' own tiny test configs (§A.4), chosen so tiny pipelines follow the production size
rules and token counts and stay fast at the catalog's 1024-px buckets:

* Every VAE has 4 blocks, so `vae_scale_factor` is 8 as in the real FLUX.1/FLUX.2 VAEs: height and width must be
  multiples of 16, and 1024x1024 is 4096 image tokens, as in production. (The §A.4 VAEs have factors 2 and 1,
  which make a 1024-px image 65k-1M tokens.)
* Z-Image's `axes_lens` are the production [1024, 512, 512]; §A.4's [256, 32, 32] caps images at 512 px per side
  once the VAE downsamples 8x.
* Text-encoder vocabularies are 512 (just above the tokenizers' 261/267 ids) instead of 151936/32000, so a saved
  directory is 0.4-1.8 MB.

Measured on CPU (torch 2.13, diffusers 0.42.1): repeated runs with the same seed, and a reload of the saved
directory, give bit-identical pixels. A batch of prompts with one generator per image matches the same images run
one at a time only to float rounding (max |diff| ~2e-6 at 64x48, ~1.5e-5 at 256x256 on the [0, 1] image, so at
most 1/255 on a few PNG pixels), not bit for bit: batch-1 and batch-2 matrix products and convolutions round
differently. Run tiny models with one torch thread on small CPUs; spinning OpenMP threads on a busy 2-core
machine made them 4-5x slower.

This module imports torch, diffusers and transformers at import time: import it only where the `[gpu]` extra
is installed, as `tests.tiny_pipelines` with the repository root on sys.path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLFlux2,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
    ZImagePipeline,
    ZImageTransformer2DModel,
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen2Tokenizer,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3Model,
)

__all__ = [
    "KINDS",
    "PIPELINE_CLASSES",
    "TINY_CALL_DEFAULTS",
    "build_tiny_pipeline",
    "mistral_tokenizer",
    "qwen_tokenizer",
    "save_tiny_pipeline",
    "tiny_flux2_dev_components",
    "tiny_flux2_klein_components",
    "tiny_zimage_components",
]

KINDS: Final = ("zimage", "flux2-klein", "flux2-dev")

PIPELINE_CLASSES: Final[dict[str, type]] = {
    "zimage": ZImagePipeline,
    "flux2-klein": Flux2KleinPipeline,
    "flux2-dev": Flux2Pipeline,
}

# Vocabulary size of every tiny text encoder: at least len(tokenizer) (261 Qwen ids, 267 Mistral ids).
_TINY_VOCAB: Final = 512

# Call arguments each tiny pipeline needs besides prompt, height, width and generator (measured on CPU with
# diffusers 0.42.1; the test file checks the sizes below):
#  * height/width: every tiny VAE downsamples 8x, so sizes are multiples of 16, as in production. 16x16 is the
#    smallest that runs; 32x32, 64x48, 48x80, 256x256, 576x1024 and 1024x1024 all give exactly that size.
#    Z-Image raises ValueError for any other size (e.g. 40 or 72). FLUX.2 warns and rounds down to a multiple of
#    16 (40x40 -> 32x32, 72x64 -> 64x64; 8x8 rounds to 0 and fails inside the VAE).
#  * FLUX.2 `image=` references: each >= 64 px per side (smaller raises ValueError), aspect <= 8:1, any multiple
#    of 16 or not; references over 1024x1024 px are resized to 1 MP. With no height/width the output takes the
#    first reference's size (96x64 reference -> 96x64 image).
#  * text_encoder_out_layers=(1,) for FLUX.2: the tiny Qwen3/Mistral encoders have 2/1 layers, and the
#    transformer's joint_attention_dim (16) must equal len(out_layers) * hidden_size (16). Production uses
#    (9, 18, 27) for klein and (10, 20, 30) for [dev]. Z-Image always takes hidden_states[-2]: no argument.
#  * max_sequence_length: the production 512. The tokenizers are byte-level (one token per UTF-8 byte) and
#    FLUX.2 [dev] puts its 168-byte system message first and truncates on the right, so short limits would cut
#    the user's prompt off; 512 costs little at this size.
#  * num_inference_steps=2 keeps runs fast; any count works. guidance: Z-Image 0.0 (Turbo-like, one forward per
#    step; > 0 runs CFG), klein 1.0 (distilled: guidance is ignored), [dev] 4.0 (embedded guidance).
#
# Hazard found while testing: ZImagePipeline (diffusers 0.42.1, `_encode_prompt`) rewrites a *list* prompt in
# place with its chat template, so reusing the same list object for a second call double-wraps the prompts and
# changes the images. Always pass a fresh list (`list(prompts)`). The FLUX.2 pipelines do not mutate it.
TINY_CALL_DEFAULTS: Final[dict[str, dict[str, Any]]] = {
    "zimage": {"num_inference_steps": 2, "guidance_scale": 0.0, "max_sequence_length": 512},
    "flux2-klein": {
        "num_inference_steps": 2,
        "guidance_scale": 1.0,
        "max_sequence_length": 512,
        "text_encoder_out_layers": (1,),
    },
    "flux2-dev": {
        "num_inference_steps": 2,
        "guidance_scale": 4.0,
        "max_sequence_length": 512,
        "text_encoder_out_layers": (1,),
    },
}


# --------------------------------------------------------------------------------------------- tokenizers


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-unicode table used by byte-level BPE."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


# Jinja string literals rather than raw text between tags, so `{%-` whitespace control cannot eat the newlines.
_TEXT_PARTS: Final = (
    "{%- if m['content'] is string %}{{ m['content'] }}"
    "{%- else %}{%- for c in m['content'] %}{%- if c['type'] == 'text' %}{{ c['text'] }}{%- endif %}{%- endfor %}"
    "{%- endif %}"
)

# Qwen3's layout: <|im_start|>role\ntext<|im_end|>\n ... <|im_start|>assistant\n[<think>\n\n</think>\n\n]
_QWEN_CHAT_TEMPLATE: Final = (
    "{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}" + _TEXT_PARTS + "{{ '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

# Mistral-Small-3.x's layout: <s>[SYSTEM_PROMPT]system[/SYSTEM_PROMPT][INST]user[/INST]
_MISTRAL_CHAT_TEMPLATE: Final = (
    "{{ bos_token }}{%- for m in messages %}"
    "{%- if m['role'] == 'system' %}{{ '[SYSTEM_PROMPT]' }}{%- elif m['role'] == 'user' %}{{ '[INST]' }}{%- endif %}"
    + _TEXT_PARTS
    + "{%- if m['role'] == 'system' %}{{ '[/SYSTEM_PROMPT]' }}{%- elif m['role'] == 'user' %}{{ '[/INST]' }}"
    "{%- else %}{{ eos_token }}{%- endif %}"
    "{%- endfor %}"
)


def qwen_tokenizer() -> Qwen2Tokenizer:
    """A byte-level Qwen2 tokenizer (256 byte ids + 5 specials, no merges) with a Qwen3-style chat template."""
    vocab = {ch: i for i, ch in enumerate(_byte_to_unicode().values())}
    for token in ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]:
        vocab[token] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[])  # pad/eos/unk default to <|endoftext|>
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = _QWEN_CHAT_TEMPLATE
    return tok


_MISTRAL_SPECIALS: Final = (
    # ids 0..4 match the tiny Mistral3 config: unk 0, image token 1, bos 2, eos 3, pad 4.
    "<unk>",
    "[IMG]",
    "<s>",
    "</s>",
    "<pad>",
    "[INST]",
    "[/INST]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[IMG_BREAK]",
    "[IMG_END]",
)


def mistral_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level Mistral/Pixtral-style fast tokenizer: specials first (ids as in §A.5), then 256 bytes."""
    vocab = {tok: i for i, tok in enumerate(_MISTRAL_SPECIALS)}
    for ch in _byte_to_unicode().values():
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=list(_MISTRAL_SPECIALS[5:]) + ["[IMG]"],
    )
    tok.chat_template = _MISTRAL_CHAT_TEMPLATE
    return tok


# --------------------------------------------------------------------------------------------- components


def _vae_blocks() -> dict[str, Any]:
    # Four blocks: vae_scale_factor 2**3 = 8, like the production VAEs.
    return {
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 1,
    }


def _tiny_qwen3_config() -> Qwen3Config:
    return Qwen3Config(
        hidden_size=16,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=_TINY_VOCAB,
        max_position_embeddings=1024,
    )


def tiny_zimage_components(seed: int = 0) -> dict[str, Any]:
    """Components for `diffusers.ZImagePipeline`: §A.4 transformer and Qwen3Model, 8x VAE, byte Qwen tokenizer.

    Weights are a pure function of `seed`; the global torch RNG is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = ZImageTransformer2DModel(
            all_patch_size=(2,),
            all_f_patch_size=(1,),
            in_channels=16,
            dim=32,
            n_layers=2,
            n_refiner_layers=1,
            n_heads=2,
            n_kv_heads=2,
            norm_eps=1e-5,
            qk_norm=True,
            cap_feat_dim=16,  # = the text encoder's hidden_size
            rope_theta=256.0,
            t_scale=1000.0,
            axes_dims=[8, 4, 4],
            axes_lens=[1024, 512, 512],
        )
        # Older diffusers create these with torch.empty (possibly NaN); 0.42.1 uses zeros. Pin them either way.
        with torch.no_grad():
            transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
            transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=[8, 8, 8, 8],
            latent_channels=16,  # the FLUX.1 VAE's 16 channels, which the transformer's in_channels expects
            norm_num_groups=4,
            sample_size=32,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            **_vae_blocks(),
        )
        text_encoder = Qwen3Model(_tiny_qwen3_config())
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": qwen_tokenizer(),
        "transformer": transformer.eval(),
    }


def _tiny_flux2_transformer(*, guidance_embeds: bool) -> Flux2Transformer2DModel:
    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4,  # 4 x the VAE's 1 latent channel after 2x2 patchify
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=16,  # len(text_encoder_out_layers) = 1 x text hidden_size 16
        timestep_guidance_channels=256,
        axes_dims_rope=[4, 4, 4, 4],
        guidance_embeds=guidance_embeds,
    )


def _tiny_flux2_vae() -> AutoencoderKLFlux2:
    return AutoencoderKLFlux2(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4, 4, 4, 4),
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        **_vae_blocks(),
    )


def tiny_flux2_klein_components(seed: int = 0, *, is_distilled: bool = True) -> dict[str, Any]:
    """Keyword arguments for `diffusers.Flux2KleinPipeline`: Qwen3ForCausalLM encoder, byte Qwen tokenizer.

    `is_distilled` is a constructor argument of the pipeline, not a module: it is registered to the pipeline
    config and saved in model_index.json. True (default, like FLUX.2-klein-4B) ignores guidance_scale; False with
    guidance_scale > 1 runs real CFG against an empty negative prompt (two forwards per step), like klein *base*.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = _tiny_flux2_transformer(guidance_embeds=False)
        vae = _tiny_flux2_vae()
        text_encoder = Qwen3ForCausalLM(_tiny_qwen3_config())
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": qwen_tokenizer(),
        "transformer": transformer.eval(),
        "is_distilled": is_distilled,
    }


def tiny_flux2_dev_components(seed: int = 0) -> dict[str, Any]:
    """Components for `diffusers.Flux2Pipeline`: tiny Mistral3ForConditionalGeneration and the fast tokenizer.

    Production passes a PixtralProcessor as `tokenizer`; for text prompts the pipeline only calls
    `apply_chat_template`, which the plain fast tokenizer provides (a processor is only needed for
    `caption_upsample_temperature`, and in transformers 5.23 it requires torchvision).
    """
    config = Mistral3Config(
        text_config={
            "model_type": "mistral",
            "vocab_size": _TINY_VOCAB,
            "hidden_size": 16,
            "intermediate_size": 37,
            "max_position_embeddings": 1024,
            "num_attention_heads": 4,
            "num_hidden_layers": 1,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-05,
            "rope_theta": 1000000000.0,
            "sliding_window": None,
            "bos_token_id": 2,
            "eos_token_id": 3,
            "pad_token_id": 4,
        },
        vision_config={
            "model_type": "pixtral",
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "intermediate_size": 37,
            "image_size": 30,
            "patch_size": 6,
            "num_channels": 3,
        },
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=4,
        image_seq_length=4,
        vision_feature_layer=-1,
        image_token_index=1,  # the tokenizer's [IMG]
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = _tiny_flux2_transformer(guidance_embeds=True)
        vae = _tiny_flux2_vae()
        text_encoder = Mistral3ForConditionalGeneration(config)
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": mistral_tokenizer(),
        "transformer": transformer.eval(),
    }


_BUILDERS: Final = {
    "zimage": tiny_zimage_components,
    "flux2-klein": tiny_flux2_klein_components,
    "flux2-dev": tiny_flux2_dev_components,
}


def _check_kind(kind: str) -> None:
    if kind not in _BUILDERS:
        raise ValueError(f"unknown tiny pipeline kind {kind!r}; expected one of {', '.join(KINDS)}")


def build_tiny_pipeline(kind: str, seed: int = 0, **options: Any) -> Any:
    """The tiny pipeline of `kind` in memory on the CPU; `options` go to the builder (klein: is_distilled)."""
    _check_kind(kind)
    return PIPELINE_CLASSES[kind](**_BUILDERS[kind](seed, **options))


def save_tiny_pipeline(kind: str, directory: Path, seed: int = 0, **options: Any) -> Path:
    """Build the tiny pipeline of `kind` and `save_pretrained` it into `directory`; returns the directory.

    The result is the normal diffusers layout (model_index.json, one subfolder per component with its config
    and safetensors weights, tokenizer files), loadable offline with `PIPELINE_CLASSES[kind].from_pretrained`.
    Every tokenizer round-trips as is: model_index.json records the class of the saved object, so the FLUX.2
    [dev] entry is ["transformers", "TokenizersBackend"] (transformers 5's name for PreTrainedTokenizerFast)
    rather than production's PixtralProcessor, and `from_pretrained` rebuilds that class, chat template
    (tokenizer/chat_template.jinja) included.
    """
    directory = Path(directory)
    build_tiny_pipeline(kind, seed, **options).save_pretrained(directory, safe_serialization=True)
    return directory
