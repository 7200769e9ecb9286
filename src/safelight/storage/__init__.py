"""Where result and upload files live, and the signed URLs that serve them."""

from .local import LocalStorage, StorageKeyError
from .signing import FILES_PREFIX, UrlSigner

__all__ = ["FILES_PREFIX", "LocalStorage", "StorageKeyError", "UrlSigner"]
