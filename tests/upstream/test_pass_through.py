"""Any model through to kie: `[models."*"] route = ["kie"]` forwards model ids the catalog does not
know, input as sent, priced by the operator; end to end through a live server, its worker and the
fake kie.ai on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from safelight.routing import RoutingError, load_routing
from tests.fake_kie import CREATE, MODELS, FakeKie
from tests.helpers import free_port, serve_app, start_server

KIE_KEY = "kie-upstream-secret-pass-through"
FAST_KIE = 'poll_interval_seconds = 0.02\nmax_poll_interval_seconds = 0.05\nretries = 1\nbackoff_seconds = 0.01'
SEEDREAM = "bytedance/seedream-v4-text-to-image"
KONTEXT = "flux-kontext-pro"
SEEDREAM_INPUT = {"prompt": "a paper boat on a puddle", "image_size": "square_hd", "max_images": 2,
                  "extras": {"nested": [1, "two", None]}}


@pytest.fixture
async def kie() -> AsyncIterator[FakeKie]:
    async with FakeKie(api_key=KIE_KEY, published=(*MODELS, SEEDREAM, KONTEXT)) as fake:
        yield fake


def routing_text(kie: FakeKie, *, pass_through: bool = True) -> str:
    text = f"""
[backends.kie]
type = "kie"
base_url = "{kie.base_url}"
api_key_env = "KIE_API_KEY"
{FAST_KIE}
"""
    if pass_through:
        text += '\n[models."*"]\nroute = ["kie"]\n'
    return text


@contextlib.asynccontextmanager
async def serving(settings, tmp_path, monkeypatch, routing: str,
                  prices: dict[str, int] | None = None) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    monkeypatch.setenv("KIE_API_KEY", KIE_KEY)
    config = tmp_path / "safelight.toml"
    config.write_text(routing)
    port = free_port()
    settings = settings.model_copy(update={"routing_file": str(config), "port": port, "prices": prices or {},
                                           "public_url": f"http://127.0.0.1:{port}"})
    server, task = await start_server(settings)
    runtime = server.config.app.state.runtime
    key = (await runtime.store.accounts.create_key("through", credits=100)).key
    try:
        async with httpx.AsyncClient(base_url=settings.public_url, headers={"Authorization": f"Bearer {key}"},
                                     timeout=30) as client:
            yield runtime, client
    finally:
        server.should_exit = True
        await task


async def balance(client: httpx.AsyncClient) -> int:
    return int((await client.get("/api/v1/chat/credit")).json()["data"])


async def finish(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    created = (await client.post("/api/v1/jobs/createTask", json=body)).json()
    assert created["code"] == 200, created
    for _ in range(500):
        record = (await client.get("/api/v1/jobs/recordInfo",
                                   params={"taskId": created["data"]["taskId"]})).json()["data"]
        if record["state"] in ("success", "fail"):
            return dict(record)
        await asyncio.sleep(0.02)
    raise AssertionError(record)


async def test_an_unknown_model_is_forwarded_as_sent_and_its_results_copied(settings, tmp_path, monkeypatch, kie):
    received: list[dict[str, Any]] = []

    async def hook(request: Request) -> JSONResponse:
        received.append({"headers": dict(request.headers), "body": json.loads(await request.body())})
        return JSONResponse({"ok": True})

    hook_port = free_port()
    hook_server, hook_task = await serve_app(Starlette(routes=[Route("/hook", hook, methods=["POST"])]), hook_port)
    callback = f"http://127.0.0.1:{hook_port}/hook"
    try:
        async with serving(settings, tmp_path, monkeypatch, routing_text(kie), prices={"*": 7, KONTEXT: 3}) \
                as (_runtime, client):
            record = first = await finish(client, {"model": SEEDREAM, "callBackUrl": callback,
                                                   "input": SEEDREAM_INPUT})
            assert record["state"] == "success", record
            assert record["model"] == SEEDREAM
            # Forwarded unchanged under its own id, without the user's callBackUrl (ours to send).
            (create,) = kie.calls(CREATE)
            assert create["json"] == {"model": SEEDREAM, "input": SEEDREAM_INPUT}
            assert json.loads(record["param"])["input"] == SEEDREAM_INPUT
            # One image (the fake makes num_images or 1), copied into our storage: the URL is ours.
            urls = json.loads(record["resultJson"])["resultUrls"]
            assert len(urls) == 1 and urls[0].startswith(str(client.base_url))
            image = await client.get(urls[0])
            assert image.status_code == 200 and image.content == kie.png(0)
            assert await balance(client) == 100 - 7  # the "*" default, per task

            # A model with its own price is charged that.
            record = await finish(client, {"model": KONTEXT, "input": {"prompt": "a red door"}})
            assert record["state"] == "success", record
            assert await balance(client) == 100 - 7 - 3

            for _ in range(200):  # the callback is Safelight's own, signed as always
                if received:
                    break
                await asyncio.sleep(0.02)
            (delivered,) = received
            assert delivered["body"]["code"] == 200
            assert delivered["body"]["data"]["taskId"] == first["taskId"]
            assert delivered["body"]["data"]["model"] == SEEDREAM
            assert delivered["headers"]["x-webhook-signature"] and delivered["headers"]["webhook-signature"]
    finally:
        hook_server.should_exit = True
        await hook_task


async def test_the_upstream_validates_the_input_and_its_refusal_fails_the_task_with_422(
        settings, tmp_path, monkeypatch, kie):
    kie.required = {SEEDREAM: ("image_size",)}
    async with serving(settings, tmp_path, monkeypatch, routing_text(kie), prices={"*": 5}) as (_runtime, client):
        record = await finish(client, {"model": SEEDREAM, "input": {"prompt": "no size"}})
        assert record["state"] == "fail"
        assert record["failCode"] == "422"
        assert record["failMsg"] == "input.image_size is required"  # kie's own words
        assert await balance(client) == 100  # refunded
        # A model the upstream does not publish is the user's mistake too: 422 with kie's message.
        record = await finish(client, {"model": "no-such/model", "input": {"prompt": "x"}})
        assert (record["failCode"], record["failMsg"]) == ("422", "The page does not exist or is not published")
        assert await balance(client) == 100


async def test_without_a_price_nothing_runs_unbilled(settings, tmp_path, monkeypatch, kie):
    async with serving(settings, tmp_path, monkeypatch, routing_text(kie), prices={KONTEXT: 3}) as (runtime, client):
        answer = (await client.post("/api/v1/jobs/createTask",
                                    json={"model": SEEDREAM, "input": {"prompt": "x"}})).json()
        assert answer["code"] == 505
        assert SEEDREAM in answer["msg"] and "SAFELIGHT_PRICES" in answer["msg"] and '"*"' in answer["msg"]
        assert await balance(client) == 100
        assert await runtime.store.tasks.count_unfinished() == 0
        assert kie.calls(CREATE) == []
        # The priced one runs.
        assert (await finish(client, {"model": KONTEXT, "input": {"prompt": "x"}}))["state"] == "success"


async def test_model_ids_are_checked_and_refused_without_a_pass_through_route(settings, tmp_path, monkeypatch, kie):
    async with serving(settings, tmp_path, monkeypatch, routing_text(kie), prices={"*": 1}) as (_runtime, client):
        for bad in ("../etc/passwd", "", "a b", "x" * 129, "-dash-first"):
            answer = (await client.post("/api/v1/jobs/createTask", json={"model": bad, "input": {}})).json()
            assert answer["code"] == 422, (bad, answer)
            assert "not a valid model id" in answer["msg"] or "model" in answer["msg"]
        # Input must still be an object.
        answer = (await client.post("/api/v1/jobs/createTask", json={"model": SEEDREAM, "input": [1]})).json()
        assert answer["code"] == 422 and "input must be an object" in answer["msg"]
        # Catalog models keep their schema: the pass-through does not loosen them.
        answer = (await client.post("/api/v1/jobs/createTask", json={"model": "z-image", "input": {}})).json()
        assert answer["code"] == 422 and "input.prompt" in answer["msg"]
        listed = (await client.get("/api/v1/models")).json()["data"]
        (star,) = [model for model in listed if model["id"] == "*"]
        assert star["passThrough"] is True and star["prices"] == {"default": 1}
        assert star["priceUnit"] == "credits per task" and "kie" in star["description"]

    async with serving(settings, tmp_path, monkeypatch, routing_text(kie, pass_through=False),
                       prices={"*": 1}) as (_runtime, client):
        answer = (await client.post("/api/v1/jobs/createTask", json={"model": SEEDREAM, "input": {}})).json()
        assert answer["code"] == 422 and "is not supported" in answer["msg"]
        assert "*" not in [model["id"] for model in (await client.get("/api/v1/models")).json()["data"]]


def test_only_backends_that_serve_any_model_may_pass_through(tmp_path):
    config = tmp_path / "safelight.toml"
    config.write_text('[backends.bfl]\ntype = "bfl"\n\n[models."*"]\nroute = ["bfl"]\n')
    with pytest.raises(RoutingError, match=r'models\."\*" forwards models the catalog does not know.*bfl'):
        load_routing(config)
    config.write_text('[models."no-such-model"]\nroute = ["sandbox"]\n')
    with pytest.raises(RoutingError, match=r'or "\*" for every other model id'):
        load_routing(config)
