"""The pages for people: the playground (`/`, `/playground`), the operator console (`/admin`), and
their static files under `/ui/` (src/safelight/web/: plain HTML, CSS and JavaScript modules, no
build step).

The pages talk to the same JSON API as any client, with the key the person types in, so they
hold no privilege of their own. Every response here carries a Content-Security-Policy that allows
only this server's own scripts and styles (no inline script, no `style="..."` attribute in the
markup; setting `element.style` from a script is fine) and images from anywhere (results may be
presigned links to a bucket).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from .envelope import envelope

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

# Browsers keep the files but ask again each time (a 304 via ETag): after an upgrade, the page and
# its modules are never a mix of two versions.
CACHE_CONTROL = "no-cache"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src * data: blob:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)


def page(name: str) -> Response:
    """One of the HTML pages, or a 404 in the envelope while a page is not part of this install."""
    path = WEB_DIR / name
    if not path.is_file():
        return envelope(None, 404, f"{name} is not installed", http_status=404)
    return FileResponse(path, media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": CACHE_CONTROL, **SECURITY_HEADERS})


@router.api_route("/", methods=["GET", "HEAD"])
async def root() -> Response:
    return page("playground.html")


@router.api_route("/playground", methods=["GET", "HEAD"])
async def playground() -> Response:
    return page("playground.html")


@router.api_route("/admin", methods=["GET", "HEAD"])
async def console() -> Response:
    return page("console.html")


class WebFiles(StaticFiles):
    """The files of web/, revalidated on each use and under the pages' security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.setdefault("Cache-Control", CACHE_CONTROL)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


def web_files() -> WebFiles:
    """The app for `/ui/` (create_app mounts it: include_router does not carry mounts)."""
    return WebFiles(directory=WEB_DIR, check_dir=False)
