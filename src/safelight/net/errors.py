"""Errors raised by the outbound HTTP layer.

Callers map them onto kie responses: ``UnsafeURLError`` is the user's fault (422 at create time,
a ``failMsg`` in the worker); ``FetchError`` is a network or remote-server problem; ``ImageError``
means the bytes arrived but are not an image we accept.
"""

from __future__ import annotations


class UnsafeURLError(ValueError):
    """The URL may not be requested: bad scheme, userinfo, or a refused address or host name."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class FetchError(Exception):
    """The request was allowed but did not produce a usable response."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class ResponseTooLarge(FetchError):
    """The body exceeded the byte limit (declared in Content-Length or counted while streaming)."""


class FetchTimeout(FetchError):
    """Connect, read or overall deadline ran out."""


class BadStatus(FetchError):
    """A non-2xx status where the caller asked for a successful response."""

    def __init__(self, url: str, status: int, reason: str | None = None) -> None:
        super().__init__(url, reason or f"{url} answered HTTP {status}")
        self.status = status


class ImageError(ValueError):
    """The data is not an acceptable image: wrong type, too many pixels, truncated or corrupt."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason
