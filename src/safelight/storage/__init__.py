"""Where result and upload files live, and the signed URLs that serve them.

`open_storage(settings)` builds the store SAFELIGHT_STORAGE_URL names: a local directory (by
default `<data dir>/files`) or an S3-compatible bucket (`s3://bucket/prefix`, the `s3` extra).
Both implement `Storage`.
"""

from __future__ import annotations

from pathlib import Path

from safelight.config import Settings

from .base import Presigner, Storage, StorageConfigError, StorageKeyConflict, StorageKeyError, StoredFile
from .local import LocalStorage
from .signing import FILES_PREFIX, OwnLink, UrlSigner

__all__ = ["FILES_PREFIX", "LocalStorage", "OwnLink", "Presigner", "Storage", "StorageConfigError",
           "StorageKeyConflict", "StorageKeyError", "StoredFile", "UrlSigner", "check_storage", "open_storage",
           "url_signer"]


def open_storage(settings: Settings) -> Storage:
    """The store SAFELIGHT_STORAGE_URL names; StorageConfigError (with a message for the operator) when
    it, or a setting that goes with it, cannot be used."""
    url = settings.storage_url.strip()
    if url.startswith("s3://"):
        try:
            from .s3 import S3Storage
        except ImportError:
            raise StorageConfigError("SAFELIGHT_STORAGE_URL names S3 storage, which needs the s3 extra: "
                                     "pip install 'safelight[s3]'") from None
        storage: Storage = S3Storage.from_settings(settings)
    elif "://" in url and not url.startswith("file://"):
        raise StorageConfigError(f"SAFELIGHT_STORAGE_URL must be a directory or s3://bucket/prefix; got {url!r}")
    else:
        storage = LocalStorage(Path(url.removeprefix("file://")) if url else settings.files_dir)
    if settings.file_urls == "presigned" and storage.presigner is None:
        raise StorageConfigError(
            "SAFELIGHT_FILE_URLS=presigned needs S3 storage (SAFELIGHT_STORAGE_URL=s3://...) with "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY set")
    return storage


def check_storage(settings: Settings) -> None:
    """Fail before serving when the storage settings cannot work (StorageConfigError says why)."""
    open_storage(settings)


def url_signer(secret: str, settings: Settings, storage: Storage) -> UrlSigner:
    """The signer of this process's file links: Safelight's own, and the store's presigned ones."""
    return UrlSigner(secret, settings.public_url, presigner=storage.presigner,
                     presign=settings.file_urls == "presigned")
