"""Serving stored files at signed, expiring URLs.

A local file is sent as a file (sendfile, range requests); a file in a bucket is streamed through
in chunks, never held whole in memory.
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from starlette.responses import Response, StreamingResponse

from safelight.net import sniff_image_type
from safelight.storage import StorageKeyError

from .auth import runtime_of
from .download import DOWNLOAD_URL_DOC, download_url
from .envelope import envelope
from .shapes import DownloadUrlReply

router = APIRouter(tags=["files"])

router.add_api_route("/api/v1/common/download-url", download_url, methods=["POST"],
                     summary="Get a 20-minute download link for one of your result or upload URLs",
                     responses={200: {"model": DownloadUrlReply}}, openapi_extra=DOWNLOAD_URL_DOC)


@router.get("/files/{key:path}", include_in_schema=False)
async def get_file(request: Request, key: str, expires: str = "", signature: str = "") -> Response:
    runtime = runtime_of(request)
    if not runtime.signer.verify(key, expires, signature):
        return envelope(None, 403, "this link has expired or its signature is not valid", http_status=403)
    try:
        stored = await runtime.storage.open(key)
    except StorageKeyError:
        return envelope(None, 403, "invalid file path", http_status=403)
    if stored is None:
        return envelope(None, 404, "file not found (it may have expired)", http_status=404)
    path = stored.path
    head = b""
    if path is None:  # streamed: the first chunk tells what it is, and is sent first
        head = await anext(stored.chunks, b"")
    # An image is served as the type its bytes are (a result's .webp is image/webp even where the
    # system's MIME table lacks the suffix); anything else by its name, as a download.
    sniffed = sniff_image_type(head if path is None else await asyncio.to_thread(_head, path))
    media_type = sniffed or mimetypes.guess_type(PurePosixPath(key).name)[0] or "application/octet-stream"
    if sniffed is None and media_type.startswith("image/"):
        media_type = "application/octet-stream"  # named like an image, but it is not one
    # Uploads can be any file: never let a browser run one as a page on this origin.
    headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff",
               "Content-Security-Policy": "sandbox; default-src 'none'"}
    if not media_type.startswith("image/"):
        headers["Content-Disposition"] = "attachment"
    if path is not None:
        return FileResponse(path, media_type=media_type, headers=headers)
    headers["Content-Length"] = str(stored.size)
    return StreamingResponse(_chain(head, stored.chunks), media_type=media_type, headers=headers)


async def _chain(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if head:
        yield head
    async for chunk in rest:
        yield chunk


def _head(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(16)
