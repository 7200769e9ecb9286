"""Fetching a task's input images: our own files straight from storage, anything else through net/."""

from __future__ import annotations

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
from safelight.storage import OwnLink, Storage, StorageKeyError, UrlSigner


class InputFetchError(Exception):
    """An input the user supplied cannot be used; the task fails with this message."""


class InputLoader:
    def __init__(self, *, storage: Storage, signer: UrlSigner, policy: OutboundPolicy,
                 max_bytes: int, max_pixels: int) -> None:
        self.storage = storage
        self.signer = signer
        self.policy = policy
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels

    async def load(self, field: str, url: str) -> tuple[bytes, str, Image.Image]:
        """(file bytes, mime type by content, decoded image) of one input URL."""
        try:
            # Our own files (a genuine link, whatever host it names) are read from storage; a URL
            # that only looks like ours is fetched through the outbound guard like any other.
            link = self.signer.own_link(url)
            if link is not None:
                return await self._load_own(field, link)
            return await fetch_image(url, policy=self.policy, max_bytes=self.max_bytes, max_pixels=self.max_pixels)
        except UnsafeURLError as exc:
            raise InputFetchError(f"{field} is not allowed: {exc.reason}") from None
        except FetchError as exc:
            raise InputFetchError(f"{field} could not be fetched: {exc.reason}") from None
        except ImageError as exc:
            raise InputFetchError(f"{field} is not a usable image: {exc.reason}") from None

    async def _load_own(self, field: str, link: OwnLink) -> tuple[bytes, str, Image.Image]:
        # Our own upload or result URL: read it from storage instead of making an HTTP request to ourselves.
        if link.expired():
            raise InputFetchError(f"{field} is a link to this server that has expired or is not valid")
        try:
            stored = await self.storage.open(link.key)
        except StorageKeyError:
            stored = None
        if stored is None:
            raise InputFetchError(f"{field} points to a file that no longer exists")
        if stored.size > self.max_bytes:  # refused before a byte of it is read
            raise InputFetchError(f"{field} is larger than {self.max_bytes // (1024 * 1024)} MB")
        try:
            data = await stored.read()
        except FileNotFoundError:  # deleted (retention) between opening and reading
            raise InputFetchError(f"{field} points to a file that no longer exists") from None
        image = decode_image(data, max_pixels=self.max_pixels)
        return data, sniff_image_type(data) or "image/png", image
