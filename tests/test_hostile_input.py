"""No input gives a 500: hostile createTask bodies get code 422 naming the problem, and nothing is written."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from tests.helpers import png_bytes, wait_state

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


async def test_405_names_the_allowed_methods(live_server):
    async with live_server.client() as client:
        response = await client.get(CREATE)
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json()["code"] == 405


async def test_a_500_answers_in_kie_shape_and_keeps_the_connection(settings):
    """An unexpected error is logged and answered; the same keep-alive connection serves the next request."""
    from safelight.api.app import create_app
    from tests.helpers import free_port, serve_app

    async def boom() -> None:
        raise RuntimeError("a bug")

    port = free_port()
    own = settings.model_copy(update={"port": port, "public_url": f"http://127.0.0.1:{port}"})
    app = create_app(own, roles=())
    app.add_api_route("/test-only/boom", boom)  # stands for any bug in a route
    server, task = await serve_app(app, port)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answers = []
        for path in ("/test-only/boom", "/healthz"):
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            answers.append((head.split(b" ")[1], json.loads(await reader.readexactly(length))))
        writer.close()
        assert answers[0] == (b"500", {"code": 500, "msg": "Server Error - An unexpected error occurred while "
                                       "processing the request", "data": None})
        assert answers[1] == (b"200", {"code": 200, "msg": "success", "data": {"status": "ok"}})
    finally:
        server.should_exit = True
        await task


async def test_bad_keys_are_remembered_briefly(live_server):
    """A flood of requests with a bad key costs one lookup, not one per request."""
    from sqlalchemy import event

    engine = live_server.runtime.store.db.read_engine.sync_engine
    lookups = []

    def count(_conn, _cursor, statement, *_args):
        if "api_keys" in statement:
            lookups.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        async with live_server.client(key="sl_not-a-key") as client:
            replies = await asyncio.gather(*(client.get("/api/v1/chat/credit") for _ in range(30)))
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert {reply.json()["code"] for reply in replies} == {401}
    assert 1 <= len(lookups) <= 5  # concurrent first misses may each look once; then the miss is cached


async def test_uploads_report_the_type_of_their_content_and_keep_a_safe_name(live_server):
    async with live_server.client() as client:
        named_png = (await client.post("/api/file-base64-upload", json={
            "base64Data": base64.b64encode(b"just text").decode(), "uploadPath": "u", "fileName": "x.png"})).json()
        assert named_png["data"]["mimeType"] == "text/plain" and named_png["data"]["fileName"] == "x.png"
        served = await client.get(named_png["data"]["downloadUrl"])
        assert served.status_code == 200 and served.headers["content-type"] == "application/octet-stream"

        streamed = (await client.post("/api/file-stream-upload", data={"uploadPath": "u"},
                                      files={"file": ("../My notes (1).txt", b"hello", "text/plain")})).json()
        assert streamed["data"]["fileName"] == "My_notes_1_.txt" and streamed["data"]["mimeType"] == "text/plain"
        binary = (await client.post("/api/file-stream-upload", data={"uploadPath": "u"},
                                    files={"file": ("notimage.bin", b"\x00\x01\x02\xff", "image/png")})).json()
        assert binary["data"]["mimeType"] == "application/octet-stream"
        image = (await client.post("/api/file-stream-upload", data={"uploadPath": "u"},
                                   files={"file": ("photo", png_bytes(4, 4), "text/plain")})).json()
        assert image["data"]["mimeType"] == "image/png" and image["data"]["fileName"] == "photo"


async def test_an_upload_where_an_earlier_upload_sits_is_refused_naming_it(live_server):
    """On local storage a file and a folder cannot share a path: uploadPath "a" with fileName "b" makes a
    file where uploadPath "a/b" needs a folder. The refusal names both; nothing is half-written."""
    async with live_server.client() as client:
        def upload(path: str, name: str) -> dict:
            return {"base64Data": base64.b64encode(png_bytes(2, 2)).decode(), "uploadPath": path, "fileName": name}

        first = (await client.post("/api/file-base64-upload", json=upload("a", "b"))).json()
        assert first["code"] == 200
        under_file = (await client.post("/api/file-base64-upload", json=upload("a/b", "c.png"))).json()
        assert under_file["code"] == 400 and under_file["success"] is False
        assert under_file["msg"] == ("uploadPath 'a/b' with fileName 'c.png' conflicts with an earlier upload: 'a/b' "
                                     "is a file, not a folder; choose another uploadPath or fileName")
        await client.post("/api/file-base64-upload", json=upload("x/y", "z.png"))
        onto_folder = (await client.post("/api/file-stream-upload", data={"uploadPath": "x", "fileName": "y"},
                                         files={"file": ("y", png_bytes(2, 2), "image/png")})).json()
        assert onto_folder["code"] == 400 and "'x/y' is a folder" in onto_folder["msg"]
        assert (await client.get(first["data"]["downloadUrl"])).content == png_bytes(2, 2)


async def test_an_input_url_of_another_accounts_file_is_refused(live_server):
    other = await live_server.runtime.store.accounts.create_key("other", credits=100)
    async with live_server.client(key=other.key) as theirs:
        upload = (await theirs.post("/api/file-base64-upload", json={
            "base64Data": base64.b64encode(png_bytes(16, 16)).decode(), "uploadPath": "refs"})).json()
        their_url = upload["data"]["downloadUrl"]
        made = (await theirs.post(CREATE, json={"model": "google/imagen4-fast", "input": {"prompt": "theirs"}})).json()
        their_task = made["data"]["taskId"]
    record = live_server.runtime.task_record(await wait_state(live_server.runtime, their_task))
    their_result = json.loads(record["resultJson"])["resultUrls"][0]
    async with live_server.client() as mine:
        for url in (their_url, their_result):
            body = {"model": "flux-2/pro-image-to-image",
                    "input": {"prompt": "edit", "input_urls": [url], "aspect_ratio": "1:1", "resolution": "1K"}}
            reply = (await mine.post(CREATE, json=body)).json()
            assert reply == {"code": 422, "data": None,
                             "msg": "input.input_urls[0] is a file of this server that belongs to another account"}
        # The owner may use them.
    async with live_server.client(key=other.key) as theirs:
        body = {"model": "flux-2/pro-image-to-image",
                "input": {"prompt": "edit", "input_urls": [their_url, their_result], "aspect_ratio": "1:1",
                          "resolution": "1K"}}
        assert (await theirs.post(CREATE, json=body)).json()["code"] == 200
