"""`safelight`: run the server or a worker, and administer keys, credits, models and maintenance."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from safelight.config import Settings

if TYPE_CHECKING:
    from safelight.routing import Routing

from .client_commands import register as register_client_commands

app = typer.Typer(help="Safelight: a self-hosted image-generation job server (kie.ai Market API).",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
keys_app = typer.Typer(help="API keys (shown once at creation; stored only as hashes).", no_args_is_help=True)
credits_app = typer.Typer(help="Credit balances. With no subcommand: the balance of SAFELIGHT_API_KEY.")
models_app = typer.Typer(help="Models. With no subcommand: this host's routes, then models, fields and prices.")
app.add_typer(keys_app, name="keys")
app.add_typer(credits_app, name="credits")
app.add_typer(models_app, name="models")
console = Console()


@app.callback()
def _root(
    data_dir: Annotated[Path | None, typer.Option(envvar="SAFELIGHT_DATA_DIR", help="Data directory.")] = None,
    database_url: Annotated[str | None, typer.Option(envvar="SAFELIGHT_DATABASE_URL",
                                                     help="Database URL (default: SQLite in the data dir).")] = None,
) -> None:
    # Settings() reads the environment, so options become environment variables.
    if data_dir is not None:
        os.environ["SAFELIGHT_DATA_DIR"] = str(data_dir)
    if database_url:
        os.environ["SAFELIGHT_DATABASE_URL"] = database_url


def _run(coro_fn):
    """Run an async admin action against the store, migrated first."""
    from safelight.store import Store

    async def go():
        store = Store(Settings().effective_database_url, pool_size=2)
        try:
            await store.migrate()
            return await coro_fn(store)
        finally:
            await store.close()

    return asyncio.run(go())


@app.command()
def serve(
    host: Annotated[str, typer.Option(envvar="SAFELIGHT_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="SAFELIGHT_PORT")] = 8000,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (default ./.safelight).")] = None,
    workers: Annotated[bool, typer.Option("--worker/--no-worker", help="Run the in-process worker.")] = True,
    log_level: str = "info",
) -> None:
    """Run the API server on the embedded or configured store; with a worker unless --no-worker.

    Callback delivery and the retention sweep run in every `serve` process."""
    import uvicorn

    from safelight.api.app import create_app
    from safelight.runtime import SERVE_NO_WORKER_ROLES, SERVE_ROLES, describe_roles

    if data_dir is not None:
        os.environ["SAFELIGHT_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("SAFELIGHT_PUBLIC_URL", f"http://{host}:{port}")
    roles = SERVE_ROLES if workers else SERVE_NO_WORKER_ROLES
    settings = Settings()
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    application = _checked(lambda: create_app(settings, roles=roles, check_backends=True))
    _bootstrap(settings)
    console.print(f"[bold]Safelight[/] on {settings.public_url}  (roles: {describe_roles(roles)}; "
                  f"store: {_describe_store(settings)}; files: {settings.files_dir.resolve()})", highlight=False)
    uvicorn.run(application, host=host, port=port, log_level=log_level, proxy_headers=True)


def _checked(build):
    """Build the app or runtime; a bad routing file or missing weights/keys exits with one clear line."""
    from safelight.backends import BackendStartError
    from safelight.routing import RoutingError

    try:
        return build()
    except (RoutingError, BackendStartError) as exc:
        console.print(f"[red]error:[/] {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None


@app.command()
def worker(log_level: str = "info") -> None:
    """Run only a worker (scale-out: one per GPU machine, sharing a PostgreSQL store).

    It claims and runs tasks; callbacks and retention are the `serve` processes' roles."""
    from safelight.runtime import WORKER_ROLES, Runtime, describe_roles, load_configured_routing, preflight

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()

    def build() -> Routing:
        routing = load_configured_routing(settings)
        preflight(settings, routing, WORKER_ROLES)
        return routing

    routing = _checked(build)
    console.print(f"[bold]Safelight[/] worker (roles: {describe_roles(WORKER_ROLES)}; "
                  f"store: {_describe_store(settings)})", highlight=False)

    async def go() -> None:
        runtime = await Runtime.open(settings, WORKER_ROLES, routing=routing)
        try:
            await asyncio.Event().wait()
        finally:
            await runtime.close()

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        pass


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema."""

    async def noop(_store):
        return None

    _run(noop)
    console.print(f"schema is current ({_describe_store(Settings())})")


@app.command()
def sweep() -> None:
    """Run the retention sweep once: delete expired result files and uploads (task records stay)."""
    from safelight.storage import LocalStorage
    from safelight.storage.retention import sweep as run_sweep

    settings = Settings()
    storage = LocalStorage(settings.files_dir)
    report = _run(lambda store: run_sweep(store.tasks, storage, settings))
    console.print(f"swept: {report}")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Key name; also the account name unless --account is given.")],
    credits: Annotated[int, typer.Option(min=0, help="Credits to grant the account.")] = 0,
    account: Annotated[str | None, typer.Option(help="Existing or new account to put the key on.")] = None,
) -> None:
    """Create an API key and print it (it is not shown again)."""
    created = _run(lambda store: store.accounts.create_key(name, account=account, credits=credits))
    console.print(f"account [bold]{created.account_name}[/] (id {created.account_id}), key id {created.key_id}")
    print(created.key)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (prefix only), their accounts and balances."""
    rows = _run(lambda store: store.accounts.list_keys())
    table = Table("id", "name", "prefix", "account", "balance", "status")
    for row in rows:
        table.add_row(str(row["id"]), row["name"], row["prefix"] + "…", row["account"], str(row["balance"]),
                      "revoked" if row["revoked_at"] else "active")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="Key id or displayed prefix.")]) -> None:
    """Revoke a key; it stops working within 2 seconds."""
    count = _run(lambda store: store.accounts.revoke_key(key))
    if not count:
        console.print(f"[red]no active key {key!r}[/]")
        raise typer.Exit(1)
    console.print(f"revoked {count} key(s)")


