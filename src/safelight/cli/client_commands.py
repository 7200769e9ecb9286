"""Client-side commands: `safelight generate`, `safelight task get|wait|cancel|list`, and the
bodies of `safelight credits` and `safelight models`. They use only the SDK (`safelight.client`), so they
work against Safelight and kie.ai alike.

Connection settings come from `--base-url` / `--api-key`, else SAFELIGHT_BASE_URL,
SAFELIGHT_API_KEY or KIE_API_KEY (see `safelight.client.Client`).

Exit codes: 0 success, 1 the task failed or the server refused, 2 bad usage or input,
130 interrupted (the task keeps running; its id is printed).
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from safelight.client import (
    CATALOG,
    INPUT_SCHEMAS,
    MODEL_IDS,
    Client,
    GenerationFailedError,
    InputValidationError,
    SafelightError,
    Task,
    WaitTimeoutError,
)
from safelight.validation import describe_errors

# soft_wrap: never break a path or a task id across lines.
err = Console(stderr=True, highlight=False, soft_wrap=True)

BaseUrlOption = Annotated[
    str | None,
    typer.Option("--base-url", help="Server URL (env SAFELIGHT_BASE_URL; default http://127.0.0.1:8000, "
                 "or https://api.kie.ai when only KIE_API_KEY is set).", show_default=False),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option("--api-key", help="API key (env SAFELIGHT_API_KEY or KIE_API_KEY).", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a human summary.")]
TimeoutOption = Annotated[float, typer.Option("--timeout", help="Seconds to wait for the result.")]
PollOption = Annotated[float, typer.Option(
    "--poll", help="First poll interval in seconds (grows ×1.5 to 15 s), on servers without the event stream "
                   "(kie.ai); Safelight pushes every change.")]
# The first poll where there is no event stream (kie.ai): the SDK's run() default.
FIRST_POLL = 0.25


def register(app: typer.Typer) -> None:
    """Add `generate` and the `task` group to the main `safelight` app."""
    app.command("generate", help="Generate images: create a task, show its progress, save the results.")(generate)
    task_app = typer.Typer(help="Look at, wait for, cancel and list tasks.", no_args_is_help=True)
    task_app.command("get", help="Show a task's current record.")(task_get)
    task_app.command("wait", help="Wait for a task to finish, showing its progress.")(task_wait)
    task_app.command("cancel", help="Cancel a task that has not ended (Safelight; refunded in full).")(task_cancel)
    task_app.command("list", help="List your tasks, newest first (Safelight).")(task_list)
    app.add_typer(task_app, name="task")


# --- generate -----------------------------------------------------------------------------------


def generate(
    model: Annotated[str, typer.Argument(help="Model id, for example z-image (see `safelight models`).")],
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="The prompt.")] = None,
    image: Annotated[
        list[str] | None,
        typer.Option("--image", "-i", help="Reference image: a local path (uploaded first) or an http(s) URL. "
                     "Repeatable."),
    ] = None,
    aspect_ratio: Annotated[str | None, typer.Option("--aspect-ratio", "-a", help="For example 1:1 or 16:9.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", metavar="KEY=VALUE",
                     help="Any other input field, typed by the model's schema (num_images=2, seed=5). Repeatable."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the results.")] = Path("out"),
    json_output: JsonOption = False,
    timeout: TimeoutOption = 600.0,
    poll: PollOption = FIRST_POLL,
    callback_url: Annotated[str | None, typer.Option("--callback-url", help="Callback URL for the task.")] = None,
    no_download: Annotated[bool, typer.Option("--no-download", help="Print result URLs, save nothing.")] = False,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    task_input = build_input(model, prompt, aspect_ratio, set_ or [])
    images = list(image or [])
    image_field = _image_field(model) if images else None
    existing: list[str] = []
    if image_field:
        for path in (p for p in images if not _is_url(p)):
            if not Path(path).is_file():
                _fail_usage(f"--image {path}: no such file (give a local file or an http(s) URL)")
        existing = task_input.get(image_field) or []
        existing = [existing] if isinstance(existing, str) else list(existing)
        # Validate with stand-in URLs first, so a bad input never costs an upload.
        task_input[image_field] = list(existing) + [p if _is_url(p) else "https://upload.pending/x" for p in images]
    _validate(model, task_input)

    with _client(base_url, api_key) as client:
        try:
            if image_field:
                urls = []
                for ref in images:
                    if _is_url(ref):
                        urls.append(ref)
                    else:
                        urls.append(client.upload(ref))
                        err.print(f"uploaded {escape(ref)} → {escape(urls[-1])}")
                task_input[image_field] = list(existing) + urls
            started = time.monotonic()  # the generation's own time, from the create to the result
            task_id = client.create_task(model, task_input, callback_url)
        except SafelightError as exc:
            _fail(exc)
        err.print(f"task [bold]{task_id}[/] submitted ({model})")
        task = _wait_with_progress(client, task_id, model, timeout, poll, json_output)
        elapsed = time.monotonic() - started
        files: list[Path] = []
        if not no_download:
            try:
                files = client.download(task, out)
            except SafelightError as exc:
                _fail(exc)
    _print_result(task, files, json_output, print_urls=no_download, elapsed=elapsed)


def build_input(model: str, prompt: str | None, aspect_ratio: str | None, pairs: list[str]) -> dict[str, Any]:
    """The `input` object from the command line; `--set` values take the type of the schema field."""
    schema = INPUT_SCHEMAS.get(model, {}).get("properties", {})
    task_input: dict[str, Any] = {}
    if prompt is not None:
        task_input["prompt"] = prompt
    if aspect_ratio is not None:
        task_input["aspect_ratio"] = aspect_ratio
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            _fail_usage(f"--set {pair!r}: expected KEY=VALUE")
        try:
            task_input[key] = coerce(raw, schema.get(key))
        except ValueError as exc:
            _fail_usage(f"--set {key}: {exc}")
    return task_input


def coerce(raw: str, prop: dict[str, Any] | None) -> Any:
    """A command-line string as the JSON type the field wants: `num_images=2` stays the string "2"
    for kie's string enum, `seed=5` becomes 5, `expand_prompt=false` False. Unknown fields: JSON if
    it parses, else the string."""
    if not prop:
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    kinds = _kinds(prop)
    text = raw.strip()
    if "null" in kinds and text in ("null", "none", ""):
        return None
    if "boolean" in kinds:
        lowered = text.lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
    if "integer" in kinds:
        try:
            return int(text)
        except ValueError:
            pass
    if "number" in kinds:
        try:
            return float(text)
        except ValueError:
            pass
    if "array" in kinds:
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, list):
            return value
        items: dict[str, Any] = prop.get("items") or next(
            (m["items"] for m in prop.get("anyOf", []) if "items" in m), {})
        return [coerce(part, items) for part in text.split(",") if part.strip()]
    if "object" in kinds:
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
    if "string" in kinds:
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            try:
                return json.loads(raw)
            except ValueError:
                pass
        return raw
    raise ValueError(f"expected {' or '.join(sorted(kinds - {'null'}))}; got {raw!r}")


def _kinds(prop: dict[str, Any]) -> set[str]:
    kinds: set[str] = set()
    if isinstance(prop.get("type"), str):
        kinds.add(prop["type"])
    elif isinstance(prop.get("type"), list):
        kinds.update(prop["type"])
    for value in prop.get("enum", []):
        kinds.add({bool: "boolean", int: "integer", float: "number", str: "string"}.get(type(value), "string"))
    for member in prop.get("anyOf", []) + prop.get("oneOf", []):
        kinds |= _kinds(member)
    return kinds or {"string"}


def _image_field(model: str) -> str:
    entry = next((e for e in CATALOG if e["id"] == model), None)
    if entry is None or not entry["url_fields"]:
        known = ", ".join(e["id"] for e in CATALOG if e["url_fields"])
        _fail_usage(
            f"--image: {model} takes no images that this CLI knows of (models with images: {known}). "
            "For other models pass the field yourself: --set FIELD='[\"https://...\"]'"
        )
    return str(entry["url_fields"][0])


def _validate(model: str, task_input: dict[str, Any]) -> None:
    cls = MODEL_IDS.get(model)
    if cls is None:
        return  # a model this SDK does not know (kie has many): the server validates
    try:
        cls.model_validate(task_input)
    except InputValidationError as exc:
        # The server's own wording: the same message the server would answer with code 422.
        described = describe_errors(exc.pydantic_error, "input")
        # The SDK refuses unknown fields (the server would drop them silently).
        described = described.replace(": Extra inputs are not permitted", f" is not a field of {model}")
        for problem in described.split("; "):
            err.print(f"[red]error:[/] {escape(problem)}")
        schema = INPUT_SCHEMAS[model]
        fields = ", ".join(_field_summary(n, p, schema) for n, p in _fields(schema))
        err.print(escape(f"fields of {model}: {fields}"))
        raise typer.Exit(2) from None


# --- task get / wait ----------------------------------------------------------------------------


def task_get(
    task_id: Annotated[str, typer.Argument(help="The task id.")],
    json_output: JsonOption = False,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    with _client(base_url, api_key) as client:
        try:
            task = client.get_task(task_id)
        except SafelightError as exc:
            _fail(exc)
    if json_output:
        typer.echo(json.dumps(task.to_dict(), indent=2))
        return
    _print_task(task)


def task_wait(
    task_id: Annotated[str, typer.Argument(help="The task id.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also save the results here.")] = None,
    json_output: JsonOption = False,
    timeout: TimeoutOption = 600.0,
    poll: PollOption = FIRST_POLL,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    with _client(base_url, api_key) as client:
        task = _wait_with_progress(client, task_id, "", timeout, poll, json_output)
        files: list[Path] = []
        if out is not None:
            try:
                files = client.download(task, out)
            except SafelightError as exc:
                _fail(exc)
    # Since the task was created (server clock), which may be before this command started.
    elapsed = (task.complete_time - task.create_time) / 1000 if task.complete_time and task.create_time else None
    _print_result(task, files, json_output, print_urls=out is None, elapsed=elapsed)


def task_cancel(
    task_id: Annotated[str, typer.Argument(help="The task id.")],
    json_output: JsonOption = False,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Cancel a waiting, queuing or generating task: it ends in fail with failCode 499, refunded."""
    with _client(base_url, api_key) as client:
        try:
            task = client.cancel(task_id)
        except SafelightError as exc:
            _fail(exc)
    if json_output:
        typer.echo(json.dumps(task.to_dict(), indent=2))
        return
    err.print(f"task {task.task_id} cancelled (failCode {task.fail_code or '-'}; its credits are refunded)")


