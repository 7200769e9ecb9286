"""The pages' routes (/, /playground, /admin, /ui/...) and what the models list tells them; the pages
themselves run in a browser in tests/web/."""

from __future__ import annotations

import textwrap

import httpx

from safelight.runtime import Role
from tests.helpers import free_port, start_server


async def test_the_playground_and_its_files_are_served(live_server):
    async with httpx.AsyncClient(base_url=live_server.base_url) as client:
        for path in ("/", "/playground"):
            response = await client.get(path)
            assert response.status_code == 200 and "<title>Playground · Safelight</title>" in response.text
            assert response.headers["content-type"] == "text/html; charset=utf-8"
            assert "script-src 'self'" in response.headers["content-security-policy"]
            assert response.headers["x-content-type-options"] == "nosniff"
        assert (await client.head("/")).status_code == 200
        for name, kind in (("playground.js", "javascript"), ("common.js", "javascript"), ("common.css", "text/css")):
            asset = await client.get(f"/ui/{name}")
            assert asset.status_code == 200 and kind in asset.headers["content-type"]
            assert asset.headers["cache-control"] == "no-cache"
            revalidated = await client.get(f"/ui/{name}", headers={"If-None-Match": asset.headers["etag"]})
            assert revalidated.status_code == 304
        assert (await client.get("/ui/missing.js")).status_code == 404
        assert (await client.get("/ui/../api/web.py")).status_code == 404
        assert (await client.get("/ui/%2e%2e/api/web.py")).status_code == 404


async def test_the_models_say_which_are_sandbox_previews(settings, tmp_path):
    routing = tmp_path / "routing.toml"
    routing.write_text(textwrap.dedent("""
        [backends.bfl]
        type = "bfl"
        api_key_env = "BFL_API_KEY"

        [backends.second-sandbox]
        type = "sandbox"

        [models."flux-2/pro-image-to-image"]
        route = ["bfl", "sandbox"]

        [models."z-image"]
        route = ["sandbox", "second-sandbox"]

        [models."google/imagen4-fast"]
        route = []
    """))
    port = free_port()
    settings = settings.model_copy(update={"routing_file": str(routing), "port": port})
    server, task = await start_server(settings, roles=[Role.DELIVERY])
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            models = (await client.get("/api/v1/models")).json()["data"]
    finally:
        server.should_exit = True
        await task
    sandbox = {model["id"]: model["sandbox"] for model in models}
    assert sandbox["flux-2/pro-image-to-image"] is False  # a real backend first, the sandbox as fallback
    assert sandbox["z-image"] is True  # every backend on its route is of the sandbox type
    assert sandbox["google/imagen4-fast"] is False  # off this server
    assert sandbox["ideogram/character"] is True  # not in the file: the sandbox
