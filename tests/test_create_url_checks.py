"""createTask vets callBackUrl and input URLs before anything is written: 422 naming the field and the reason."""

import asyncio
import base64
import contextlib
import socket
import time
from types import SimpleNamespace

import pytest

import safelight.admission as admission_module
import safelight.net.urls as net_urls
from safelight.runtime import SERVE_ROLES
from tests.helpers import LiveServer, free_port, png_bytes, start_server

CREATE = "/api/v1/jobs/createTask"
Z_IMAGE = {"prompt": "a", "aspect_ratio": "1:1"}


def flux(*urls: str) -> dict:
    return {"model": "flux-2/pro-image-to-image",
            "input": {"input_urls": list(urls), "prompt": "edit", "aspect_ratio": "1:1", "resolution": "1K"}}


@contextlib.asynccontextmanager
async def server(settings, roles=SERVE_ROLES, **overrides):
    """A server of its own; outbound_allow="" is the production default (public addresses only)."""
    port = free_port()
    own = settings.model_copy(update={"port": port, "public_url": f"http://127.0.0.1:{port}", **overrides})
    uvicorn_server, task = await start_server(own, roles)
    runtime = uvicorn_server.config.app.state.runtime
    created = await runtime.store.accounts.create_key("checks", credits=100)
    try:
        yield LiveServer(own.public_url, runtime, created.key, created.account_id)
    finally:
        uvicorn_server.should_exit = True
        await task


@pytest.fixture
async def strict_server(settings):
    async with server(settings, outbound_allow="") as live:
        yield live


@pytest.fixture
def fake_dns(monkeypatch):
    """Names resolved by a test resolver (the real one is not consulted); unknown names do not exist."""
    records: dict[str, list[str] | float] = {}
    lookups: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        lookups.append(host)
        answer = records.get(host)
        if isinstance(answer, float):
            await asyncio.sleep(answer)
            return ["93.184.216.34"]
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answer

    monkeypatch.setattr(net_urls, "default_resolver", resolve)
    return SimpleNamespace(records=records, lookups=lookups)


async def assert_refused(live: LiveServer, body: dict, message: str, *, prefix: bool = False) -> None:
    async with live.client() as client:
        before = (await client.get("/api/v1/chat/credit")).json()["data"]
        reply = (await client.post(CREATE, json=body)).json()
        assert (reply["code"], reply["data"]) == (422, None), reply
        assert reply["msg"].startswith(message) if prefix else reply["msg"] == message, reply
        assert (await client.get("/api/v1/chat/credit")).json()["data"] == before
    assert await live.runtime.store.tasks.count_by_state() == {}


async def test_callback_to_cloud_metadata_is_refused_even_with_loopback_allowed(live_server):
    await assert_refused(live_server, {"model": "z-image", "callBackUrl": "http://169.254.169.254/latest/meta-data",
                                       "input": Z_IMAGE},
                         "callBackUrl is not allowed: 169.254.169.254 is a cloud metadata address")


async def test_callback_to_loopback_is_refused_without_an_allow_list(strict_server):
    await assert_refused(strict_server, {"model": "z-image", "callBackUrl": "http://127.0.0.1:9/cb", "input": Z_IMAGE},
                         "callBackUrl is not allowed: 127.0.0.1 is a loopback address")
    await assert_refused(strict_server, {"model": "z-image", "callBackUrl": "http://0x7f.1/cb", "input": Z_IMAGE},
                         "callBackUrl is not allowed: 127.0.0.1 is a loopback address")
    # Only input URLs to our own files skip the check (they are read from storage); a callback is always POSTed.
    own = f"{strict_server.base_url}/files/uploads/1/x.png?expires=1&signature=a"
    await assert_refused(strict_server, {"model": "z-image", "callBackUrl": own, "input": Z_IMAGE},
                         "callBackUrl is not allowed: 127.0.0.1 is a loopback address")
    await assert_refused(strict_server, {"model": "z-image", "callBackUrl": "http://localhost./cb", "input": Z_IMAGE},
                         "callBackUrl is not allowed: the host name 'localhost' is refused: "
                         "it always means this machine")


async def test_a_private_input_url_is_refused_naming_its_index(strict_server):
    await assert_refused(strict_server, flux("http://93.184.216.34/a.png", "http://10.0.0.1/b.png"),
                         "input.input_urls[1] is not allowed: 10.0.0.1 is a private address")


