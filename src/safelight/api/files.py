"""Serving stored files at signed, expiring URLs."""

from __future__ import annotations

import asyncio
import mimetypes
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from starlette.responses import Response

from safelight.net import sniff_image_type
from safelight.storage import StorageKeyError

from .auth import runtime_of
from .download import DOWNLOAD_URL_DOC, download_url
from .envelope import envelope

router = APIRouter(tags=["files"])

router.add_api_route("/api/v1/common/download-url", download_url, methods=["POST"],
                     summary="Get a 20-minute download link for one of your result or upload URLs",
                     openapi_extra=DOWNLOAD_URL_DOC)


@router.get("/files/{key:path}", include_in_schema=False)
async def get_file(request: Request, key: str, expires: str = "", signature: str = "") -> Response:
    runtime = runtime_of(request)
    if not runtime.signer.verify(key, expires, signature):
        return envelope(None, 403, "this link has expired or its signature is not valid", http_status=403)
    try:
        path = runtime.storage.path(key)
    except StorageKeyError:
        return envelope(None, 403, "invalid file path", http_status=403)
    if not path.is_file():
        return envelope(None, 404, "file not found (it may have expired)", http_status=404)
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if media_type.startswith("image/") and sniff_image_type(await asyncio.to_thread(_head, path)) is None:
        media_type = "application/octet-stream"  # named like an image, but it is not one
    # Uploads can be any file: never let a browser run one as a page on this origin.
    headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff",
               "Content-Security-Policy": "sandbox; default-src 'none'"}
    if not media_type.startswith("image/"):
        headers["Content-Disposition"] = "attachment"
    return FileResponse(path, media_type=media_type, headers=headers)


def _head(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(16)
