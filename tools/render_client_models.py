"""Render `src/safelight/client/models.py` from the server catalog, the one source of truth.

    python -m tools.render_client_models          # rewrite models.py (or: make client-models)
    python -m tools.render_client_models --check  # exit 1 if models.py is stale

Fields, constraints and defaults come from each catalog model's JSON schema; the model config
(strict types) from its pydantic config, except that the SDK's classes refuse unknown fields
(`SDK_CONFIG`), where the server ignores them as kie does: a typo in a typed input is an error on
the caller's machine rather than a field dropped silently on the server. The output imports only
pydantic and the SDK's errors, so the SDK never loads the server at runtime.
tests/client/test_client_generated.py re-renders in memory and compares, so the file cannot drift
from the catalog.

A developer tool, run from a checkout with the server installed (it imports `safelight.catalog`);
it is not part of the wheel.
"""

from __future__ import annotations

import json
import keyword
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WIDTH = 110
TARGET = Path(__file__).resolve().parents[1] / "src" / "safelight" / "client" / "models.py"
COMMAND = "python -m tools.render_client_models"
_CONFIG_KEYS = ("strict", "extra", "frozen")
# Where the SDK's classes differ from the catalog's: unknown fields are refused, not ignored.
SDK_CONFIG: dict[str, Any] = {"extra": "forbid"}


# --- a tiny pretty-printer: one line when it fits, else one item per line (black's style) --------


@dataclass
class _Call:
    head: str
    args: list[Any] = field(default_factory=list)
    brackets: str = "()"


@dataclass
class _Kw:
    name: str
    value: Any
    sep: str = "="


def _fmt(node: Any, indent: int, used: int, room: int = 0) -> str:
    """Format `node` on a line indented `indent`, `used` columns already taken, `room` needed after."""
    flat = _flat(node)
    if used + len(flat) + room <= WIDTH:
        return flat
    pad = " " * (indent + 4)
    if isinstance(node, _Kw):
        head = f"{node.name}{node.sep}"
        return head + _fmt(node.value, indent, used + len(head), room)
    if isinstance(node, _Call) and node.args:
        inner = ",\n".join(pad + _fmt(arg, indent + 4, indent + 4, 1) for arg in node.args)
        return f"{node.head}{node.brackets[0]}\n{inner},\n{' ' * indent}{node.brackets[1]}"
    if isinstance(node, str) and node.startswith('"'):
        # A long string literal: implicit concatenation of word-boundary chunks in parentheses.
        text = json.loads(node)
        chunks, current = [], ""
        for word in re.split(r"(?<= )", text):
            if current and indent + 4 + len(json.dumps(current + word)) > WIDTH:
                chunks.append(current)
                current = ""
            current += word
        chunks.append(current)
        body = "\n".join(pad + json.dumps(chunk) for chunk in chunks)
        return f"(\n{body}\n{' ' * indent})"
    return flat


def _flat(node: Any) -> str:
    if isinstance(node, _Kw):
        return f"{node.name}{node.sep}{_flat(node.value)}"
    if isinstance(node, _Call):
        return f"{node.head}{node.brackets[0]}{', '.join(_flat(a) for a in node.args)}{node.brackets[1]}"
    return str(node)


