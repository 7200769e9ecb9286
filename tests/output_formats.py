"""What the output_format tests share: the three file types by their magic bytes, images encoded in
each, and a small test-only catalog model whose `output_format` input sets GenerationParams.output_format
(registered in the real catalog registry for the length of a test, with pytest's monkeypatch)."""

from __future__ import annotations

import io
from typing import Literal

import pytest
from PIL import Image

from safelight.catalog import MODELS, GenerationParams, ModelInput, ModelSpec

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff", "webp": b"RIFF"}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
FORMAT_MODEL = "test/output-format"


def is_format(data: bytes, name: str) -> bool:
    if name == "webp":
        return data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return data.startswith(MAGIC[name])


def encoded(name: str, size: tuple[int, int] = (48, 32), colour=(200, 30, 30), mode: str = "RGB") -> bytes:
    image = Image.new(mode, size, colour)
    buffer = io.BytesIO()
    image.save(buffer, format={"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[name])
    return buffer.getvalue()


class FormatInput(ModelInput):
    prompt: str
    output_format: Literal["png", "jpg", "jpeg", "webp"] = "png"


def _params(model_input: FormatInput) -> GenerationParams:
    name = "jpeg" if model_input.output_format == "jpg" else model_input.output_format
    return GenerationParams(model=FORMAT_MODEL, prompt=model_input.prompt, width=256, height=256, output_format=name)


SPEC = ModelSpec(id=FORMAT_MODEL, title="output_format test model", description="tests only",
                 input_schema=FormatInput, prices={"default": 1}, to_params=_params)


def register(monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve the test model until the test ends (set before a server starts: routes are read at start)."""
    monkeypatch.setitem(MODELS, FORMAT_MODEL, SPEC)
