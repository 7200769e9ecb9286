"""Result and upload files in a local directory (the embedded default)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path, PurePosixPath


class StorageKeyError(ValueError):
    pass


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        # Keys come from our own code and from signed URLs; refuse anything that could escape the root.
        pure = PurePosixPath(key)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts:
            raise StorageKeyError(f"invalid storage key {key!r}")
        return self.root.joinpath(*pure.parts)

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._write_atomically, self.path(key), data)

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self.path(key).read_bytes)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path(key).is_file)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.path(key).unlink, missing_ok=True)

    async def delete_dir(self, prefix: str) -> int:
        """Delete every file under `prefix` (a directory key such as "results/<taskId>") and the
        directory itself. Returns the number of bytes freed; a missing directory is not an error."""
        return await asyncio.to_thread(self._delete_dir, self.path(prefix))

    async def older_than(self, prefix: str, cutoff: float) -> list[tuple[str, int]]:
        """(key, size) of every file under `prefix` last modified before `cutoff` (Unix seconds).

        Re-uploading a name replaces the file, so its modification time is when it was last uploaded.
        """
        return await asyncio.to_thread(self._older_than, prefix, cutoff)

    async def prune_empty_dirs(self, prefix: str) -> None:
        """Remove directories under `prefix` left empty by deletions (the prefix itself stays)."""
        await asyncio.to_thread(self._prune_empty_dirs, self.path(prefix))

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