def _literal(value: Any) -> Any:
    """A Python literal (as a node) for a JSON value; JSON string escapes are valid Python escapes."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return _Call("", [_literal(v) for v in value], "[]")
    if isinstance(value, dict):
        return _Call("", [_Kw(json.dumps(k), _literal(v), ": ") for k, v in value.items()], "{}")
    return repr(value)


def _regex(pattern: str) -> str:
    if '"' not in pattern and not pattern.endswith("\\"):
        return f'r"{pattern}"'
    return repr(pattern)


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9A-Za-z]+", name) if part)


# --- JSON schema -> pydantic annotations -------------------------------------------------------


class _Module:
    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}  # alias name -> rendered expression
        self.alias_lines: list[str] = []
        self.typing: set[str] = {"Any", "ClassVar", "Self"}
        self.pydantic: set[str] = {"BaseModel", "ConfigDict", "Field"}

    def alias(self, name: str, node: Any, *, shared: bool = False) -> str:
        """A module-level alias for a type (users can import it); `shared` ones are reused by value."""
        flat = _flat(node)
        if shared:
            for existing, expression in self.aliases.items():
                if expression == flat:
                    return existing
        base, n = name, 2
        while name in self.aliases:
            name, n = f"{base}{n}", n + 1
        self.aliases[name] = flat
        self.alias_lines.append(f"{name} = {_fmt(node, 0, len(name) + 3)}")
        return name

    def annotation(self, prop: dict[str, Any], context: str) -> str:
        if "anyOf" in prop:
            members = [m for m in prop["anyOf"] if m.get("type") != "null"]
            nullable = len(members) < len(prop["anyOf"])
            parts = [self.annotation(m, context) for m in members]
            return " | ".join(parts + (["None"] if nullable else []))
        if "enum" in prop:
            self.typing.add("Literal")
            return self.alias(context, _Call("Literal", [_literal(v) for v in prop["enum"]], "[]"))
        kind = prop.get("type")
        if kind == "string":
            kwargs = [
                _Kw(py, _regex(prop[js]) if js == "pattern" else repr(prop[js]))
                for js, py in (("minLength", "min_length"), ("maxLength", "max_length"), ("pattern", "pattern"))
                if js in prop
            ]
            if not kwargs:
                return "str"
            self.typing.add("Annotated")
            self.pydantic.add("StringConstraints")
            node = _Call("Annotated", ["str", _Call("StringConstraints", kwargs)], "[]")
            if prop.get("pattern", "").startswith("^https?://"):
                return self.alias("HttpUrl", node, shared=True)
            return self.alias(context, node)
        if kind in ("integer", "number"):
            py_type = "int" if kind == "integer" else "float"
            bounds = (("minimum", "ge"), ("maximum", "le"), ("exclusiveMinimum", "gt"), ("exclusiveMaximum", "lt"))
            kwargs = [_Kw(py, repr(prop[js])) for js, py in bounds if js in prop]
            if not kwargs:
                return py_type
            self.typing.add("Annotated")
            return self.alias(context, _Call("Annotated", [py_type, _Call("Field", kwargs)], "[]"))
        if kind == "boolean":
            return "bool"
        if kind == "array":
            return f"list[{self.annotation(prop.get('items', {}), context + 'Item')}]"
        if kind == "object":
            return "dict[str, Any]"
        return "Any"


def _field_kwargs(prop: dict[str, Any], required: bool) -> list[Any]:
    args: list[Any] = []
    if not required:
        args.append(_literal(prop.get("default")))
    if prop.get("type") == "array":
        for js, py in (("minItems", "min_length"), ("maxItems", "max_length")):
            if js in prop:
                args.append(_Kw(py, repr(prop[js])))
    if "description" in prop:
        args.append(_Kw("description", _literal(prop["description"])))
    return args


def _config(config: dict[str, Any]) -> str:
    return "ConfigDict(" + ", ".join(f"{k}={_literal(config[k])}" for k in _CONFIG_KEYS if k in config) + ")"


def render() -> str:
    from safelight.catalog import MODELS  # generation time only; models.py never imports it

    module = _Module()
    base_config = dict(next(iter(MODELS.values())).input_schema.model_config) | SDK_CONFIG
    classes: list[str] = []
    catalog: list[dict[str, Any]] = []
    for spec in MODELS.values():
        schema_cls = spec.input_schema
        schema = schema_cls.model_json_schema()
        if schema.get("$defs"):
            raise SystemExit(f"{spec.id}: nested models ($defs) are not supported by the generator")
        name = schema_cls.__name__
        prefix = name.removesuffix("Input")
        required = set(schema.get("required", []))
        lines = [f"class {name}(InputModel):", f"    model_id: ClassVar[str] = {json.dumps(spec.id)}"]
        config = dict(schema_cls.model_config) | SDK_CONFIG
        if any(config.get(k) != base_config.get(k) for k in _CONFIG_KEYS):
            lines.append(f"    model_config = {_config(config)}")
        for prop_name, prop in schema.get("properties", {}).items():
            if not prop_name.isidentifier() or keyword.iskeyword(prop_name):
                raise SystemExit(f"{spec.id}: field {prop_name!r} is not a Python identifier")
            annotation = module.annotation(prop, prefix + _camel(prop_name))
            head = f"    {prop_name}: {annotation} = "
            value = _Call("Field", _field_kwargs(prop, prop_name in required))
            lines.append(head + _fmt(value, 4, len(head)))
        classes.append("\n".join(lines))
        catalog.append(
            {
                "id": spec.id,
                "title": spec.title,
                "description": spec.description,
                "prices": dict(spec.prices),
                "url_fields": list(spec.url_fields),
                "input_schema": schema,
            }
        )

    model_ids = "\n".join(
        f"    {json.dumps(spec.id)}: {spec.input_schema.__name__}," for spec in MODELS.values()
    )
    typing_imports = ", ".join(sorted(module.typing))
    pydantic_imports = ", ".join(sorted(module.pydantic))
    catalog_src = _fmt(_literal(catalog), 0, len("CATALOG: list[dict[str, Any]] = "))
    return f'''"""Typed `input` classes for the built-in models.

