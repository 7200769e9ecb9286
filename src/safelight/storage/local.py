"""Result and upload files in a local directory (the embedded default)."""

from __future__ import annotations

import asyncio
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
