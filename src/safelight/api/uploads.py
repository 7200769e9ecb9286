"""kie's file upload API (spec/kie-api.md §6.3): base64, multipart stream, and fetch-from-URL.

Uploaded files are kept per account under `uploads/<account>/<uploadPath>/<fileName>`; as on kie,
re-uploading a name overwrites it. The returned `downloadUrl` is a signed link to this server,
valid for the upload retention period (or the store's presigned URL, with SAFELIGHT_FILE_URLS=presigned),
and works directly as a task's input URL.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile

from safelight.kie import KieError, upload_reply
from safelight.net import FetchError, UnsafeURLError, fetch, sniff_image_type
from safelight.storage import StorageKeyConflict

from .auth import account_of, runtime_of
from .envelope import BodyError, EnvelopeResponse, parse_json_object, read_body
from .middleware import BodyTimeout
from .openapi import json_body
from .shapes import UploadReply

router = APIRouter(tags=["files"])

SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# The bodies are read by hand (kie's own error replies), so they are described here for the OpenAPI document.
_SEGMENT = SEGMENT.pattern.removeprefix("^").removesuffix("$")
UPLOAD_PATH = {"type": "string", "pattern": f"^{_SEGMENT}(/{_SEGMENT}){{0,7}}$", "examples": ["images/user-uploads"],
               "description": "The folder: 1-8 segments of letters, digits, '.', '_' or '-', separated by '/'."}
FILE_NAME = {"type": "string", "pattern": SEGMENT.pattern,
             "description": "The stored name (uploading a name again overwrites it); by default the file's own "
                            "name, or a fresh one."}
BASE64_BODY = json_body({"type": "object", "required": ["base64Data", "uploadPath"], "properties": {
    "base64Data": {"type": "string",
                   "description": "The file as base64, or as a data: URL (data:image/png;base64,...)."},
    "uploadPath": UPLOAD_PATH, "fileName": FILE_NAME}})
URL_BODY = json_body({"type": "object", "required": ["fileUrl", "uploadPath"], "properties": {
    "fileUrl": {"type": "string", "format": "uri", "pattern": "^[hH][tT][tT][pP][sS]?://",
                "description": "An http or https URL this server fetches (public addresses only)."},
    "uploadPath": UPLOAD_PATH, "fileName": FILE_NAME}})
STREAM_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "uploadPath"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "The file (one part with a filename)."},
        "uploadPath": UPLOAD_PATH, "fileName": FILE_NAME}}}}}
REPLY: dict[int | str, dict[str, Any]] = {200: {"model": UploadReply}}


class UploadError(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code, self.msg = code, msg


def _reply(code: int, msg: str, data: Any = None) -> EnvelopeResponse:
    return EnvelopeResponse(upload_reply(code, msg, data))


async def _account(request: Request) -> int:
    try:
        account_id = await account_of(request)
    except KieError as exc:  # a key used from outside its IP allow-list: said in the upload reply's shape
        raise UploadError(exc.code, exc.msg) from None
    if account_id is None:
        raise UploadError(401, "Authentication failed: Invalid API Key")
    return account_id


def _clean_path(upload_path: Any) -> str:
    if not upload_path:
        raise UploadError(400, "Missing required parameter: uploadPath")
    if not isinstance(upload_path, str):
        raise UploadError(400, "uploadPath must be a string")
    parts = upload_path.split("/")
    if len(parts) > 8 or not all(SEGMENT.match(part) for part in parts):
        raise UploadError(400, "uploadPath must be 1-8 segments of letters, digits, '.', '_' or '-' separated by "
                               "'/', with no leading or trailing slash")
    return upload_path


def _clean_name(file_name: Any, original: str | None, mime: str) -> str:
    """The stored name: the client's `fileName` as given (refused when unsafe); else a safe form of
    the file's own name (the multipart filename, the URL's last segment); else a fresh one."""
    if file_name not in (None, ""):
        if not isinstance(file_name, str) or not SEGMENT.match(file_name):
            raise UploadError(400, "fileName must be 1-128 letters, digits, '.', '_' or '-', not starting with '.'")
        return file_name
    safe = safe_file_name(original or "")
    return safe or uuid.uuid4().hex + (mimetypes.guess_extension(mime) or "")


def safe_file_name(name: str) -> str:
    """`My photo (1).PNG` -> `My_photo_1_.PNG`: the last path segment, unsafe characters replaced,
    no leading dot, at most 128 characters with the extension kept; "" when nothing usable is left."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, extension = base.rpartition(".")
    if not dot:
        stem, extension = base, ""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).lstrip("._-")
    extension = re.sub(r"[^A-Za-z0-9]+", "", extension)[:16]
    if not stem:
        return ""
    suffix = f".{extension}" if extension else ""
    return stem[: 128 - len(suffix)] + suffix


def content_type(data: bytes) -> str:
    """What the bytes are, not what their name says: an image type we accept, text, or opaque bytes."""
    if image := sniff_image_type(data):
        return image
    if data[:5] == b"%PDF-":
        return "application/pdf"
    head = data[:8192]
    try:
        head.decode("utf-8")
        is_text = b"\x00" not in head
    except UnicodeDecodeError as exc:
        is_text = exc.start >= len(head) - 3 and b"\x00" not in head  # a character cut at the 8 KiB mark
    return "text/plain" if is_text else "application/octet-stream"


