"""The API's own documentation: `/docs` and `/redoc` served offline, and an OpenAPI document that says
what every route takes and answers.

- The pages load Swagger UI and ReDoc from this server (the assets ship in the `fastapi-offline`
  package), never from a CDN, and ReDoc loads no Google fonts: they work on a host without internet.
- createTask's body is one schema per catalog model, chosen by `model` (a `oneOf` with a
  discriminator); each model's `input` schema is a component named `Input_<model id>`.
- One rule, applied to the finished document, puts the bearer scheme on every operation except the
  public ones (`PUBLIC_OPERATIONS`): a route added later is documented as authenticated without
  doing anything. The admin API (`/api/admin/...`) takes the other kind of key, so it has its own
  scheme (`adminKey`): Swagger's Authorize then asks for each kind separately.
- FastAPI's HTTP 422 `HTTPValidationError` is taken out: this app answers a request it cannot parse
  with kie's envelope (HTTP 200, code 422), which each operation's 200 reply describes.
"""

from __future__ import annotations

import functools
import json
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse, Response

from safelight.admission import MAX_URL_LENGTH
from safelight.catalog import MODELS, ModelSpec

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
# Swagger UI's and ReDoc's files, as the fastapi-offline package ships them.
ASSETS_URL = "/docs/assets"
ASSETS_DIR = str(files("fastapi_offline") / "static")

BEARER = "bearer"
ADMIN_KEY = "adminKey"
ADMIN_PATHS = "/api/admin/"
# Operations anyone may call, as (method, path); every other documented operation needs a key.
PUBLIC_OPERATIONS = frozenset({("get", "/api/v1/models")})

CREATE_TASK_REQUEST = "CreateTaskRequest"
_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")


