"""Turning pydantic validation errors into one line a person can act on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails


def error_path(loc: Sequence[int | str], prefix: str = "") -> str:
    """`input.image_urls[2]` from ("image_urls", 2) and the prefix "input"."""
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def config_error(exc: ValidationError, prefix: str = "") -> str:
    """The first error as `path: pydantic's message`, for operator configuration (routing file, options)."""
    first = exc.errors(include_url=False)[0]
    where = error_path(first["loc"], prefix)
    # A model-level check (a `model_validator`) has no location: the message is about the whole table.
    return f"{where}: {first['msg']}" if where else first["msg"]


def describe_errors(exc: ValidationError, prefix: str) -> str:
    return "; ".join(_describe(err, prefix) for err in exc.errors(include_url=False))


def describe_error(err: ErrorDetails, prefix: str = "") -> str:
    """One error as `path must be ...; got ...` (FastAPI's request errors have the same shape)."""
    return _describe(err, prefix)


def _describe(err: ErrorDetails, prefix: str) -> str:
    path = error_path(err["loc"], prefix)
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "missing":
        return f"{path} is required"
    if kind == "literal_error":
        # ctx["expected"] reads "'1:1', '4:3' or '16:9'"; list them plainly.
        options = ", ".join(opt.strip().strip("'") for opt in ctx["expected"].replace(" or ", ", ").split(","))
        if not isinstance(got, str):
            return f"{path} must be one of {options} (a string); got {_type_name(got)} {_show(got)}"
        return f"{path} must be one of {options}; got {_show(got)}"
    if kind == "string_too_long":
        return f"{path} must be at most {ctx['max_length']} characters; got {len(got)}"
    if kind == "string_too_short":
        return f"{path} must be at least {ctx['min_length']} characters; got {len(got)}"
    if kind == "too_long":
        return f"{path} must have at most {ctx['max_length']} items; got {ctx.get('actual_length', len(got))}"
    if kind == "too_short":
        return f"{path} must have at least {ctx['min_length']} item{'s' * (ctx['min_length'] != 1)}; got {len(got)}"
    if kind == "string_pattern_mismatch":
        return f"{path} must be an http or https URL; got {_show(got)}"
    if kind == "greater_than_equal":
        return f"{path} must be at least {_bound(ctx['ge'])}; got {_show(got)}"
    if kind == "less_than_equal":
        return f"{path} must be at most {_bound(ctx['le'])}; got {_show(got)}"
    type_names = {
        "string_type": "a string",
        "int_type": "an integer",
        "float_type": "a number",
        "bool_type": "a boolean",
        "list_type": "an array",
        "dict_type": "an object",
        "int_from_float": "an integer",
    }
    if kind in type_names:
        return f"{path} must be {type_names[kind]}; got {_type_name(got)}"
    return f"{path}: {err['msg']}"


def _bound(value: Any) -> Any:
    """A limit as written in the docs: 1, not 1.0 (pydantic floats a float field's bounds)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)
