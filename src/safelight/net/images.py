"""Input images: type by content, pixel limit before decoding, then a full decode to catch truncation."""

from __future__ import annotations

import asyncio
import io

from PIL import Image

from .client import fetch
from .errors import ImageError
from .policy import OutboundPolicy
from .urls import Resolver

ACCEPTED_TYPES = ("image/jpeg", "image/png", "image/webp")
_PIL_FORMAT = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
DEFAULT_IMAGE_TIMEOUT = 60.0


def sniff_image_type(data: bytes) -> str | None:
    """The MIME type of ``data`` by its magic bytes, for the three types we accept; else None."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _describe(data: bytes) -> str:
    """A guess at what unsupported data is, so the error tells the user what they sent."""
    head = data[:512].lstrip().lower()
    if not data:
        return "the data is empty"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF images are not supported"
    if data[:2] == b"BM":
        return "BMP images are not supported"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF images are not supported"
    if data[4:8] == b"ftyp":
        return "HEIC/AVIF images are not supported"
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "SVG images are not supported"
    if head.startswith((b"<!doctype html", b"<html")):
        return "it is an HTML page"
    return "unrecognised content"


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode a JPEG, PNG or WebP, refusing anything over ``max_pixels`` before pixel data is read.

    Thread-safe: never touches Pillow's global ``MAX_IMAGE_PIXELS``. Pillow's own bomb check
    (at twice that global) still fires for absurd headers and is reported as an ImageError.
    """
    mime = sniff_image_type(data)
    if mime is None:
        raise ImageError(f"not a JPEG, PNG or WebP image: {_describe(data)}")
    try:
        # Restricting formats stops Pillow from trying every other plugin on hostile bytes.
        img = Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[mime]])
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image dimensions exceed the limit of {max_pixels} pixels ({exc})") from None
    except Exception as exc:
        raise ImageError(f"{mime} image cannot be read: {exc}") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"{mime} image has an invalid size {width}x{height}")
    if width * height > max_pixels:
        img.close()
        raise ImageError(f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}")
    try:
        img.load()
    except Exception as exc:
        # Pillow raises OSError for truncation, but zlib/struct/ValueError surface on corrupt data too.
        raise ImageError(f"{mime} image is truncated or corrupt: {exc}") from None
    return img


async def fetch_image(
    url: str,
    *,
    policy: OutboundPolicy,
    max_bytes: int,
    max_pixels: int,
    resolver: Resolver | None = None,
    timeout: float | None = DEFAULT_IMAGE_TIMEOUT,
) -> tuple[bytes, str, Image.Image]:
    """Fetch and decode an input image. Returns (bytes, mime by content, decoded image).

    Raises UnsafeURLError, FetchError (and subclasses) or ImageError.
    """
    result = await fetch(
        url,
        policy=policy,
        max_bytes=max_bytes,
        headers={"Accept": ", ".join(ACCEPTED_TYPES)},
        resolver=resolver,
        timeout=timeout,
    )
    data = result.content
    try:
        # Decoding a large image takes tens of milliseconds of CPU; keep it off the event loop.
        img = await asyncio.to_thread(decode_image, data, max_pixels=max_pixels)
    except ImageError as exc:
        raise ImageError(f"{url}: {exc.reason}") from None
    mime = sniff_image_type(data)
    assert mime is not None
    return data, mime, img
