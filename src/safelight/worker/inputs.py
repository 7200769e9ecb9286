"""Fetching a task's input images: our own files straight from storage, anything else through net/."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from PIL import Image

from safelight.net import (
    FetchError,
    ImageError,
    OutboundPolicy,
    UnsafeURLError,
    decode_image,
    fetch_image,
    sniff_image_type,
)
from safelight.storage import LocalStorage, StorageKeyError, UrlSigner


class InputFetchError(Exception):
    """An input the user supplied cannot be used; the task fails with this message."""


class InputLoader:
    def __init__(self, *, storage: LocalStorage, signer: UrlSigner, policy: OutboundPolicy,
                 max_bytes: int, max_pixels: int) -> None:
        self.storage = storage
        self.signer = signer
        self.policy = policy
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels

    async def load(self, field: str, url: str) -> tuple[bytes, str, Image.Image]:
        """(file bytes, mime type by content, decoded image) of one input URL."""
        try:
            key = self.signer.key_from_url(url)
            if key is not None:
                return await self._load_own(field, url, key)
            return await fetch_image(url, policy=self.policy, max_bytes=self.max_bytes, max_pixels=self.max_pixels)
        except UnsafeURLError as exc:
            raise InputFetchError(f"{field} is not allowed: {exc.reason}") from None
        except FetchError as exc:
            raise InputFetchError(f"{field} could not be fetched: {exc.reason}") from None
        except ImageError as exc:
            raise InputFetchError(f"{field} is not a usable image: {exc.reason}") from None

    async def _load_own(self, field: str, url: str, key: str) -> tuple[bytes, str, Image.Image]:
        # Our own upload or result URL: read it from storage instead of making an HTTP request to ourselves.
        query = parse_qs(urlsplit(url).query)
        if not self.signer.verify(key, query.get("expires", [""])[0], query.get("signature", [""])[0]):
            raise InputFetchError(f"{field} is a link to this server that has expired or is not valid")
        try:
            data = await self.storage.get(key)
        except (FileNotFoundError, StorageKeyError):
            raise InputFetchError(f"{field} points to a file that no longer exists") from None
        if len(data) > self.max_bytes:
            raise InputFetchError(f"{field} is larger than {self.max_bytes // (1024 * 1024)} MB")
        image = decode_image(data, max_pixels=self.max_pixels)
        return data, sniff_image_type(data) or "image/png", image
