"""Signed, expiring URLs for stored files: HMAC-SHA256 over the key and the expiry time."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote, unquote, urlencode, urlsplit

FILES_PREFIX = "/files/"


class UrlSigner:
    def __init__(self, secret: str, public_url: str) -> None:
        self._secret = secret.encode()
        self.public_url = public_url.rstrip("/")

    def _signature(self, key: str, expires: int) -> str:
        return hmac.new(self._secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, key: str, ttl_seconds: int, *, now: float | None = None) -> str:
        expires = int((now or time.time()) + ttl_seconds)
        query = urlencode({"expires": expires, "signature": self._signature(key, expires)})
        return f"{self.public_url}{FILES_PREFIX}{quote(key)}?{query}"

    def verify(self, key: str, expires: str | int, signature: str, *, now: float | None = None,
               check_expiry: bool = True) -> bool:
        """True if `signature` is ours for (key, expires) and, unless check_expiry is False, not yet expired.

        check_expiry=False answers "did this server issue this exact link?", for turning an expired
        link into a fresh one (download-url) after the caller's ownership has been checked separately.
        """
        try:
            expires_at = int(expires)
        except (TypeError, ValueError):
            return False
        if check_expiry and expires_at < (now or time.time()):
            return False
        return hmac.compare_digest(self._signature(key, expires_at), signature or "")

    def key_from_url(self, url: str) -> str | None:
        """The storage key if `url` points at this server's file route, else None."""
        base = urlsplit(self.public_url)
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
            return None
        prefix = base.path.rstrip("/") + FILES_PREFIX
        if not parts.path.startswith(prefix):
            return None
        return unquote(parts.path[len(prefix):]) or None
