"""The API docs: `/docs` and `/redoc` work offline, and the OpenAPI document says what the routes take and answer.

Everything runs against a real server on loopback (the sandbox backend behind it). The document is checked
both as a document (it validates as OpenAPI 3.1; each catalog model's input schema is reached from
createTask's body through the discriminator) and against the server: each route's real replies validate
against the schema documented for them, the documented request bodies are the ones the routes read, and
every operation documented as needing a key refuses a request without one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from safelight.api.openapi import PUBLIC_OPERATIONS, component_name
from safelight.catalog import MODELS
from tests.helpers import png_bytes

CREATE = "/api/v1/jobs/createTask"
METHODS = {"get", "put", "post", "delete", "patch"}
# One valid input per model family: the document must accept each for its own model.
VALID_INPUTS = {
    "z-image": {"prompt": "a red fox", "aspect_ratio": "1:1"},
    "flux-2/pro-image-to-image": {"input_urls": ["https://images.example.com/a.png"], "prompt": "make it blue",
                                  "aspect_ratio": "auto", "resolution": "1K"},
    "google/imagen4-fast": {"prompt": "a red fox", "num_images": "2", "negative_prompt": "blur"},
    "ideogram/character": {"prompt": "a red fox", "reference_image_urls": ["https://images.example.com/a.png"]},
}


async def fetch_document(live_server) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=live_server.base_url) as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, operation) for path, item in document["paths"].items()
            for method, operation in item.items() if method in METHODS]


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        prefix = "#/components/schemas/"
        assert node["$ref"].startswith(prefix), node["$ref"]
        node = document["components"]["schemas"][node["$ref"].removeprefix(prefix)]
    return node


def validator(document: dict[str, Any], schema: dict[str, Any]) -> OAS31Validator:
    """A validator for one schema of the document, its `#/components/...` references resolvable."""
    return OAS31Validator({**schema, "components": document["components"]})


def assert_conforms(document: dict[str, Any], method: str, path: str, response: httpx.Response) -> Any:
    """The reply validates against the schema the document gives for its status and content type."""
    documented = document["paths"][path][method]["responses"]
    assert str(response.status_code) in documented, f"{method} {path}: HTTP {response.status_code} is not documented"
    media_type = response.headers["content-type"].split(";")[0]
    content = documented[str(response.status_code)]["content"]
    assert media_type in content, f"{method} {path}: {media_type} is not documented ({list(content)})"
    body = response.json()
    try:
        validator(document, content[media_type]["schema"]).validate(body)
    except ValidationError as exc:
        raise AssertionError(f"{method} {path} answered what its schema does not allow: {exc.message} "
                             f"at {list(exc.absolute_path)}\n{json.dumps(body)[:1000]}") from None
    return body


# --- the document ---------------------------------------------------------------------------------------

async def test_the_served_document_is_valid_openapi_with_a_bearer_scheme(live_server):
    document = await fetch_document(live_server)
    validate(document)  # raises, naming the first problem
    assert document["openapi"].startswith("3.1")
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": document["components"]["securitySchemes"]["bearer"][
            "description"]}
    # This app answers a body or parameter it cannot parse with kie's envelope (HTTP 200, code 422):
    # FastAPI's HTTP 422 HTTPValidationError would be a lie.
    assert "HTTPValidationError" not in json.dumps(document)


async def test_each_catalog_model_is_reached_from_create_task_by_its_id(live_server):
    document = await fetch_document(live_server)
    body = document["paths"][CREATE]["post"]["requestBody"]
    assert body["required"] is True
    request_schema = resolve(document, body["content"]["application/json"]["schema"])
    discriminator = request_schema["discriminator"]
    assert discriminator["propertyName"] == "model"
    assert set(discriminator["mapping"]) == set(MODELS)
    assert sorted(variant["$ref"] for variant in request_schema["oneOf"]) == sorted(discriminator["mapping"].values())
    names = set()
    for model_id, spec in MODELS.items():
        variant = resolve(document, {"$ref": discriminator["mapping"][model_id]})
        assert variant["properties"]["model"]["enum"] == [model_id]
        assert set(variant["required"]) == {"model", "input"}
        input_ref = variant["properties"]["input"]["$ref"]
        assert re.fullmatch(r"#/components/schemas/[A-Za-z0-9._-]+", input_ref), input_ref
        names.add(input_ref)
        assert input_ref.endswith(f"/Input_{component_name(model_id)}")
        assert resolve(document, variant["properties"]["input"]) == spec.input_schema.model_json_schema()
    assert len(names) == len(MODELS), "two models share one input component"


async def test_the_body_schema_takes_each_models_valid_input_and_refuses_another_models(live_server):
    document = await fetch_document(live_server)
    schema = document["paths"][CREATE]["post"]["requestBody"]["content"]["application/json"]["schema"]
    check = validator(document, schema)
    for model_id, model_input in VALID_INPUTS.items():
        body = {"model": model_id, "callBackUrl": "https://hooks.example.com/done", "input": model_input}
        assert check.is_valid(body), list(check.iter_errors(body))
    # flux needs its reference images: z-image's input is not a flux input.
    assert not check.is_valid({"model": "flux-2/pro-image-to-image", "input": VALID_INPUTS["z-image"]})
    assert not check.is_valid({"model": "z-image", "input": {"prompt": "a fox", "aspect_ratio": "2:1"}})
    assert not check.is_valid({"model": "no-such-model", "input": {"prompt": "a fox"}})
    assert not check.is_valid({"model": "z-image", "callBackUrl": "ftp://hooks.example.com", "input": {"prompt": "x"}})


async def test_the_documented_security_is_what_the_server_enforces(live_server):
    """Every operation but the public ones carries a key requirement (the admin API its own scheme), and
    refuses a request without a key (kie's code 401 in the envelope, or HTTP 401/403); the public ones
    carry none and answer."""
    document = await fetch_document(live_server)
    found = operations(document)
    assert {("get", "/api/v1/models")} <= {(method, path) for method, path, _ in found}
    async with httpx.AsyncClient(base_url=live_server.base_url, timeout=10) as client:
        for method, path, operation in found:
            url = re.sub(r"\{[^}]+\}", "x", path)
            response = await client.request(method.upper(), url, **({"json": {}} if method != "get" else {}))
            try:
                code = response.json().get("code")
            except ValueError:
                code = None
            where = f"{method.upper()} {path}: HTTP {response.status_code} {response.text[:200]}"
            if (method, path) in PUBLIC_OPERATIONS:
                assert "security" not in operation, where
                assert response.status_code == 200 and code == 200, where
            else:
                scheme = "adminKey" if path.startswith("/api/admin/") else "bearer"
                assert operation["security"] == [{scheme: []}], where
                assert response.status_code in (401, 403) or code in (401, 403), where


async def test_the_upload_routes_document_the_bodies_they_read(live_server, image_server):
    """Each upload route's documented body: the required fields, sent as documented, store the file; and
    the reply matches the documented reply."""
    document = await fetch_document(live_server)
    bodies = {path: document["paths"][path]["post"]["requestBody"]
              for path in ("/api/file-base64-upload", "/api/file-url-upload", "/api/file-stream-upload")}
    for body in bodies.values():
        assert body["required"] is True
    base64_schema = bodies["/api/file-base64-upload"]["content"]["application/json"]["schema"]
    url_schema = bodies["/api/file-url-upload"]["content"]["application/json"]["schema"]
    stream_schema = bodies["/api/file-stream-upload"]["content"]["multipart/form-data"]["schema"]
    assert set(base64_schema["required"]) == {"base64Data", "uploadPath"}
    assert set(url_schema["required"]) == {"fileUrl", "uploadPath"}
    assert set(stream_schema["required"]) == {"file", "uploadPath"}
    assert stream_schema["properties"]["file"] == {**stream_schema["properties"]["file"], "type": "string",
                                                   "format": "binary"}

    image = png_bytes(64, 48)
    sent = {
        "/api/file-base64-upload": {"json": {"base64Data": base64.b64encode(image).decode(), "uploadPath": "docs/a"}},
        "/api/file-url-upload": {"json": {"fileUrl": f"{image_server}/img/64x48.png", "uploadPath": "docs/b"}},
        "/api/file-stream-upload": {"files": {"file": ("fox.png", image, "image/png")},
                                    "data": {"uploadPath": "docs/c"}},
    }
    for path, schema in [("/api/file-base64-upload", base64_schema), ("/api/file-url-upload", url_schema)]:
        assert validator(document, schema).is_valid(sent[path]["json"])
    async with live_server.client() as client:
        for path, request in sent.items():
            reply = assert_conforms(document, "post", path, await client.post(path, **request))
            assert reply["code"] == 200 and reply["data"]["fileSize"] == len(image), reply
            assert reply["data"]["mimeType"] == "image/png"
        # A refusal is documented too: the upload routes' own shape, without data.
        refused = assert_conforms(document, "post", "/api/file-base64-upload",
                                  await client.post("/api/file-base64-upload", json={"uploadPath": "docs"}))
        assert refused["code"] == 400 and "base64Data" in refused["msg"]


# --- the document against the server's replies -----------------------------------------------------------

async def test_the_kie_routes_answer_what_the_document_describes(live_server, image_server):
    document = await fetch_document(live_server)
    async with live_server.client() as client:
        created = assert_conforms(document, "post", CREATE, await client.post(CREATE, json={
            "model": "google/imagen4-fast", "callBackUrl": f"{image_server}/cb",
            "input": {"prompt": "two foxes", "num_images": "2"}}))
        task_id = created["data"]["taskId"]
        await live_server.wait_terminal(task_id)
        record = assert_conforms(document, "get", "/api/v1/jobs/recordInfo",
                                 await client.get("/api/v1/jobs/recordInfo", params={"taskId": task_id}))
        assert record["data"]["state"] == "success"
        unknown = assert_conforms(document, "get", "/api/v1/jobs/recordInfo",
                                  await client.get("/api/v1/jobs/recordInfo", params={"taskId": "0" * 32}))
        assert unknown == {"code": 422, "msg": "recordInfo is null", "data": None}

        waited = assert_conforms(document, "post", CREATE, await client.post(
            CREATE, headers={"Prefer": "wait=10"}, json={"model": "z-image", "input": VALID_INPUTS["z-image"]}))
        assert waited["data"]["state"] == "success"  # the whole record, as documented

        page = assert_conforms(document, "get", "/api/v1/jobs/list", await client.get("/api/v1/jobs/list"))
        assert {item["taskId"] for item in page["data"]["items"]} >= {task_id}
        cancel = assert_conforms(document, "post", "/api/v1/jobs/cancel",
                                 await client.post("/api/v1/jobs/cancel", json={"taskId": task_id}))
        assert cancel["code"] == 422 and cancel["data"] is None  # already ended

        for _ in range(100):  # the callback to image_server (a 404 there: the delivery log has an attempt)
            log = assert_conforms(document, "get", "/api/v1/jobs/callbacks",
                                  await client.get("/api/v1/jobs/callbacks", params={"taskId": task_id}))
            if log["data"] and log["data"][0]["log"]:
                break
            await asyncio.sleep(0.05)
        assert log["data"] and log["data"][0]["log"], log
        assert_conforms(document, "post", "/api/v1/jobs/callbacks/redeliver",
                        await client.post("/api/v1/jobs/callbacks/redeliver", json={"taskId": task_id}))

        credit = assert_conforms(document, "get", "/api/v1/chat/credit", await client.get("/api/v1/chat/credit"))
        assert isinstance(credit["data"], int)
        models = assert_conforms(document, "get", "/api/v1/models", await client.get("/api/v1/models"))
        assert {model["id"] for model in models["data"]} >= set(MODELS)
        result_url = json.loads(record["data"]["resultJson"])["resultUrls"][0]
        link = assert_conforms(document, "post", "/api/v1/common/download-url",
                               await client.post("/api/v1/common/download-url", json={"url": result_url}))
        assert urlsplit(link["data"]).path == urlsplit(result_url).path

        async with client.stream("GET", "/api/v1/jobs/stream", params={"taskId": task_id}) as events:
            assert events.status_code == 200
            media_type = events.headers["content-type"].split(";")[0]
            assert media_type in document["paths"]["/api/v1/jobs/stream"]["get"]["responses"]["200"]["content"]
            assert media_type == "text/event-stream"
            text = (await events.aread()).decode()
            assert "event: done" in text
        assert_conforms(document, "get", "/api/v1/jobs/stream",
                        await client.get("/api/v1/jobs/stream", params={"taskId": "0" * 32}))


async def test_the_openai_routes_answer_what_the_document_describes(live_server):
    document = await fetch_document(live_server)
    async with live_server.client() as client:
        images = assert_conforms(document, "post", "/v1/images/generations", await client.post(
            "/v1/images/generations", json={"model": "z-image", "prompt": "a fox", "response_format": "url"}))
        assert len(images["data"]) == 1 and images["data"][0]["url"]
        assert_conforms(document, "post", "/v1/images/generations", await client.post(
            "/v1/images/generations", json={"model": "no-such-model", "prompt": "a fox"}))
        listed = assert_conforms(document, "get", "/v1/models", await client.get("/v1/models"))
        assert "z-image" in {entry["id"] for entry in listed["data"]}
        assert_conforms(document, "get", "/v1/models/{model}", await client.get("/v1/models/z-image"))
        assert_conforms(document, "get", "/v1/models/{model}", await client.get("/v1/models/google/imagen4-fast"))
        missing = await client.get("/v1/models/no-such-model")
        assert missing.status_code == 404
        assert_conforms(document, "get", "/v1/models/{model}", missing)
    async with httpx.AsyncClient(base_url=live_server.base_url) as anonymous:
        assert_conforms(document, "get", "/v1/models", await anonymous.get("/v1/models"))


# --- the docs pages -------------------------------------------------------------------------------------

class _References(HTMLParser):
    """Every URL a page refers to: src and href attributes, ReDoc's spec-url, Swagger UI's `url: '...'`."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_script = tag == "script"
        self.urls += [value for name, value in attrs if name in ("src", "href", "spec-url") and value]

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.urls += re.findall(r"""\burl\s*:\s*['"]([^'"]+)['"]""", data)


CONTENT_TYPES = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",),
                 ".png": ("image/png",), ".json": ("application/json",)}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_pages_load_everything_from_this_server(live_server, page):
    async with httpx.AsyncClient(base_url=live_server.base_url) as client:
        response = await client.get(page)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        parser = _References()
        parser.feed(response.text)
        assert "googleapis" not in response.text and "cdn." not in response.text
        assert len(parser.urls) >= 3, parser.urls  # the script, the favicon, the document (and Swagger's CSS)
        own = urlsplit(live_server.base_url).netloc
        for url in parser.urls:
            absolute = urljoin(f"{live_server.base_url}{page}", url)
            assert urlsplit(absolute).netloc == own, f"{page} refers to another host: {url}"
            asset = await client.get(absolute)
            assert asset.status_code == 200, url
            suffix = re.search(r"\.[a-z]+$", urlsplit(absolute).path)
            assert suffix is not None, url
            assert asset.headers["content-type"].split(";")[0] in CONTENT_TYPES[suffix.group()], url
            if suffix.group() == ".js":
                assert len(asset.content) > 500_000, f"{url} is not the bundle ({len(asset.content)} bytes)"
                assert b"cdn.redoc.ly" not in asset.content, f"{url} still loads Redocly's logo from their CDN"
