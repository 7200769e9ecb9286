"""Result and upload files in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, Cloudflare R2, ...).

`SAFELIGHT_STORAGE_URL=s3://bucket/prefix` selects it; every key lives under `prefix/`. The client
is obstore (Rust's `object_store`, async): requests run on its own runtime, never on the event
loop, and reads stream in chunks. Credentials come from the standard variables
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`); without them
obstore falls back to its own chain (web identity, ECS, instance metadata).

With static credentials the store also presigns GET URLs (SigV4 query signing, done locally
with no request), and recognises its own presigned URLs by recomputing their signature, so a
URL that merely looks like one of ours is never taken for one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit

import obstore
from obstore.store import S3Store

from safelight.config import Settings
from safelight.net import sniff_image_type

from .base import CHUNK_BYTES, Presigner, StorageConfigError, StoredFile, check_key

if TYPE_CHECKING:
    from obstore import Attributes, GetResult
    from obstore.store import S3Config

# SigV4 presigned URLs live at most 7 days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
# S3's DeleteObjects takes at most 1000 keys.
DELETE_BATCH = 1000
DEFAULT_REGION = "us-east-1"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_ALGORITHM = "AWS4-HMAC-SHA256"
_AMZ_DATE = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or "a/b", without leading or trailing slashes

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """`s3://bucket` or `s3://bucket/some/prefix`; StorageConfigError naming the problem otherwise."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or parts.query or parts.fragment:
            raise StorageConfigError(f"SAFELIGHT_STORAGE_URL must look like s3://bucket/prefix; got {url!r}")
        bucket, prefix = parts.netloc, parts.path.strip("/")
        if not _BUCKET.match(bucket):
            raise StorageConfigError(f"SAFELIGHT_STORAGE_URL names an invalid bucket {bucket!r}: 3-63 lowercase "
                                     "letters, digits, '.' and '-'")
        if prefix:
            try:
                check_key(prefix)
            except ValueError:
                raise StorageConfigError(f"SAFELIGHT_STORAGE_URL has an invalid prefix {prefix!r}") from None
        return cls(bucket, prefix)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


@dataclass(frozen=True)
class S3Credentials:
    """Static credentials (an access key pair, with a session token for temporary ones)."""

    access_key_id: str
    secret_access_key: str
    session_token: str = ""

    def __repr__(self) -> str:  # never print the secret
        return f"S3Credentials(access_key_id={self.access_key_id!r}, ...)"


class S3Storage:
    """A Storage on an S3-compatible bucket, under a key prefix."""

    def __init__(self, location: S3Location, *, region: str = "", endpoint_url: str = "",
                 path_style: bool | None = None, credentials: S3Credentials | None = None) -> None:
        self.location = location
        self.region = region or DEFAULT_REGION
        self.endpoint_url = endpoint_url.rstrip("/")
        # Path-style (endpoint/bucket/key) is what MinIO, Ceph and most self-hosted stores expect;
        # AWS prefers virtual-hosted style (bucket.s3.region.amazonaws.com/key).
        self.path_style = bool(self.endpoint_url) if path_style is None else path_style
        self._credentials = credentials
        config: S3Config = {"region": self.region, "virtual_hosted_style_request": not self.path_style}
        if self.endpoint_url:
            config["endpoint"] = self.endpoint_url
        if credentials is not None:
            config["access_key_id"] = credentials.access_key_id
            config["secret_access_key"] = credentials.secret_access_key
            if credentials.session_token:
                config["session_token"] = credentials.session_token
        self._store = S3Store(
            location.bucket, prefix=location.prefix or None, config=config,
            client_options={"allow_http": self.endpoint_url.startswith("http://"), "connect_timeout": "5s",
                            "timeout": "120s"},
            retry_config={"max_retries": 3, "retry_timeout": timedelta(seconds=30)})
        # What every presigned URL of this store starts with: scheme, host and path up to the key.
        self._url_base: tuple[str, str, str] | None = None
        if credentials is not None:
            sample = urlsplit(self._sign("k", 60))
            self._url_base = (sample.scheme, sample.netloc.lower(), sample.path[:-1])

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        access_key, secret = settings.s3_access_key_id, settings.s3_secret_access_key.get_secret_value()
        if bool(access_key) != bool(secret):
            raise StorageConfigError("set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither")
        credentials = (S3Credentials(access_key, secret, settings.s3_session_token.get_secret_value())
                       if access_key else None)
        return cls(S3Location.parse(settings.storage_url), region=settings.s3_region,
                   endpoint_url=settings.s3_endpoint_url, path_style=settings.s3_path_style, credentials=credentials)

    @property
    def description(self) -> str:
        return f"{self.location}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    @property
    def presigner(self) -> Presigner | None:
        # Presigning locally needs the secret; a store on instance or web-identity credentials has none.
        return self if self._url_base is not None else None

    # --- Storage ------------------------------------------------------------------------------

    async def put(self, key: str, data: bytes) -> None:
        check_key(key)
        await obstore.put_async(self._store, key, data, attributes=_attributes(data))

    async def get(self, key: str) -> bytes:
        check_key(key)
        # A missing object raises FileNotFoundError (obstore's mapping of S3's 404).
        result = await obstore.get_async(self._store, key)
        return bytes(await result.bytes_async())

    async def open(self, key: str) -> StoredFile | None:
        check_key(key)
        try:
            result = await obstore.get_async(self._store, key)
        except FileNotFoundError:
            return None
        return StoredFile(key=key, size=int(result.meta["size"]), chunks=_stream(result))

    async def exists(self, key: str) -> bool:
        check_key(key)
        try:
            await obstore.head_async(self._store, key)
        except FileNotFoundError:
            return False
        return True

    async def delete(self, key: str) -> None:
        await self.delete_many([key])

    async def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            check_key(key)
        for start in range(0, len(keys), DELETE_BATCH):
            try:
                await obstore.delete_async(self._store, list(keys[start:start + DELETE_BATCH]))
            except FileNotFoundError:  # already gone
                pass

    async def delete_prefix(self, prefix: str) -> int:
        found = await self._list(prefix)
        await self.delete_many([key for key, _size, _at in found])
        return sum(size for _key, size, _at in found)

    async def older_than(self, prefix: str, cutoff: float) -> list[tuple[str, int]]:
        return [(key, size) for key, size, at in await self._list(prefix) if at < cutoff]

    async def prune_empty_dirs(self, prefix: str) -> None:
        return None  # a bucket has no directories

    async def close(self) -> None:
        return None

    async def _list(self, prefix: str) -> list[tuple[str, int, float]]:
        """(key, size, last modified) of every object under the directory `prefix`."""
        check_key(prefix)
        found: list[tuple[str, int, float]] = []
        async for chunk in obstore.list(self._store, prefix, chunk_size=1000):
            found.extend((meta["path"], int(meta["size"]), meta["last_modified"].timestamp()) for meta in chunk)
        return found

    # --- Presigner ----------------------------------------------------------------------------

    def presign(self, key: str, ttl_seconds: int) -> str:
        check_key(key)
        return self._sign(key, ttl_seconds)

    def _sign(self, key: str, ttl_seconds: int) -> str:
        # Local HMAC work only (static credentials): no request, microseconds.
        seconds = min(max(int(ttl_seconds), 1), MAX_PRESIGN_SECONDS)
        return obstore.sign(self._store, "GET", key, timedelta(seconds=seconds))

    def presigned_key(self, url: str) -> tuple[str, int] | None:
        if self._url_base is None or self._credentials is None:
            return None
        try:
            parts = urlsplit(url)
        except ValueError:
            return None
        scheme, netloc, base_path = self._url_base
        if (parts.scheme.lower(), parts.netloc.lower()) != (scheme, netloc) or not parts.path.startswith(base_path):
            return None
        key = unquote(parts.path[len(base_path):])
        try:
            check_key(key)
        except ValueError:
            return None
        expires_at = verify_presigned_get(parts.netloc.lower(), unquote(parts.path), parts.query,
                                          self._credentials, self.region)
        return None if expires_at is None else (key, expires_at)


