"""GPU benchmark: plain diffusers against Safelight's local backends, side by side in one run.

Full-size Z-Image-Turbo (6.15B transformer, Qwen3-4B text encoder, FLUX.1 VAE) and FLUX.2 klein-4B
(with its Qwen3-4B encoder and the FLUX.2 VAE) are built directly in bf16 on the GPU with random
weights: compute per image does not depend on the weights (spec/backends.md §A.5, §B). Every figure
is end to end: text encoding, the denoising steps and the VAE decode, synchronised on the device.

    python bench/gpu.py                 # on a CUDA machine: the full-size table
    python bench/gpu.py --tiny          # anywhere: the same code path with the tiny CPU models
    python bench/gpu.py --flops-only    # transformer TFLOP per forward at 1024², counted on the meta device

Rows:
  diffusers baseline   ZImagePipeline called as its model card shows (8 steps, guidance 0, batch 1, eager)
  safelight bN         ZImageBackend (the production class) with compile, batches of N tasks
Model-FLOP utilisation = transformer FLOPs actually needed per image × images/s ÷ the GPU's bf16 peak.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from safelight.backends import Job
from safelight.catalog import GenerationParams
from safelight.routing import BackendConfig

# Benchmarks run from a checkout; the tiny pipelines are test code (tests/tiny_pipelines.py), not in the wheel.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H20": 148.0, "A100": 312.0, "L40S": 362.0}
PROMPT = ("A weathered lighthouse on a basalt cliff at dusk, waves breaking below, warm light in the lantern room, "
          "gulls in the wind, cinematic photograph, 35 mm, high detail")

# --- full-size configurations (spec/backends.md §A.1, §A.3, §B) ---

QWEN3_4B = dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
FLUX1_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                 up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
                 layers_per_block=2, latent_channels=16, norm_num_groups=32, sample_size=1024,
                 scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
KLEIN_4B = dict(num_layers=5, num_single_layers=20, attention_head_dim=128, num_attention_heads=24,
                joint_attention_dim=7680, in_channels=128, mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32),
                rope_theta=2000, guidance_embeds=False)


def full_zimage(device: str):
    """ZImagePipeline with full-size random-weight components, created in bf16 on `device`."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from tests.tiny_pipelines import qwen_tokenizer

    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            transformer = ZImageTransformer2DModel()  # the defaults are the 6B Turbo config
            with torch.no_grad():
                transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
                transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
            text_encoder = Qwen3Model(Qwen3Config(**QWEN3_4B))
            vae = AutoencoderKL(**FLUX1_VAE)
    finally:
        torch.set_default_dtype(torch.float32)
    return ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae.eval(),
                          text_encoder=text_encoder.eval(), tokenizer=qwen_tokenizer(), transformer=transformer.eval())


def full_klein(device: str):
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tests.tiny_pipelines import qwen_tokenizer

    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            transformer = Flux2Transformer2DModel(**KLEIN_4B)
            text_encoder = Qwen3ForCausalLM(Qwen3Config(**QWEN3_4B))
            vae = AutoencoderKLFlux2()
    finally:
        torch.set_default_dtype(torch.float32)
    return Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae.eval(),
                              text_encoder=text_encoder.eval(), tokenizer=qwen_tokenizer(),
                              transformer=transformer.eval(), is_distilled=True)