async def test_ideogram_reference_urls_are_checked_too(strict_server):
    body = {"model": "ideogram/character", "input": {
        "prompt": "p", "reference_image_urls": ["http://[::ffff:192.168.1.1]/r.png"]}}
    await assert_refused(strict_server, body, "input.reference_image_urls[0] is not allowed: ::ffff:c0a8:101 "
                                              "(IPv4 192.168.1.1) is a private address")


async def test_an_input_name_that_does_not_resolve_is_refused(strict_server, fake_dns):
    await assert_refused(strict_server, flux("https://nowhere.invalid/a.png"),
                         "input.input_urls[0] could not be resolved: could not resolve nowhere.invalid: ", prefix=True)


async def test_a_callback_name_that_does_not_resolve_yet_is_accepted(strict_server, fake_dns):
    # A client with a fixed callback host (an MCP server for kie.ai) must not fail every generation on a
    # machine whose DNS cannot resolve it: delivery vets every attempt anyway.
    # What resolves to a refused address is still refused at once.
    fake_dns.records["intranet.example"] = ["10.1.2.3"]
    await assert_refused(strict_server, {"model": "z-image", "callBackUrl": "https://intranet.example/cb",
                                         "input": Z_IMAGE},
                         "callBackUrl is not allowed: intranet.example resolves to 10.1.2.3, a private address")
    async with strict_server.client() as client:
        reply = (await client.post(CREATE, json={"model": "z-image", "callBackUrl": "https://nowhere.invalid/cb",
                                                 "input": Z_IMAGE})).json()
    assert reply["code"] == 200, reply


async def test_a_name_resolving_to_a_private_address_is_refused(strict_server, fake_dns):
    fake_dns.records["intranet.example"] = ["10.1.2.3"]
    await assert_refused(strict_server, flux("http://intranet.example/a.png"),
                         "input.input_urls[0] is not allowed: intranet.example resolves to 10.1.2.3, a private address")


async def test_the_first_bad_field_is_reported(strict_server):
    await assert_refused(strict_server, {**flux("http://10.0.0.1/a.png"), "callBackUrl": "http://192.168.0.1/cb"},
                         "callBackUrl is not allowed: 192.168.0.1 is a private address")


async def test_checks_run_concurrently_and_a_slow_resolver_does_not_block_create(settings, fake_dns, monkeypatch):
    for name in ("a.example", "b.example", "c.example"):
        fake_dns.records[name] = 1.0
    # No worker, no delivery: these accepted URLs point at the public internet.
    async with server(settings, roles=(), outbound_allow="") as live:
        async with live.client() as client:
            started = time.monotonic()
            reply = (await client.post(CREATE, json={**flux("http://a.example/1.png", "http://b.example/2.png",
                                                            "http://a.example/1.png"),
                                                     "callBackUrl": "https://c.example/cb"})).json()
            assert reply["code"] == 200, reply
            # Three 1 s lookups side by side; one after another would take 3 s. The margin absorbs a loaded machine.
            assert time.monotonic() - started < 2.5
            assert sorted(fake_dns.lookups) == ["a.example", "b.example", "c.example"]  # duplicates looked up once

            # A lookup still running at the deadline is left to the worker and the delivery loop,
            # which vet every request they make.
            monkeypatch.setattr(admission_module, "URL_CHECK_TIMEOUT_SECONDS", 0.2)
            fake_dns.records["slow.example"] = 5.0
            started = time.monotonic()
            reply = (await client.post(CREATE, json={"model": "z-image", "callBackUrl": "https://slow.example/cb",
                                                     "input": Z_IMAGE})).json()
            assert reply["code"] == 200, reply
            assert time.monotonic() - started < 3.0  # the 5 s lookup was not waited for


async def test_our_own_file_urls_are_not_fetched_or_checked(strict_server, monkeypatch):
    async with strict_server.client() as client:
        uploaded = (await client.post("/api/file-base64-upload", json={
            "base64Data": base64.b64encode(png_bytes(64, 48)).decode(), "uploadPath": "refs"})).json()
        own_url = uploaded["data"]["downloadUrl"]  # http://127.0.0.1:…, a loopback address

        async def no_checks(*_args, **_kw):
            raise AssertionError("check_url called for our own URL")

        monkeypatch.setattr(admission_module, "check_url", no_checks)
        reply = (await client.post(CREATE, json=flux(own_url))).json()
        assert reply["code"] == 200, reply
        record = await strict_server.wait_terminal(reply["data"]["taskId"])
        assert record["state"] == "success", record["failMsg"]
        # No URLs at all: createTask does no checking work.
        assert (await client.post(CREATE, json={"model": "z-image", "input": Z_IMAGE})).json()["code"] == 200