GENERATED by `{COMMAND}` from the server catalog (`safelight.catalog`).
Do not edit by hand: tests/client/test_client_generated.py fails when this file is stale.
"""

from __future__ import annotations

from typing import {typing_imports}

from pydantic import {pydantic_imports}
from pydantic import ValidationError as PydanticValidationError

from .errors import InputValidationError

{chr(10).join(module.alias_lines)}


class InputModel(BaseModel):
    """Base of the typed inputs. They validate as the server does (strict types) and refuse unknown
    fields, which the server would ignore. A refusal is an `InputValidationError`, the SDK's
    `ValidationError` (code 422), from the constructor and from `model_validate`/`model_validate_json`."""

    model_config = {_config(base_config)}
    model_id: ClassVar[str]

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except PydanticValidationError as exc:
            raise type(self)._refusal(exc) from None

    @classmethod
    def model_validate(cls, *args: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate(*args, **kwargs)
        except PydanticValidationError as exc:
            raise cls._refusal(exc) from None

    @classmethod
    def model_validate_json(cls, *args: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate_json(*args, **kwargs)
        except PydanticValidationError as exc:
            raise cls._refusal(exc) from None

    @classmethod
    def _refusal(cls, exc: PydanticValidationError) -> InputValidationError:
        # model_validate runs __init__ (it is overridden), whose refusal pydantic wraps as a value_error.
        for detail in exc.errors(include_url=False):
            if isinstance(inner := (detail.get("ctx") or {{}}).get("error"), InputValidationError):
                return inner
        return InputValidationError(getattr(cls, "model_id", cls.__name__), exc, list(cls.model_fields))

    def to_input(self) -> dict[str, Any]:
        """The `input` object to send: only the fields that were set (kie fills no defaults for us)."""
        return self.model_dump(mode="json", exclude_unset=True, exclude_none=True)


{(chr(10) * 3).join(classes)}


MODEL_IDS: dict[str, type[InputModel]] = {{
{model_ids}
}}

# What GET /api/v1/models returns for these models, for servers that lack it (kie.ai).
CATALOG: list[dict[str, Any]] = {catalog_src}

INPUT_SCHEMAS: dict[str, dict[str, Any]] = {{entry["id"]: entry["input_schema"] for entry in CATALOG}}

__all__ = [
    "CATALOG",
    "INPUT_SCHEMAS",
    "MODEL_IDS",
    "InputModel",
{chr(10).join(f"    {json.dumps(spec.input_schema.__name__)}," for spec in MODELS.values())}
]
'''


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in argv:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET} is stale; run: {COMMAND}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