class SafelightAPI(FastAPI):
    """FastAPI with its docs pages served from this server and a complete OpenAPI document."""

    def __init__(self, **kwargs: Any) -> None:
        # persistAuthorization: the key entered in "Authorize" survives a reload. validatorUrl None: no
        # badge fetched from validator.swagger.io.
        super().__init__(docs_url=None, redoc_url=None,
                         swagger_ui_parameters={"persistAuthorization": True, "validatorUrl": None}, **kwargs)
        # Before the mount, which would otherwise answer for it.
        self.add_api_route(REDOC_JS_URL, redoc_script, methods=["GET"], include_in_schema=False)
        self.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
        self.add_api_route(DOCS_URL, self.swagger_ui, methods=["GET"], include_in_schema=False)
        self.add_api_route(REDOC_URL, self.redoc, methods=["GET"], include_in_schema=False)

    async def swagger_ui(self, request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{self.openapi_url}", title=f"{self.title} - API docs",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=self.swagger_ui_parameters)

    async def redoc(self, request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{self.openapi_url}", title=f"{self.title} - API reference",
            redoc_js_url=f"{root}{REDOC_JS_URL}",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png", with_google_fonts=False)

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = complete(super().openapi())
        return self.openapi_schema


# ReDoc's bundle draws Redocly's logo from their CDN, whatever its options say: served with the logo
# replaced by an empty image, the page makes no request beyond this server.
REDOC_JS_URL = f"{ASSETS_URL}/redoc.js"
REDOC_CDN_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
EMPTY_IMAGE = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"


@functools.cache
def _redoc_bundle() -> bytes:
    bundle = Path(ASSETS_DIR, "redoc.standalone.js").read_bytes()
    return bundle.replace(REDOC_CDN_LOGO.encode(), EMPTY_IMAGE.encode())


async def redoc_script() -> Response:
    return Response(_redoc_bundle(), media_type="text/javascript; charset=utf-8",
                    headers={"Cache-Control": "public, max-age=86400"})


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's document, completed: the catalog's schemas, the bearer scheme on every operation that
    needs a key, and without the validation errors this app never answers."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name, schema in catalog_schemas().items():
        if schemas.setdefault(name, schema) != schema:
            raise ValueError(f"two different schemas are named {name} in the OpenAPI document")
    components.setdefault("securitySchemes", {})[BEARER] = {
        "type": "http", "scheme": "bearer",
        "description": "An API key (`safelight keys create`), sent as `Authorization: Bearer <key>`.",
    }
    components["securitySchemes"][ADMIN_KEY] = {
        "type": "http", "scheme": "bearer",
        "description": "An admin key (`safelight keys create --name NAME --admin`, `sla_…`), sent as "
                       "`Authorization: Bearer <key>`; only the admin API takes it.",
    }
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            if (method, path) in PUBLIC_OPERATIONS:
                operation.pop("security", None)
            else:
                operation["security"] = [{ADMIN_KEY if path.startswith(ADMIN_PATHS) else BEARER: []}]
            responses = operation.get("responses", {})
            if _FASTAPI_VALIDATION[0] in json.dumps(responses.get("422", {})):
                del responses["422"]
    for name in _FASTAPI_VALIDATION:  # HTTPValidationError first: it is what points at ValidationError
        if name in schemas and not _referenced(document, name):
            del schemas[name]
    return document


def _referenced(document: dict[str, Any], name: str) -> bool:
    """Whether anything in the document but the schema itself points at components/schemas/<name>."""
    components = document["components"]
    others = {key: value for key, value in components["schemas"].items() if key != name}
    rest = {**document, "components": {**components, "schemas": others}}
    return f'"#/components/schemas/{name}"' in json.dumps(rest)


def component_name(model_id: str) -> str:
    """A model id as a component name: `google/imagen4-fast` -> `google_imagen4_fast`."""
    return re.sub(r"[^A-Za-z0-9_]", "_", model_id)


def schema_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def catalog_schemas() -> dict[str, Any]:
    """Components for createTask's body: `Input_<model>` (the model's input schema), `CreateTask_<model>`
    (the whole request for that model) and `CreateTaskRequest`, one of them chosen by `model`."""
    schemas: dict[str, Any] = {}
    mapping: dict[str, str] = {}
    for spec in MODELS.values():
        name = component_name(spec.id)
        if f"Input_{name}" in schemas:
            raise ValueError(f"model ids {spec.id!r} and another one share the component name {name}")
        input_schema = spec.input_schema.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(input_schema.pop("$defs", {}))
        schemas[f"Input_{name}"] = input_schema
        schemas[f"CreateTask_{name}"] = _create_task_variant(spec, f"Input_{name}")
        mapping[spec.id] = schema_ref(f"CreateTask_{name}")["$ref"]
    schemas[CREATE_TASK_REQUEST] = {
        "title": "createTask request",
        "description": "`model` chooses the schema of `input`; `GET /api/v1/models` lists the models with their "
                       "prices.",
        "oneOf": [{"$ref": ref} for ref in mapping.values()],
        "discriminator": {"propertyName": "model", "mapping": mapping},
    }
    return schemas


def _create_task_variant(spec: ModelSpec, input_component: str) -> dict[str, Any]:
    prices = ", ".join(f"{tier} {credits}" for tier, credits in spec.prices.items())
    return {
        "type": "object",
        "title": spec.id,
        "description": f"{spec.title}: {spec.description} Credits per image: {prices}.",
        "required": ["model", "input"],
        "properties": {
            "model": {"type": "string", "enum": [spec.id]},
            "callBackUrl": {"type": "string", "format": "uri", "maxLength": MAX_URL_LENGTH, "pattern": "^https?://",
                            "description": "Where to POST the signed result when the task ends (optional)."},
            "input": schema_ref(input_component),
        },
    }


def json_body(schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    """An operation's `requestBody` for a JSON body the route reads by hand (openapi_extra)."""
    body: dict[str, Any] = {"required": True, "content": {"application/json": {"schema": schema}}}
    if description:
        body["description"] = description
    return body


# createTask's body, for the route's openapi_extra; the schemas it points at are added by complete().
CREATE_TASK_BODY = json_body(schema_ref(CREATE_TASK_REQUEST))
# The body of the routes that take one task: cancel, redeliver.
TASK_ID_BODY = json_body({"type": "object", "required": ["taskId"],
                          "properties": {"taskId": {"type": "string", "description": "The task's id."}}})