def transformer_tflops_per_forward(kind: str, size: int = 1024, text_tokens: int = 256) -> float:
    """TFLOP of one transformer forward for one image, counted with FlopCounterMode on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    latent = size // 8
    with torch.device("meta"):
        if kind == "zimage":
            from diffusers import ZImageTransformer2DModel

            model = ZImageTransformer2DModel().to(torch.bfloat16)
            x = [torch.randn(16, 1, latent, latent, dtype=torch.bfloat16)]
            caption = [torch.randn(text_tokens, 2560, dtype=torch.bfloat16)]
            args: tuple = (x, torch.tensor([0.5]), caption)
            kwargs: dict[str, Any] = {}
        else:
            from diffusers import Flux2Transformer2DModel

            model = Flux2Transformer2DModel(**KLEIN_4B).to(torch.bfloat16)
            tokens = (latent // 2) ** 2
            args = ()
            kwargs = dict(hidden_states=torch.randn(1, tokens, 128, dtype=torch.bfloat16),
                          encoder_hidden_states=torch.randn(1, 512, 7680, dtype=torch.bfloat16),
                          timestep=torch.tensor([0.5]), img_ids=torch.zeros(tokens, 4), txt_ids=torch.zeros(512, 4))
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(*args, **kwargs)
    return counter.get_total_flops() / 1e12


# --- timing ---


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def baseline_call(pipeline, size: int, steps: int, extra: dict[str, Any], device: str):
    def run():
        pipeline(prompt=PROMPT, height=size, width=size, num_inference_steps=steps, guidance_scale=0.0,
                 generator=torch.Generator(device).manual_seed(0), **extra)
    return run


def backend_call(backend, size: int, batch: int):
    jobs = [Job(task_id=f"bench-{i}", seeds=[1000 + i],
                params=GenerationParams(model="z-image", prompt=f"{PROMPT} #{i}", width=size, height=size))
            for i in range(batch)]

    def run():
        backend._run(jobs)  # the backend's device-thread body: the exact production call
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random models on the CPU (no GPU needed)")
    parser.add_argument("--flops-only", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="1,2,4")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile for our rows")
    parser.add_argument("--klein", action="store_true", help="also time FLUX.2 klein-4B text-to-image")
    args = parser.parse_args()

    if args.flops_only:
        for kind in ("zimage", "klein"):
            print(f"{kind}: {transformer_tflops_per_forward(kind):.1f} TFLOP per transformer forward at 1024²")
        return

    from safelight.backends.local.z_image import ZImageBackend

    batches = [int(b) for b in args.batches.split(",")]
    if args.tiny:
        from tests.tiny_pipelines import TINY_CALL_DEFAULTS, build_tiny_pipeline

        device, size, steps, dtype = "cpu", 256, 2, "float32"
        make = lambda: build_tiny_pipeline("zimage")  # noqa: E731
        extra = {"max_sequence_length": TINY_CALL_DEFAULTS["zimage"]["max_sequence_length"]}
        tflops_per_image, peak, gpu = None, None, "CPU (tiny models: a check that the code runs, not a speed figure)"
    else:
        assert torch.cuda.is_available(), "no CUDA device: run with --tiny on a CPU machine"
        device, size, steps, dtype = "cuda", 1024, 8, "bfloat16"
        make = lambda: full_zimage(device)  # noqa: E731
        extra = {}
        gpu = torch.cuda.get_device_name()
        peak = next((value for name, value in PEAK_BF16_TFLOPS.items() if name in gpu), None)
        tflops_per_image = transformer_tflops_per_forward("zimage", size) * steps
        torch.backends.cuda.matmul.allow_tf32 = True

    print(f"device: {gpu}; torch {torch.__version__}; {size}x{size}, {steps} steps, {args.repeats} timed runs each")
    rows = []

    pipeline = make()
    if not args.tiny:
        pipeline.to(device)
    run = baseline_call(pipeline, size, steps, extra, device)
    run()  # first call: cuDNN/cuBLAS autotuning and allocator warm-up, excluded as for our rows
    baseline_times = timed(run, device, args.repeats)
    rows.append(("diffusers baseline, batch 1, eager", 1, statistics.median(baseline_times)))
    del run

    options = dict(weights="(built in memory)", device=device, dtype=dtype, steps=steps, compile=not args.no_compile,
                   max_sequence_length=extra.get("max_sequence_length"))
    backend = ZImageBackend("bench", BackendConfig(type="diffusers.zimage", max_batch=max(batches),
                                                   **{k: v for k, v in options.items() if v is not None}))
    started = time.perf_counter()
    backend.use_pipeline(pipeline)
    for batch in batches:  # what start() does for the configured buckets: compile before the first task
        backend_call(backend, size, batch)()
    print(f"safelight backend: compile + warm-up for batches {batches}: {time.perf_counter() - started:.1f} s")
    for batch in batches:
        times = timed(backend_call(backend, size, batch), device, args.repeats)
        rows.append((f"safelight backend, batch {batch}{', compiled' if options['compile'] else ''}", batch,
                     statistics.median(times)))

    base_rate = 1 / rows[0][2]
    print()
    print("| configuration | s per call | s per image | images/s | vs baseline | transformer MFU |")
    print("|---|---|---|---|---|---|")
    for name, batch, seconds in rows:
        rate = batch / seconds
        mfu = f"{100 * tflops_per_image * rate / peak:.1f}%" if tflops_per_image and peak else "n/a"
        print(f"| {name} | {seconds:.3f} | {seconds / batch:.3f} | {rate:.2f} | {rate / base_rate:.2f}x | {mfu} |")
    if tflops_per_image:
        print(f"\ntransformer work per image: {tflops_per_image:.0f} TFLOP ({steps} forwards); peak {peak} TFLOPS")

    if args.klein and not args.tiny:
        del pipeline, backend  # free the Z-Image weights before building klein
        torch.cuda.empty_cache()
        klein = full_klein(device)
        run = lambda: klein(prompt=PROMPT, height=size, width=size, num_inference_steps=4,  # noqa: E731
                            generator=torch.Generator(device).manual_seed(0))
        run()
        seconds = statistics.median(timed(run, device, args.repeats))
        print(f"\nFLUX.2 klein-4B, 1024², 4 steps, eager, batch 1: {seconds:.3f} s per image")


if __name__ == "__main__":
    main()
