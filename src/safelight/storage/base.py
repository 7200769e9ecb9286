"""What every file store offers (`Storage`), whichever backend holds the bytes.

Keys are relative POSIX paths made by Safelight itself (`results/<taskId>/<claim>/<n>.png`,
`uploads/<account>/<path>/<name>`) or taken from signed URLs; `check_key` refuses anything that
could leave the store's root. Every method is async and none blocks the event loop: the local
backend works in threads, the S3 backend on obstore's own runtime.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

# Bytes per chunk when a stored file is streamed (to an HTTP client, or into memory).
CHUNK_BYTES = 256 * 1024


class StorageKeyError(ValueError):
    """A key that is not a plain relative path (absolute, empty, or with `..`)."""


class StorageKeyConflict(StorageKeyError):
    """A key that cannot be stored beside the files already there: on a file system, a folder on the
    key's path is a file (or the key itself is a folder). Object stores have no such conflict."""

    def __init__(self, key: str, existing: str) -> None:
        super().__init__(f"{existing!r} is already a file, so {key!r} cannot be stored under it"
                         if existing != key else f"{key!r} is already a folder")
        self.key, self.existing = key, existing


class StorageConfigError(ValueError):
    """SAFELIGHT_STORAGE_URL (or a setting that goes with it) cannot be used; the message says why."""


def check_key(key: str) -> PurePosixPath:
    """`key` as a relative path with no `..`, `.` or empty segments; StorageKeyError otherwise."""
    pure = PurePosixPath(key)
    if (not key or pure.is_absolute() or not pure.parts or ".." in pure.parts
            or any(part in ("", ".") for part in key.split("/"))):
        raise StorageKeyError(f"invalid storage key {key!r}")
    return pure


@dataclass
class StoredFile:
    """An open stored file: its size, and its content as chunks read while they are consumed."""

    key: str
    size: int
    chunks: AsyncIterator[bytes]
    # Where the local backend keeps the file, so an HTTP server can send it with sendfile and
    # answer range requests; None for remote stores, which are streamed through `chunks`.
    path: Path | None = None

    async def read(self) -> bytes:
        """The whole content (callers check `size` first)."""
        return b"".join([chunk async for chunk in self.chunks])


class Presigner(Protocol):
    """A store that can hand out its own expiring GET URLs (S3 presigned URLs)."""

    def presign(self, key: str, ttl_seconds: int) -> str:
        """A URL that GETs `key` straight from the store for `ttl_seconds` (capped at the store's maximum)."""
        ...

    def presigned_key(self, url: str) -> tuple[str, int] | None:
        """(key, expires at, Unix seconds) if `url` is a genuine presigned GET URL of this store (expired or
        not), else None. Genuine means its signature verifies with this store's credentials."""
        ...


class Storage(Protocol):
    """Result files and uploads: `LocalStorage` (a directory) and `S3Storage` (S3-compatible) implement it."""

    @property
    def description(self) -> str:
        """Where the files are, for start-up lines and logs (never a credential)."""
        ...

    @property
    def presigner(self) -> Presigner | None:
        """The store's own URL signer, when clients can fetch files from it directly; else None."""
        ...

    async def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, replacing any file there; readers never see a partial file."""
        ...

    async def get(self, key: str) -> bytes:
        """The whole file; FileNotFoundError if there is none, StorageKeyError for a bad key."""
        ...

    async def open(self, key: str) -> StoredFile | None:
        """The file, opened for streaming; None if there is none. StorageKeyError for a bad key."""
        ...

    async def exists(self, key: str) -> bool:
        ...

    async def delete(self, key: str) -> None:
        """Delete one file; a missing file is not an error."""
        ...

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Delete these files (in as few requests as the store allows); missing ones are not an error."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every file under `prefix` (a directory key such as "results/<taskId>"), returning
        the bytes freed; an empty or missing prefix is not an error."""
        ...

    async def older_than(self, prefix: str, cutoff: float) -> list[tuple[str, int]]:
        """(key, size) of every file under `prefix` last written before `cutoff` (Unix seconds).
        Re-uploading a name replaces the file, so its time is when it was last uploaded."""
        ...

    async def prune_empty_dirs(self, prefix: str) -> None:
        """Remove directories under `prefix` left empty by deletions (nothing to do where a store has
        no directories)."""
        ...

    async def close(self) -> None:
        ...