async def _store(request: Request, account_id: int, upload_path: str, file_name: Any,
                 data: bytes, original: str | None = None) -> EnvelopeResponse:
    runtime = runtime_of(request)
    if len(data) > runtime.settings.upload_max_bytes:
        raise UploadError(400, f"file is larger than {runtime.settings.upload_max_bytes} bytes")
    if not data:
        raise UploadError(400, "file is empty")
    mime = content_type(data)
    name = _clean_name(file_name, original, mime)
    file_path = f"{upload_path}/{name}"
    folder = f"uploads/{account_id}/"
    key = folder + file_path
    try:
        await runtime.storage.put(key, data)
    except StorageKeyConflict as exc:  # local storage: an earlier upload's file sits where a folder must go
        existing = exc.existing.removeprefix(folder)
        raise UploadError(400, f"uploadPath {upload_path!r} with fileName {name!r} conflicts with an earlier upload: "
                               + (f"{existing!r} is a file, not a folder" if existing != file_path
                                  else f"{file_path!r} is a folder")
                               + "; choose another uploadPath or fileName") from None
    return _reply(200, "File uploaded successfully", {
        "success": True,
        "fileName": name,
        "filePath": file_path,
        "downloadUrl": runtime.signer.link(key, runtime.settings.upload_retention_seconds),
        "fileSize": len(data),
        "mimeType": mime,
        "uploadedAt": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    })


async def _json(request: Request) -> dict[str, Any]:
    limit = runtime_of(request).settings.upload_max_bytes * 4 // 3 + 4096  # base64 overhead
    try:
        return parse_json_object(await read_body(request, limit), "")
    except BodyError as exc:
        raise UploadError(400, str(exc)) from None


UploadRoute = Callable[[Request], Awaitable[EnvelopeResponse]]


def _handled(handler: UploadRoute) -> UploadRoute:
    """Render UploadError in the upload routes' own reply shape."""

    async def endpoint(request: Request) -> EnvelopeResponse:
        try:
            return await handler(request)
        except UploadError as exc:
            return _reply(exc.code, exc.msg)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


@router.post("/api/file-base64-upload", summary="Upload a file as base64 (or a data: URL)", responses=REPLY,
             openapi_extra={"requestBody": BASE64_BODY})
@_handled
async def upload_base64(request: Request) -> EnvelopeResponse:
    account_id = await _account(request)
    body = await _json(request)
    upload_path = _clean_path(body.get("uploadPath"))
    encoded = body.get("base64Data")
    if not encoded:
        raise UploadError(400, "Missing required parameter: base64Data")
    if not isinstance(encoded, str):
        raise UploadError(400, "base64Data must be a string")
    if encoded.startswith("data:"):
        _header, _, encoded = encoded.partition(",")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise UploadError(400, "base64Data is not valid base64") from None
    return await _store(request, account_id, upload_path, body.get("fileName"), data)


@router.post("/api/file-stream-upload", summary="Upload a file as multipart/form-data", responses=REPLY,
             openapi_extra={"requestBody": STREAM_BODY})
@_handled
async def upload_stream(request: Request) -> EnvelopeResponse:
    account_id = await _account(request)
    limit = runtime_of(request).settings.upload_max_bytes
    try:
        form = await request.form(max_files=1, max_fields=10, max_part_size=limit)
    except BodyTimeout:
        raise  # answered 408 by the middleware, with the connection closed
    except Exception as exc:  # malformed multipart, or a part over the limit
        raise UploadError(400, f"could not read the multipart body: {exc}") from None
    try:  # the form's files are spooled to temporary files: close them whatever happens
        upload_path = _clean_path(form.get("uploadPath"))
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise UploadError(400, "Missing required parameter: file")
        data = await file.read(limit + 1)
        file_name = form.get("fileName") or None
        original = file.filename
    finally:
        await form.close()
    return await _store(request, account_id, upload_path, file_name, data, original)


@router.post("/api/file-url-upload", summary="Upload a file by fetching a URL", responses=REPLY,
             openapi_extra={"requestBody": URL_BODY})
@_handled
async def upload_url(request: Request) -> EnvelopeResponse:
    account_id = await _account(request)
    body = await _json(request)
    upload_path = _clean_path(body.get("uploadPath"))
    url = body.get("fileUrl")
    if not url:
        raise UploadError(400, "Missing required parameter: fileUrl")
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        raise UploadError(400, "fileUrl must be an http or https URL")
    runtime = runtime_of(request)
    try:
        result = await fetch(url, policy=runtime.policy, max_bytes=runtime.settings.upload_max_bytes, timeout=30.0)
    except UnsafeURLError as exc:
        raise UploadError(400, f"fileUrl is not allowed: {exc.reason}") from None
    except FetchError as exc:
        raise UploadError(400, f"fileUrl could not be fetched: {exc.reason}") from None
    file_name = body.get("fileName") or None
    original = unquote(urlsplit(url).path)
    return await _store(request, account_id, upload_path, file_name, result.content, original)
