"""The sandbox backend: instant, deterministic, clearly labelled preview images.

It is what a fresh install runs until the operator configures weights or provider keys, and what
client developers test against. Each image shows the word SANDBOX, the model, the prompt, the
size and the seed, with thumbnails of the reference images so input fetching is visibly exercised.
The prompt is drawn legibly in any language the bundled fonts cover (backends/text.py), Chinese,
Japanese and Korean included, and the file has the type the task asks for (`output_format`).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from typing import Any

from PIL import Image, ImageDraw

from safelight.catalog import nearest_bucket

from .base import Backend, GeneratedImage, Job
from .images import encode_image
from .text import clean, lettering


class SandboxBackend(Backend):
    type_name = "sandbox"

    @classmethod
    def offers_safety_checker(cls, options: Mapping[str, Any]) -> bool:
        # Its images are drawn text and solid colours, safe by construction, so `nsfw_checker: true`
        # is honoured trivially (the label says so) rather than refused.
        return True

    async def generate(self, job: Job) -> list[GeneratedImage]:
        width, height = output_size(job)
        images = []
        for index, seed in enumerate(job.seeds):
            images.append(await asyncio.to_thread(draw_preview, job, width, height, seed))
            job.report_progress(int(100 * (index + 1) / len(job.seeds)))
        return images


def output_size(job: Job) -> tuple[int, int]:
    params = job.params
    if params.width and params.height:
        return params.width, params.height
    if job.references:  # "auto": follow the first reference
        first = job.references[0]
        return nearest_bucket(first.width, first.height, params.resolution)
    return nearest_bucket(1, 1, params.resolution)


def _colour(seed: int) -> tuple[int, int, int]:
    digest = hashlib.sha256(str(seed).encode()).digest()
    # Dark, saturated backgrounds keep the white label readable.
    return (40 + digest[0] % 90, 40 + digest[1] % 90, 40 + digest[2] % 90)


def draw_preview(job: Job, width: int, height: int, seed: int) -> GeneratedImage:
    """One preview, encoded in the task's output_format."""
    image = render_preview(job, width, height, seed)
    # zlib level 1: flat colours and text compress well at once.
    return encode_image(image, job.params.output_format, seed, png_compress_level=1)


def render_preview(job: Job, width: int, height: int, seed: int) -> Image.Image:
    params = job.params
    image = Image.new("RGB", (width, height), _colour(seed))
    draw = ImageDraw.Draw(image)
    unit = max(10, min(width, height) // 24)
    big, small = lettering(unit * 2), lettering(unit)
    margin = unit
    # Diagonal stripes make it unmistakable that this is not a real generation.
    stripe = (255, 255, 255, 28)
    overlay = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    overlay_draw = ImageDraw.Draw(overlay)
    for offset in range(-height, width, unit * 3):
        overlay_draw.line([(offset, height), (offset + height, 0)], fill=stripe, width=unit)
    image.paste(overlay, (0, 0), overlay)

    y = margin
    big.draw(draw, (margin, y), "SANDBOX", fill=(255, 220, 80))
    y += unit * 3
    for line in (f"model: {params.model}", f"size: {width}x{height}", f"seed: {seed}"):
        small.draw(draw, (margin, y), clean(line), fill=(255, 255, 255))
        y += int(unit * 1.4)
    y += unit // 2
    line_height = int(unit * 1.3)
    max_width = width - 2 * margin
    max_lines = max(1, (height - y - margin - (unit * 6 if job.references else 0)) // line_height)
    # Only what can show is laid out: no line holds more characters than this.
    shown = params.prompt[:max_lines * int(max_width / (unit * 0.25) + 1)]
    for line in small.wrap(clean(shown), max_width, max_lines, more=len(shown) < len(params.prompt)):
        small.draw(draw, (margin, y), line, fill=(230, 230, 230))
        y += line_height

    if job.references:
        thumb_size = unit * 5
        x = margin
        for ref in job.references:
            thumb = ref.convert("RGB")
            thumb.thumbnail((thumb_size, thumb_size))
            image.paste(thumb, (x, height - margin - thumb.height))
            x += thumb_size + unit // 2
            if x + thumb_size > width:
                break
    return image
