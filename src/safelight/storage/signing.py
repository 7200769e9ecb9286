"""Links to stored files: Safelight's own signed URLs, or the store's presigned ones, and how to
recognise either as ours.

A Safelight link is `<public url>/files/<key>?expires=<unix>&signature=<hmac>`, the HMAC-SHA256 of
the key and the expiry under the server's secret (kept in the store, so every replica and worker
shares it). A link is recognised as ours by its path and a genuine signature, whatever host it
names: a worker started without SAFELIGHT_PUBLIC_URL still knows an API replica's upload URL. An
S3 presigned URL is ours when it names our bucket and prefix and its SigV4 signature verifies with
our credentials. A URL that merely looks like ours is not ours, so it goes through the outbound
guard like any other.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from .base import Presigner

FILES_PREFIX = "/files/"


@dataclass(frozen=True)
class OwnLink:
    """A genuine link to one of our stored files."""

    key: str
    expires_at: int  # Unix seconds
    presigned: bool  # the store's presigned URL rather than Safelight's /files/ link

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at < (time.time() if now is None else now)


class UrlSigner:
    """Issues and recognises links to stored files.

    `url` always makes a Safelight link (served by `GET /files/<key>`). `link` makes the kind clients
    are given: the store's presigned URL when `presign` is on (SAFELIGHT_FILE_URLS=presigned), else a
    Safelight link. `own_link` recognises both kinds, whichever mode is on now, so links handed out
    before a change of mode keep working with download-url and as inputs.
    """

    def __init__(self, secret: str, public_url: str, *, presigner: Presigner | None = None,
                 presign: bool = False) -> None:
        if presign and presigner is None:
            raise ValueError("presigned links need a store that can presign them")
        self._secret = secret.encode()
        self.public_url = public_url.rstrip("/")
        self.presigner = presigner
        self.presign = presign

    def _signature(self, key: str, expires: int) -> str:
        return hmac.new(self._secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, key: str, ttl_seconds: int, *, now: float | None = None) -> str:
        """A Safelight link to `key`, valid for `ttl_seconds`."""
        expires = int((now or time.time()) + ttl_seconds)
        query = urlencode({"expires": expires, "signature": self._signature(key, expires)})
        return f"{self.public_url}{FILES_PREFIX}{quote(key)}?{query}"

    def link(self, key: str, ttl_seconds: int) -> str:
        """The link a client is given for `key`: presigned or a Safelight link, as configured."""
        if self.presign and self.presigner is not None:
            return self.presigner.presign(key, ttl_seconds)
        return self.url(key, ttl_seconds)

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
        # Bytes: compare_digest refuses str with non-ASCII characters, which a forged URL may carry.
        return hmac.compare_digest(self._signature(key, expires_at).encode(), (signature or "").encode())

    def own_link(self, url: str) -> OwnLink | None:
        """The file `url` links to, if it is a genuine link of ours (expired or not); else None."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return None
        if parts.scheme.lower() not in ("http", "https"):
            return None
        if self.presigner is not None and "X-Amz-Signature=" in parts.query:
            found = self.presigner.presigned_key(url)
            return OwnLink(found[0], found[1], presigned=True) if found else None
        query = parse_qs(parts.query)
        expires, signature = query.get("expires", [""])[-1], query.get("signature", [""])[-1]
        if not expires or not signature:
            return None
        # The key follows "/files/"; a proxy may put a path before it, and a key may contain "files/"
        # itself, so try each occurrence: the signature covers the key, so only the true one verifies.
        start = parts.path.find(FILES_PREFIX)
        while start != -1:
            key = unquote(parts.path[start + len(FILES_PREFIX):])
            if key and self.verify(key, expires, signature, check_expiry=False):
                return OwnLink(key, int(expires), presigned=False)
            start = parts.path.find(FILES_PREFIX, start + 1)
        return None

    def key_from_url(self, url: str) -> str | None:
        """The storage key if `url` is a genuine link to one of our files (expired or not), else None."""
        link = self.own_link(url)
        return link.key if link else None
