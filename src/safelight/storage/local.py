"""Result and upload files in a local directory (the embedded default)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from stat import S_ISREG

from .base import CHUNK_BYTES, Presigner, StorageKeyConflict, StorageKeyError, StoredFile, check_key

__all__ = ["LocalStorage", "StorageKeyError"]


class LocalStorage:
    """Files under one directory; every blocking call runs in a thread."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def description(self) -> str:
        return str(self.root)

    @property
    def presigner(self) -> Presigner | None:
        return None  # files are served by Safelight itself (/files/<key>)

    def path(self, key: str) -> Path:
        # Keys come from our own code and from signed URLs; refuse anything that could escape the root.
        return self.root.joinpath(*check_key(key).parts)

    async def put(self, key: str, data: bytes) -> None:
        """Write the file; StorageKeyConflict when a folder on its path is a file, or it is a folder."""
        path = self.path(key)
        try:
            await asyncio.to_thread(self._write_atomically, path, data)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            existing = next((parent for parent in reversed(path.parents) if parent.is_file()), path)
            raise StorageKeyConflict(key, existing.relative_to(self.root).as_posix()) from None

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self.path(key).read_bytes)

    async def open(self, key: str) -> StoredFile | None:
        path = self.path(key)
        size = await asyncio.to_thread(_file_size, path)
        if size is None:
            return None
        return StoredFile(key=key, size=size, chunks=_read_chunks(path), path=path)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path(key).is_file)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.path(key).unlink, missing_ok=True)

    async def delete_many(self, keys: Sequence[str]) -> None:
        paths = [self.path(key) for key in keys]
        await asyncio.to_thread(_unlink_all, paths)

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every file under `prefix` and the directory itself. Returns the bytes freed."""
        return await asyncio.to_thread(self._delete_dir, self.path(prefix))

    async def older_than(self, prefix: str, cutoff: float) -> list[tuple[str, int]]:
        return await asyncio.to_thread(self._older_than, prefix, cutoff)

    async def prune_empty_dirs(self, prefix: str) -> None:
        """Remove directories under `prefix` left empty by deletions (the prefix itself stays)."""
        await asyncio.to_thread(self._prune_empty_dirs, self.path(prefix))

    async def close(self) -> None:
        return None

    def _older_than(self, prefix: str, cutoff: float) -> list[tuple[str, int]]:
        base = self.path(prefix)
        found: list[tuple[str, int]] = []
        for directory, _dirs, names in os.walk(base):
            for name in names:
                full = Path(directory, name)
                try:
                    stat = full.lstat()
                except FileNotFoundError:  # deleted or replaced while we walked
                    continue
                if stat.st_mtime < cutoff and full.is_file() and not full.is_symlink():
                    found.append((full.relative_to(self.root).as_posix(), stat.st_size))
        return found

    @staticmethod
    def _delete_dir(directory: Path) -> int:
        freed = 0
        if not directory.is_dir():
            return 0
        for sub, dirs, names in os.walk(directory, topdown=False):
            for name in names:
                full = Path(sub, name)
                with contextlib.suppress(FileNotFoundError):
                    freed += full.lstat().st_size
                    full.unlink()
            for name in dirs:
                with contextlib.suppress(OSError):
                    Path(sub, name).rmdir()
        with contextlib.suppress(OSError):
            directory.rmdir()
        return freed

    @staticmethod
    def _prune_empty_dirs(base: Path) -> None:
        if not base.is_dir():
            return
        for sub, _dirs, _names in os.walk(base, topdown=False):
            if Path(sub) != base:
                with contextlib.suppress(OSError):  # not empty (e.g. a new upload landed): keep it
                    Path(sub).rmdir()

    @staticmethod
    def _write_atomically(target: Path, data: bytes) -> None:
        # Readers never see a half-written file: write beside it, then rename over.
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _unlink_all(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _file_size(path: Path) -> int | None:
    """The size of a regular file at `path`, or None if there is none."""
    try:
        stat = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return stat.st_size if S_ISREG(stat.st_mode) else None


async def _read_chunks(path: Path) -> AsyncIterator[bytes]:
    """The file's bytes, CHUNK_BYTES at a time, each read in a thread; opened on the first read."""
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)