@keys_app.command("webhook-secret")
def keys_webhook_secret(
    account: Annotated[str, typer.Argument(help="Account name or id.")],
    rotate: Annotated[bool, typer.Option("--rotate", help="Replace it; callbacks sign with the new one at once.")]
    = False,
) -> None:
    """Show (or rotate) the account's webhook signing secret (whsec_…; kie and Standard Webhooks)."""
    from safelight.store import NotFound

    try:
        secret = _run(lambda store: store.accounts.webhook_key(account, rotate=rotate))
    except NotFound as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    print(secret)


@credits_app.callback(invoke_without_command=True)
def credits_default(ctx: typer.Context,
                    json_output: Annotated[bool, typer.Option("--json")] = False) -> None:
    if ctx.invoked_subcommand is None:
        from .client_commands import show_credits

        show_credits(json_output=json_output)


@credits_app.command("add")
def credits_add(account: Annotated[str, typer.Argument(help="Account name or id.")],
                amount: Annotated[int, typer.Argument(help="Credits to add (negative to deduct).")]) -> None:
    """Grant (or with a negative amount, deduct) credits; recorded in the ledger."""
    from safelight.store import InsufficientCredits, NotFound

    try:
        balance = _run(lambda store: store.accounts.add_credits(account, amount))
    except (NotFound, InsufficientCredits) as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    console.print(f"{account}: balance {balance}")


@app.command()
def maintenance(mode: Annotated[str, typer.Argument(help="on or off")]) -> None:
    """Maintenance mode: createTask answers code 455; polling and results keep working."""
    if mode not in ("on", "off"):
        console.print("[red]mode must be on or off[/]")
        raise typer.Exit(2)
    _run(lambda store: store.state.set_maintenance(mode == "on"))
    console.print(f"maintenance {mode}")


