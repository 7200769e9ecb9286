"""No input gives a 500: hostile createTask bodies get code 422 naming the problem, and nothing is written."""

from __future__ import annotations

import pytest

CREATE = "/api/v1/jobs/createTask"
OK_INPUT = '"prompt":"ok","aspect_ratio":"1:1"'

CASES = [
    # A lone UTF-16 surrogate, as a value and as a key (SQLite could not store either).
    ('{"model":"z-image","input":{' + OK_INPUT + ',"x":"\\ud800"}}', "lone UTF-16 surrogate"),
    ('{"model":"z-image","input":{' + OK_INPUT + ',"n":{"\\ud800":1}}}', "lone UTF-16 surrogate"),
    ('{"model":"z-image","input":{"prompt":"\\udc00 low","aspect_ratio":"1:1"}}', "lone UTF-16 surrogate"),
    # Deep nesting: as a field, and the whole body.
    ('{"model":"z-image","input":{' + OK_INPUT + ',"deep":' + "[" * 100_000 + "]" * 100_000 + "}}",
     "nested"),
    ("[" * 50_000 + "]" * 50_000, "nested"),
    ('{"model":"z-image","input":{' + OK_INPUT + ',"deep":' + "[" * 40 + "]" * 40 + "}}", "nested more than"),
    # NaN and Infinity are not JSON: echoing them into `param` would break strict clients.
    ('{"model":"z-image","input":{' + OK_INPUT + ',"ignored":NaN}}', "NaN is not valid JSON"),
    ('{"model":"z-image","input":{' + OK_INPUT + ',"ignored":-Infinity}}', "-Infinity is not valid JSON"),
]


@pytest.mark.parametrize(("body", "message"), CASES, ids=[f"case{i}" for i in range(len(CASES))])
async def test_hostile_bodies_get_422_and_write_nothing(live_server, body, message):
    async with live_server.client() as client:
        response = await client.post(CREATE, content=body.encode(), headers={"Content-Type": "application/json"})
        assert response.status_code == 200
        reply = response.json()
        assert reply["code"] == 422 and message in reply["msg"] and reply["data"] is None, reply
        assert await live_server.runtime.store.tasks.count_by_state() == {}
        assert (await client.get("/api/v1/chat/credit")).json()["data"] == 1000


async def test_a_valid_surrogate_pair_is_text_and_is_accepted(live_server):
    async with live_server.client() as client:
        body = '{"model":"z-image","input":{"prompt":"a \\ud83d\\ude00 face","aspect_ratio":"1:1"}}'
        reply = (await client.post(CREATE, content=body.encode(), headers={"Content-Type": "application/json"})).json()
        assert reply["code"] == 200, reply
        record = await live_server.wait_terminal(reply["data"]["taskId"])
        assert "\U0001f600" in record["param"]


async def test_an_upload_url_cannot_read_this_servers_own_api(live_server):
    """With 127.0.0.1 allow-listed (for a local MinIO or receiver), a redirect to Safelight's own port is
    still refused: the allow-list never opens the server's own address."""
    from starlette.applications import Starlette
    from starlette.responses import RedirectResponse
    from starlette.routing import Route

    from tests.helpers import free_port, serve_app

    own = f"{live_server.base_url}/api/v1/chat/credit"
    app = Starlette(routes=[Route("/r", lambda _request: RedirectResponse(own, status_code=302))])
    port = free_port()
    server, task = await serve_app(app, port, lifespan="off")
    try:
        async with live_server.client() as client:
            for url in (f"http://127.0.0.1:{port}/r", own):
                reply = (await client.post("/api/file-url-upload", json={"fileUrl": url, "uploadPath": "x"})).json()
                assert reply["code"] == 400 and "own address" in reply["msg"], reply
        assert not (live_server.runtime.storage.root / "uploads").exists()
    finally:
        server.should_exit = True
        await task
