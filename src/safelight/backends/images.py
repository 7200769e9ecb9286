"""Result files in the type a task asks for (`GenerationParams.output_format`: png, jpeg or webp).

Backends that draw or generate pixels (the sandbox, local pipelines) encode with `encode_image`;
the worker passes every result through `conform_all`, which re-encodes an image of another type (an
upstream provider's JPEG for a task that asked for PNG, say), so the stored file always matches.
Encoding is CPU work: `encode_image` and `conform` belong off the event loop, `conform_all` goes
there itself.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass

from PIL import Image

from safelight.kie import FailCode
from safelight.net import ImageError, decode_image, sniff_image_type

from .base import BackendError, GeneratedImage


@dataclass(frozen=True)
class OutputFormat:
    name: str  # output_format's value
    pil: str  # Pillow's format name
    content_type: str
    extension: str


OUTPUT_FORMATS = {
    "png": OutputFormat("png", "PNG", "image/png", "png"),
    "jpeg": OutputFormat("jpeg", "JPEG", "image/jpeg", "jpg"),
    "webp": OutputFormat("webp", "WEBP", "image/webp", "webp"),
}

JPEG_QUALITY = 92
WEBP_QUALITY = 90
# libwebp's effort 0-6: 2 encodes a 1024x1024 image in about 40 ms, within 3% of the size 4 (the
# default, over twice as slow) gives.
WEBP_METHOD = 2
# zlib level 1 for the sandbox's flat colours and text; the pipelines' photographic output uses 4
# (near-smallest files at a fraction of level 9's CPU).
PNG_COMPRESS_LEVEL = 4


def output_format(name: str) -> OutputFormat:
    """The format for an `output_format` value ("jpg" is kie's spelling of "jpeg")."""
    try:
        return OUTPUT_FORMATS["jpeg" if name == "jpg" else name]
    except KeyError:
        raise ValueError(f"output_format {name!r} is not one of: {', '.join(OUTPUT_FORMATS)}") from None


def _flatten(image: Image.Image, keep_alpha: bool) -> Image.Image:
    """The image in a mode the target format stores: RGB (or RGBA where alpha is kept); transparency
    is composited onto white where it cannot be kept (JPEG)."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        if keep_alpha:
            return rgba
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image if image.mode == "RGB" else image.convert("RGB")


def encode(image: Image.Image, name: str = "png", *, png_compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """`image` as a file of the `output_format` `name`."""
    fmt = output_format(name)
    buffer = io.BytesIO()
    options: dict[str, object] = {}
    if icc := image.info.get("icc_profile"):
        options["icc_profile"] = icc  # keep colours as the backend meant them
    if fmt.pil == "JPEG":
        _flatten(image, keep_alpha=False).save(buffer, format="JPEG", quality=JPEG_QUALITY, **options)
    elif fmt.pil == "WEBP":
        _flatten(image, keep_alpha=True).save(buffer, format="WEBP", quality=WEBP_QUALITY, method=WEBP_METHOD,
                                              **options)
    else:
        if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
            image = _flatten(image, keep_alpha=True)  # CMYK, YCbCr, ... are not PNG modes
        image.save(buffer, format="PNG", compress_level=png_compress_level, **options)
    return buffer.getvalue()


def encode_image(image: Image.Image, name: str, seed: int | None, *,
                 png_compress_level: int = PNG_COMPRESS_LEVEL) -> GeneratedImage:
    """A GeneratedImage of `image` in the `output_format` `name`, with its content type and extension."""
    fmt = output_format(name)
    return GeneratedImage(data=encode(image, fmt.name, png_compress_level=png_compress_level), seed=seed,
                          content_type=fmt.content_type, extension=fmt.extension)


def conform(image: GeneratedImage, name: str, *, max_pixels: int) -> GeneratedImage:
    """`image` as a file of the `output_format` `name`: unchanged when its bytes already are one (its
    type read from the bytes, not from what the backend said), else decoded (within `max_pixels`,
    before any pixel is read) and re-encoded. Raises net.ImageError for bytes that are no JPEG, PNG
    or WebP, or too large."""
    fmt = output_format(name)
    actual = sniff_image_type(image.data)
    if actual == fmt.content_type:
        if (image.content_type, image.extension) == (fmt.content_type, fmt.extension):
            return image
        return GeneratedImage(data=image.data, seed=image.seed, content_type=fmt.content_type,
                              extension=fmt.extension)
    decoded = decode_image(image.data, max_pixels=max_pixels)
    try:
        return encode_image(decoded, fmt.name, image.seed)
    finally:
        decoded.close()



def _matches(image: GeneratedImage, fmt: OutputFormat) -> bool:
    return (image.content_type, image.extension) == (fmt.content_type, fmt.extension) and \
        sniff_image_type(image.data) == fmt.content_type


async def conform_all(images: list[GeneratedImage], name: str, *, max_pixels: int) -> list[GeneratedImage]:
    """`conform` for a task's images, on a thread when any needs re-encoding. Raises BackendError
    (GENERATION) when one cannot be read."""
    fmt = output_format(name)
    if all(_matches(image, fmt) for image in images):
        return images
    try:
        return await asyncio.to_thread(lambda: [conform(image, fmt.name, max_pixels=max_pixels) for image in images])
    except ImageError as exc:
        raise BackendError(FailCode.GENERATION, "the backend returned an image that cannot be read; credits refunded",
                           detail=f"result not convertible to {fmt.name}: {exc.reason}") from None