@models_app.callback(invoke_without_command=True)
def models_default(ctx: typer.Context, json_output: Annotated[bool, typer.Option("--json")] = False) -> None:
    if ctx.invoked_subcommand is None:
        from .client_commands import show_models

        if not json_output:
            _print_routes()
        show_models(json_output=json_output)


@models_app.command("routes")
def models_routes() -> None:
    """The effective route of each model on this host (SAFELIGHT_CONFIG), checked as the server checks it."""
    _print_routes()


def _print_routes() -> None:
    from safelight.backends import backend_class
    from safelight.runtime import load_configured_routing

    settings = Settings()
    routing = _checked(lambda: load_configured_routing(settings))
    source = settings.routing_file or "no SAFELIGHT_CONFIG: every model on the sandbox"
    table = Table(title=f"Routes on this host ({source})", title_justify="left", box=None, padding=(0, 2, 0, 0))
    for column in ("model", "route (tried in order)", "nsfw_checker"):
        table.add_column(column)
    for model, route in routing.routes.items():
        steps, checked = [], False
        for name in route:
            config = routing.backends[name]
            offers = backend_class(config.type).offers_safety_checker(config.options)
            checked = checked or offers
            batch = f", batch {config.max_batch}" if config.max_batch > 1 else ""
            steps.append(f"{name} ({config.type}, {config.concurrency} in flight{batch})")
        table.add_row(model, " -> ".join(steps) or "[yellow]not served (route = [])[/]",
                      "yes" if checked else "[dim]no (505)[/]")
    console.print(table)


@app.command()
def attempts(task_id: Annotated[str, typer.Argument(help="Task id.")]) -> None:
    """Which backends a task was tried on, in order, and why each one did not serve it."""
    import json

    row = _run(lambda store: store.tasks.get(task_id))
    if row is None:
        console.print(f"[red]no task {task_id}[/]")
        raise typer.Exit(1)
    console.print(f"{task_id}  {row['model']}  state={row['state']}  served by={row['backend'] or '-'}  "
                  f"claims={row['claims']}", highlight=False)
    table = Table(box=None, padding=(0, 2, 0, 0))
    for column in ("at (ms)", "backend", "outcome", "failCode", "detail"):
        table.add_column(column)
    for entry in json.loads(row["backend_attempts"] or "[]"):
        table.add_row(str(entry["at"]), entry["backend"], entry["outcome"], entry["failCode"], entry["detail"])
    console.print(table)


def _set_model(model_id: str, enabled: bool) -> None:
    from safelight.catalog import MODELS

    if model_id not in MODELS:
        console.print(f"[red]unknown model {model_id!r}; models: {', '.join(MODELS)}[/]")
        raise typer.Exit(1)
    disabled = _run(lambda store: store.state.set_model_enabled(model_id, enabled))
    console.print(f"{model_id} {'enabled' if enabled else 'disabled'}; disabled now: {sorted(disabled) or 'none'}")


@models_app.command("enable")
def models_enable(model_id: str) -> None:
    """Serve a model again."""
    _set_model(model_id, True)


@models_app.command("disable")
def models_disable(model_id: str) -> None:
    """Stop accepting tasks for a model (createTask answers code 505)."""
    _set_model(model_id, False)


def _bootstrap(settings: Settings) -> None:
    """Migrate, and on the first start of an empty server print a ready-to-use demo key."""

    async def go(store):
        if settings.bootstrap_demo_key and await store.accounts.count_keys() == 0:
            return await store.accounts.create_key("demo", credits=settings.demo_credits)
        return None

    created = _run(go)
    if created is not None:
        console.print(f"\n[bold green]First start:[/] created account 'demo' with {settings.demo_credits} credits.")
        console.print(f"API key (shown once): [bold]{created.key}[/]\n")
        console.print(f"  export SAFELIGHT_API_KEY={created.key}\n")


def _describe_store(settings: Settings) -> str:
    url = settings.effective_database_url
    return url.split("@")[-1] if "@" in url else url


register_client_commands(app)


def main() -> None:
    app()