def verify_presigned_get(host: str, path: str, query: str, credentials: S3Credentials, region: str) -> int | None:
    """When the presigned GET URL (host, decoded path, raw query) carries a genuine SigV4 signature made
    with these credentials, its expiry time (Unix seconds, possibly past); else None.

    It recomputes the signature as S3 does (AWS Signature Version 4, query-string authentication,
    signed header `host`, unsigned payload) and compares it in constant time."""
    params: dict[str, str] = {}
    for pair in query.split("&") if query else []:
        name, _, value = pair.partition("=")
        name, value = unquote(name), unquote(value)
        if name in params:
            return None  # a repeated parameter is never ours
        params[name] = value
    try:
        scope_key, scope_date, scope_region, service, terminator = params["X-Amz-Credential"].split("/")
        amz_date, signature = params["X-Amz-Date"], params["X-Amz-Signature"]
        signed_at = datetime.strptime(amz_date, _AMZ_DATE).replace(tzinfo=UTC)
        lifetime = int(params["X-Amz-Expires"])
    except (KeyError, ValueError):
        return None
    if (params.get("X-Amz-Algorithm") != _ALGORITHM or params.get("X-Amz-SignedHeaders") != "host"
            or not hmac.compare_digest(scope_key.encode(), credentials.access_key_id.encode()) or scope_region != region
            or (service, terminator) != ("s3", "aws4_request") or scope_date != amz_date[:8]
            or not 0 < lifetime <= MAX_PRESIGN_SECONDS):
        return None
    canonical_query = "&".join(f"{_aws_quote(name)}={_aws_quote(value)}"
                               for name, value in sorted(params.items()) if name != "X-Amz-Signature")
    canonical_request = "\n".join(["GET", _aws_quote(path, safe="/"), canonical_query, f"host:{host}", "", "host",
                                   "UNSIGNED-PAYLOAD"])
    scope = f"{scope_date}/{region}/s3/aws4_request"
    string_to_sign = "\n".join([_ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()])
    signing_key = f"AWS4{credentials.secret_access_key}".encode()
    for part in (scope_date, region, "s3", "aws4_request"):
        signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return None
    return int(signed_at.timestamp()) + lifetime


def _aws_quote(text: str, safe: str = "") -> str:
    """SigV4's URI encoding: every byte but A-Z a-z 0-9 - _ . ~ (and `safe`) as %XX, upper-case."""
    return quote(text, safe=safe)


def _attributes(data: bytes) -> Attributes:
    """Headers a presigned GET answers with: the image type, or an opaque download for anything else
    (an uploaded page must never render as one, wherever the bucket is served)."""
    image = sniff_image_type(data)
    if image is not None:
        return {"Content-Type": image}
    return {"Content-Type": "application/octet-stream", "Content-Disposition": "attachment"}


async def _stream(result: GetResult) -> AsyncIterator[bytes]:
    async for chunk in result.stream(min_chunk_size=CHUNK_BYTES):
        yield bytes(chunk)