def task_list(
    state: Annotated[str | None, typer.Option("--state", help="Only tasks in this state: waiting, queuing, "
                                              "generating, success or fail.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Only tasks of this model.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many tasks.")] = 20,
    json_output: JsonOption = False,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Your tasks, newest first: id, model, state, when created, and how long it took."""
    with _client(base_url, api_key) as client:
        try:
            tasks = list(client.list_tasks(state=state, model=model, limit=limit))
        except SafelightError as exc:
            _fail(exc)
    if json_output:
        typer.echo(json.dumps([task.to_dict() for task in tasks], indent=2))
        return
    if not tasks:
        err.print("no tasks")
        return
    table = Table(box=None, show_header=True, header_style="dim", padding=(0, 2, 0, 0))
    for column in ("task", "model", "state", "created", "took"):
        table.add_column(column, no_wrap=True)
    for task in tasks:
        table.add_row(*(Text(cell) for cell in (task.task_id, task.model, _state_text(task),
                                                 _time_text(task.create_time), _took_text(task))))
    Console(highlight=False, width=200).print(table)


def _state_text(task: Task) -> str:
    if task.state == "waiting" and isinstance(task.raw.get("queuePosition"), int):
        return f"waiting (#{task.raw['queuePosition'] + 1} in queue)"
    if task.state == "generating" and task.progress:
        return f"generating {task.progress}%"
    if task.failed:
        return f"fail {task.fail_code or ''}".rstrip()
    return task.state


def _time_text(epoch_ms: int | None) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if epoch_ms else ""


def _took_text(task: Task) -> str:
    if task.complete_time and task.create_time:
        return _seconds((task.complete_time - task.create_time) / 1000)
    return ""


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


# --- credits / models (called by the main app's groups) -----------------------------------------


def show_credits(json_output: bool = False, base_url: str | None = None, api_key: str | None = None) -> None:
    """Print the account's remaining credits."""
    with _client(base_url, api_key) as client:
        try:
            balance = client.credits()
        except SafelightError as exc:
            _fail(exc)
    if json_output:
        typer.echo(json.dumps({"credits": balance}))
    else:
        typer.echo(str(balance))


def show_models(json_output: bool = False, base_url: str | None = None, api_key: str | None = None) -> None:
    """List models with their fields and prices: GET /api/v1/models, or the built-in catalog on kie.ai."""
    with _client(base_url, api_key) as client:
        try:
            models = client.models()
        except SafelightError as exc:
            _fail(exc)
    if json_output:
        typer.echo(json.dumps(models, indent=2))
        return
    console = Console(highlight=False)
    if models and all(m.get("builtin") for m in models):
        console.print(f"[dim]{client.base_url} does not list its models; showing the built-in catalog.[/]")
    for entry in models:
        schema = entry.get("input_schema") or {}
        console.print()
        title = escape(str(entry.get("title") or ""))
        console.print(f"[bold]{escape(str(entry['id']))}[/]  {title}  [green]{escape(_price_text(entry))}[/]",
                      soft_wrap=True)
        if entry.get("description"):
            console.print(Text(f"  {entry['description']}"))
        table = Table(box=None, show_header=True, header_style="dim", padding=(0, 2, 0, 2))
        table.add_column("field", no_wrap=True)
        table.add_column("type", min_width=14)
        table.add_column("default", no_wrap=True)
        table.add_column("description")
        required = set(schema.get("required") or [])
        for name, prop in _fields(schema):
            default = json.dumps(prop["default"]) if "default" in prop and prop["default"] is not None else ""
            cells = (name + ("*" if name in required else ""), _type_text(prop), default, prop.get("description") or "")
            table.add_row(*(Text(str(cell)) for cell in cells))
        console.print(table)
    console.print("\n[dim]* required[/]")


def _fields(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    properties = schema.get("properties") or {}
    return [(name, prop) for name, prop in properties.items() if isinstance(prop, dict)]


def _field_summary(name: str, prop: dict[str, Any], schema: dict[str, Any]) -> str:
    star = "*" if name in (schema.get("required") or []) else ""
    return f"{name}{star} ({_type_text(prop)})"


def _type_text(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return " | ".join(str(v) for v in prop["enum"])
    if "anyOf" in prop:
        return " | ".join(_type_text(m) for m in prop["anyOf"] if m.get("type") != "null") + " (optional)"
    kind = prop.get("type", "any")
    if kind == "array":
        item = _type_text(prop.get("items") or {})
        item = "url" if "https?" in str((prop.get("items") or {}).get("pattern", "")) else item
        limits = [str(prop[k]) if k in prop else "" for k in ("minItems", "maxItems")]
        return f"list[{item}]" + (f" ({limits[0] or 0}-{limits[1]})" if limits[1] else "")
    if kind == "string" and "maxLength" in prop and "pattern" not in prop:
        return f"string (≤{prop['maxLength']})"
    return str(kind)


def _price_text(entry: dict[str, Any]) -> str:
    prices = entry.get("prices")
    if not isinstance(prices, dict) or not prices:
        return ""
    if list(prices) == ["default"]:
        amount = prices["default"]
        return f"{amount} credit{'s' * (amount != 1)}/image"
    return " · ".join(f"{tier}: {amount}" for tier, amount in prices.items()) + " credits/image"


# --- shared -------------------------------------------------------------------------------------


def _client(base_url: str | None, api_key: str | None) -> Client:
    return Client(api_key=api_key, base_url=base_url)


def _is_url(value: str) -> bool:
    return value.lower().startswith(("http://", "https://"))


def _wait_with_progress(
    client: Client, task_id: str, model: str, timeout: float, poll: float, json_output: bool
) -> Task:
    """wait() under a Rich live display on stderr: state, a bar (pulsing until the server reports
    progress), elapsed time. Off a terminal, one line per state change instead. The changes come
    from the server's event stream (Safelight), or from polls (kie.ai)."""
    live = err.is_terminal
    columns = (
        SpinnerColumn(),
        TextColumn("{task.fields[label]} [bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    started = time.monotonic()
    last_state = ""
    with Progress(*columns, console=err, disable=not live) as progress:
        bar = progress.add_task("submitted", total=None, label=model or task_id[:12])

        def on_progress(task: Task) -> None:
            nonlocal last_state
            if task.progress is not None:
                progress.update(bar, total=100, completed=max(0, min(task.progress, 100)))
            progress.update(bar, description=task.state, label=model or task.model or task_id[:12])
            if not live and task.state != last_state:
                err.print(f"{time.monotonic() - started:6.1f}s  {task.state}"
                          + (f" {task.progress}%" if task.progress is not None else ""))
            last_state = task.state

        try:
            task = client.wait(task_id, timeout=timeout, poll=poll, on_progress=on_progress, stream=True)
        except GenerationFailedError as exc:
            progress.update(bar, description="[red]fail")
            progress.stop()
            failed = exc.task
            reason = (exc.fail_msg or exc.msg) + (f" (failCode {exc.fail_code})" if exc.fail_code else "")
            err.print(f"[red]✗ task {task_id} failed:[/] {escape(reason)}")
            if json_output and failed is not None:
                typer.echo(json.dumps(failed.to_dict(), indent=2))
            raise typer.Exit(1) from None
        except WaitTimeoutError as exc:
            progress.stop()
            err.print(f"[yellow]timed out after {exc.timeout:g} s[/]; the task may still finish: "
                      f"safelight task wait {task_id}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            progress.stop()
            err.print(f"interrupted; task {task_id} keeps running: safelight task wait {task_id}")
            raise typer.Exit(130) from None
        except SafelightError as exc:
            progress.stop()
            _fail(exc)
        progress.update(bar, description="[green]success", total=100, completed=100)
    return task


def _print_result(task: Task, files: list[Path], json_output: bool, print_urls: bool, elapsed: float | None) -> None:
    if json_output:
        typer.echo(json.dumps(task.to_dict() | {"files": [str(f) for f in files]}, indent=2))
        return
    # Wall-clock time, as the user waited (costTime is the server's generation time only).
    seconds = f" in {_seconds(elapsed)}" if elapsed is not None else ""
    err.print(f"[green]✓[/] task {task.task_id} succeeded{seconds}")
    for line in ([str(f) for f in files] if files else task.result_urls if print_urls else []):
        typer.echo(line)


def _print_task(task: Task) -> None:
    table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
    table.add_column(style="dim")
    table.add_column()
    rows = [
        ("task", task.task_id),
        ("model", task.model),
        ("state", task.state + (f" ({task.progress}%)" if task.progress is not None else "")),
        ("input", json.dumps(task.input)),
        ("results", "\n".join(task.result_urls)),
        ("failCode", task.fail_code or ""),
        ("failMsg", task.fail_msg or ""),
        ("costTime", f"{task.cost_time} ms" if task.cost_time is not None else ""),
        ("credits", "" if task.credits_consumed is None else str(task.credits_consumed)),
    ]
    for key, value in rows:
        if value:
            table.add_row(key, Text(value))
    Console(highlight=False).print(table)


def _fail(exc: SafelightError) -> NoReturn:
    err.print(f"[red]error:[/] {escape(str(exc))}")
    if exc.task_id:
        err.print(f"task id: {exc.task_id}")
    raise typer.Exit(1)


def _fail_usage(message: str) -> NoReturn:
    err.print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(2)
