"""Retention: delete expired result files and uploads, keeping every task record.

- Result files of tasks that completed more than ``result_retention_seconds`` ago (14 days by
  default, as kie keeps generated media) are deleted and the task is marked ``files_deleted``;
  recordInfo then answers ``resultUrls: []``, and download-url refuses its old links.
- Uploads last modified more than ``upload_retention_seconds`` ago (3 days, as on kie) are deleted.

It works on any `Storage` (a local directory, an S3 bucket: objects are deleted there).

A retention of 0 (or less) keeps those files forever. The sweep is idempotent and safe to
interrupt: files are deleted before the task is marked, so a crash in between only means the next
sweep deletes nothing and marks the task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from safelight.config import Settings

from .base import Storage

log = logging.getLogger(__name__)

RESULTS_PREFIX = "results"
UPLOADS_PREFIX = "uploads"
BATCH_SIZE = 500


class TaskResults(Protocol):
    """What retention needs from the task store (`safelight.store.TaskStore` provides it)."""

    async def expired_results(self, completed_before_ms: int, limit: int) -> list[str]: ...

    async def mark_files_deleted(self, task_ids: Sequence[str], completed_before_ms: int) -> int: ...


@dataclass(frozen=True)
class SweepReport:
    tasks: int = 0  # tasks whose result files were deleted
    result_bytes: int = 0
    uploads: int = 0  # upload files deleted
    upload_bytes: int = 0

    def __str__(self) -> str:
        return (f"{self.tasks} task result(s) deleted ({_mb(self.result_bytes)}), "
                f"{self.uploads} upload(s) deleted ({_mb(self.upload_bytes)})")


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


async def sweep(tasks: TaskResults, storage: Storage, settings: Settings, *, now: float | None = None,
                batch_size: int = BATCH_SIZE) -> SweepReport:
    """Run one retention pass over result files (through the task store) and uploads."""
    now = time.time() if now is None else now
    swept, result_bytes = 0, 0
    if settings.result_retention_seconds > 0:
        cutoff_ms = int((now - settings.result_retention_seconds) * 1000)
        swept, result_bytes = await _sweep_results(tasks, storage, cutoff_ms, batch_size)
    uploads, upload_bytes = 0, 0
    if settings.upload_retention_seconds > 0:
        uploads, upload_bytes = await _sweep_uploads(storage, now - settings.upload_retention_seconds)
    return SweepReport(tasks=swept, result_bytes=result_bytes, uploads=uploads, upload_bytes=upload_bytes)


async def _sweep_results(tasks: TaskResults, storage: Storage, cutoff_ms: int,
                         batch_size: int) -> tuple[int, int]:
    swept = freed = 0
    while True:
        ids = await tasks.expired_results(cutoff_ms, batch_size)
        if not ids:
            return swept, freed
        for task_id in ids:
            # Ids are 32 hex characters (our own), so this is always a key under results/.
            freed += await storage.delete_prefix(f"{RESULTS_PREFIX}/{task_id}")
        swept += await tasks.mark_files_deleted(ids, cutoff_ms)
        if len(ids) < batch_size:
            return swept, freed


async def _sweep_uploads(storage: Storage, cutoff: float) -> tuple[int, int]:
    old = await storage.older_than(UPLOADS_PREFIX, cutoff)
    await storage.delete_many([key for key, _size in old])
    if old:
        await storage.prune_empty_dirs(UPLOADS_PREFIX)
    return len(old), sum(size for _key, size in old)


async def run_periodically(tasks: TaskResults, storage: Storage, settings: Settings,
                           every_seconds: float) -> None:
    """Sweep now and then every `every_seconds`, until cancelled. A failed pass is logged and retried."""
    while True:
        try:
            report = await sweep(tasks, storage, settings)
            if report.tasks or report.uploads:
                log.info("retention sweep: %s", report)
        except Exception:
            log.exception("retention sweep failed; trying again in %g s", every_seconds)
        await asyncio.sleep(every_seconds)
