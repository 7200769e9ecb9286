"""The routing file: which backends exist and which of them serve each public model, in order.

`safelight.toml` (its path in SAFELIGHT_CONFIG) looks like this:

    [backends.local-zimage]
    type = "diffusers.zimage"
    weights = "/models/Z-Image-Turbo"
    max_batch = 4

    [backends.bfl]
    type = "bfl"
    api_key_env = "BFL_API_KEY"
    concurrency = 24

    [models."z-image"]
    route = ["local-zimage", "kie"]

    [models."*"]          # any model the catalog lacks, forwarded as sent
    route = ["kie"]

Options other than `type`, `concurrency`, `max_batch`, `breaker_failures` and
`breaker_cooldown_seconds` (`BackendConfig`) belong to the backend type, which validates them itself
(`Backend.Options`). With no file, every model routes to the built-in
`sandbox` backend. A model the file does not mention also stays on the sandbox, so adding one
provider never takes the other models offline; `route = []` takes a model off this server.
`[models."*"]` routes the models the catalog does not know (pass-through) to backend types that
serve any model (kie-compatible upstreams); without it such model ids are refused.

An `[openai]` table names aliases for the OpenAI Images routes (`/v1/images/*`): a request's
`model` may be a public model id or one of these names:

    [openai.aliases]
    "gpt-image-1" = "z-image"
    "dall-e-2" = "flux-2/pro-image-to-image"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from safelight.backends import BackendConfig, backend_class
from safelight.catalog import ANY_MODEL, MODELS
from safelight.validation import config_error

SANDBOX = "sandbox"


class RoutingError(ValueError):
    """The routing file is missing, malformed or inconsistent; the message names the key."""


class ModelRoute(BaseModel):
    model_config = ConfigDict(extra="forbid")

    route: list[str]

    @field_validator("route")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a backend may appear only once in a route")
        return value


class OpenAITable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # OpenAI model name -> public model id, for the /v1/images routes.
    aliases: dict[str, str] = {}


class _RoutingFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backends: dict[str, BackendConfig] = {}
    models: dict[str, ModelRoute] = {}
    openai: OpenAITable = OpenAITable()


@dataclass
class Routing:
    backends: dict[str, BackendConfig]
    # Public model id -> ordered backend names; the first is tried first. ANY_MODEL ("*"), when
    # present, is the route of every model id the catalog does not know.
    routes: dict[str, list[str]]
    # `[openai.aliases]`: a name the OpenAI Images routes accept as `model` -> public model id.
    openai_aliases: dict[str, str] = field(default_factory=dict)

    @property
    def passes_through(self) -> bool:
        """Whether model ids the catalog lacks are accepted and forwarded (`[models."*"]`)."""
        return bool(self.routes.get(ANY_MODEL))

    def route_for(self, model: str) -> list[str]:
        if model in MODELS:
            return self.routes.get(model, [])
        return self.routes.get(ANY_MODEL, [])

    def used_backends(self) -> list[str]:
        """Backends some route uses, in first-use order."""
        seen: dict[str, None] = {}
        for route in self.routes.values():
            for name in route:
                seen.setdefault(name, None)
        return list(seen)


def default_routing(concurrency: int = 4) -> Routing:
    sandbox = BackendConfig(type=SANDBOX, concurrency=concurrency)
    return Routing(backends={SANDBOX: sandbox}, routes={model: [SANDBOX] for model in MODELS})


def load_routing(path: str | Path | None, *, sandbox_concurrency: int = 4) -> Routing:
    """Read and check a routing file. `None` or "" gives the all-sandbox default."""
    if not path:
        return default_routing(sandbox_concurrency)
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise RoutingError(f"routing file {path} (SAFELIGHT_CONFIG) does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise RoutingError(f"routing file {path} is not valid TOML: {exc}") from None
    try:
        parsed = _RoutingFile.model_validate(raw)
    except ValidationError as exc:
        raise RoutingError(f"routing file {path}: {config_error(exc)}") from None

    backends = {SANDBOX: BackendConfig(type=SANDBOX, concurrency=sandbox_concurrency), **parsed.backends}
    for name, config in backends.items():
        try:
            backend_class(config.type).check_options(name, config)
        except (KeyError, ValueError) as exc:
            raise RoutingError(f"routing file {path}: {exc.args[0]}") from None

    routes = {model: [SANDBOX] for model in MODELS}
    for model, entry in parsed.models.items():
        if model not in MODELS and model != ANY_MODEL:
            raise RoutingError(f"routing file {path}: models.{model!r} is not a known model; "
                               f"known: {', '.join(MODELS)}, or \"{ANY_MODEL}\" for every other model id")
        for name in entry.route:
            if name not in backends:
                raise RoutingError(f"routing file {path}: models.{model!r}.route names backend {name!r}, "
                                   f"which no [backends.{name}] table defines")
            cls = backend_class(backends[name].type)
            if model == ANY_MODEL and cls.models is not None:
                raise RoutingError(f"routing file {path}: models.\"{ANY_MODEL}\" forwards models the catalog does "
                                   f"not know, so its backends must serve any model; backend {name!r} (type "
                                   f"{backends[name].type}) serves only {', '.join(sorted(cls.models))}")
            if cls.models is not None and model not in cls.models:
                raise RoutingError(f"routing file {path}: backend {name!r} (type {backends[name].type}) "
                                   f"cannot serve {model}; it serves {', '.join(sorted(cls.models))}")
        routes[model] = list(entry.route)
    for alias, target in parsed.openai.aliases.items():
        if alias in MODELS:
            raise RoutingError(f"routing file {path}: openai.aliases.{alias!r} is a model id; an alias must be "
                               "another name")
        if target not in MODELS:
            raise RoutingError(f"routing file {path}: openai.aliases.{alias!r} maps to {target!r}, which is not "
                               f"a known model; known: {', '.join(MODELS)}")
    return Routing(backends=backends, routes=routes, openai_aliases=dict(parsed.openai.aliases))
