"""The server's commands: `serve`, `worker`, `migrate`, `sweep`, `keys ...`, `credits add`, `maintenance`,
`models routes|enable|disable` and `attempts`.

They need the `[server]` extra (fastapi, SQLAlchemy, pydantic-settings, ...). This module imports none of
it at import time, so `safelight --help` works on the SDK-only install (`pip install safelight`); each
command checks first and, without the extra, prints one line and exits 2:

    error: this command needs the server: pip install 'safelight[server]'
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from safelight.config import Settings
    from safelight.routing import Routing
    from safelight.store import CreatedKey, Store

P = ParamSpec("P")
T = TypeVar("T")

NEEDS_SERVER = "this command needs the server: pip install 'safelight[server]'"

console = Console()
# soft_wrap: the install hint stays one line, whatever the terminal width.
err = Console(stderr=True, highlight=False, soft_wrap=True)


@functools.cache
def server_installed() -> bool:
    """Whether the `[server]` extra is installed: its two defining packages import."""
    try:
        import fastapi  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError:
        return False
    return True


def require_server() -> None:
    """Exit 2 with one line saying how to install the server, unless it is installed."""
    if not server_installed():
        err.print(f"[red]error:[/] {escape(NEEDS_SERVER)}")
        raise typer.Exit(2)


def needs_server(command: Callable[P, T]) -> Callable[P, T]:
    """`command`, checking for the server extra first (the signature, and so the options, are kept)."""

    @functools.wraps(command)
    def checked(*args: P.args, **kwargs: P.kwargs) -> T:
        require_server()
        return command(*args, **kwargs)

    return checked


def register(app: typer.Typer, *, keys_app: typer.Typer, credits_app: typer.Typer, models_app: typer.Typer) -> None:
    """Add the server commands to the main `safelight` app and its `keys`, `credits` and `models` groups."""
    app.command("serve")(needs_server(serve))
    app.command("worker")(needs_server(worker))
    app.command("workers")(needs_server(workers))
    app.command("migrate")(needs_server(migrate))
    app.command("sweep")(needs_server(sweep))
    app.command("maintenance")(needs_server(maintenance))
    app.command("attempts")(needs_server(attempts))
    keys_app.command("create")(needs_server(keys_create))
    keys_app.command("list")(needs_server(keys_list))
    keys_app.command("revoke")(needs_server(keys_revoke))
    keys_app.command("limits")(needs_server(keys_limits))
    keys_app.command("webhook-secret")(needs_server(keys_webhook_secret))
    # ignore_unknown_options: "-500" is a negative amount, not an option.
    credits_app.command("add", context_settings={"ignore_unknown_options": True})(needs_server(credits_add))
    models_app.command("routes")(needs_server(models_routes))
    models_app.command("enable")(needs_server(models_enable))
    models_app.command("disable")(needs_server(models_disable))


def _run(action: Callable[[Store], Awaitable[T]]) -> T:
    """Run an async admin action against the store, migrated first."""
    from safelight.config import Settings
    from safelight.store import Store

    async def go() -> T:
        store = Store(Settings().effective_database_url, pool_size=2)
        try:
            await store.migrate()
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(go())


def _checked(build: Callable[[], T]) -> T:
    """Build the app or runtime; a bad routing file or missing weights/keys exits with one clear line."""
    from safelight.backends import BackendStartError
    from safelight.routing import RoutingError
    from safelight.storage import StorageConfigError

    try:
        return build()
    except (RoutingError, BackendStartError, StorageConfigError) as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None


# --- serve, worker, migrate, sweep --------------------------------------------------------------


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
    from safelight.config import Settings
    from safelight.logs import configure_logging
    from safelight.runtime import SERVE_NO_WORKER_ROLES, SERVE_ROLES, describe_roles
    from safelight.tracing import configure_tracing

    # The port first: a second server on a taken port stops here, before migrating or starting a worker.
    listener = _listen(host, port)
    if data_dir is not None:
        os.environ["SAFELIGHT_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("SAFELIGHT_PUBLIC_URL", f"http://{host}:{port}")
    os.environ["SAFELIGHT_HOST"], os.environ["SAFELIGHT_PORT"] = host, str(port)
    roles = SERVE_ROLES if workers else SERVE_NO_WORKER_ROLES
    settings = Settings()
    configure_logging(log_level, settings.log_format)
    configure_tracing("safelight")
    application = _checked(lambda: create_app(settings, roles=roles, check_backends=True))
    _bootstrap(settings)
    console.print(f"[bold]Safelight[/] on {settings.public_url}  (roles: {describe_roles(roles)}; "
                  f"store: {_describe_store(settings)}; files: {_describe_files(settings)})", highlight=False)
    config = uvicorn.Config(application, log_level=log_level, proxy_headers=True, log_config=None, access_log=False)
    uvicorn.Server(config).run(sockets=[listener])


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound now; a taken port exits 2 with one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        err.print(f"[red]error:[/] cannot listen on {escape(host)}:{port}: {escape(exc.strerror or str(exc))} "
                  "(another server running? choose another with --port)")
        raise typer.Exit(2) from None
    listener.listen(2048)
    listener.set_inheritable(True)
    return listener


def worker(
    log_level: str = "info",
    metrics_port: Annotated[int | None, typer.Option(help="Serve GET /metrics on this port (127.0.0.1 and "
                                                          "SAFELIGHT_HOST aside, every interface).")] = None,
    metrics_host: Annotated[str, typer.Option(help="Address for --metrics-port.")] = "0.0.0.0",
) -> None:
    """Run only a worker (scale-out: one per GPU machine, sharing a PostgreSQL store).

    It claims and runs tasks; callbacks and retention are the `serve` processes' roles."""
    from safelight.config import Settings
    from safelight.logs import configure_logging
    from safelight.runtime import WORKER_ROLES, Runtime, describe_roles, load_configured_routing, preflight
    from safelight.tracing import configure_tracing

    metrics_listener = _listen(metrics_host, metrics_port) if metrics_port is not None else None
    settings = Settings()
    configure_logging(log_level, settings.log_format)
    configure_tracing("safelight-worker")

    def build() -> Routing:
        routing = load_configured_routing(settings)
        preflight(settings, routing, WORKER_ROLES)
        return routing

    routing = _checked(build)
    console.print(f"[bold]Safelight[/] worker (roles: {describe_roles(WORKER_ROLES)}; "
                  f"store: {_describe_store(settings)}; files: {_describe_files(settings)})", highlight=False)

    async def go() -> None:
        runtime = await Runtime.open(settings, WORKER_ROLES, routing=routing)
        metrics_server = None
        try:
            if metrics_listener is not None:
                metrics_server = await _serve_metrics(metrics_listener, settings.metrics_token, log_level)
            await asyncio.Event().wait()
        finally:
            if metrics_server is not None:
                metrics_server.should_exit = True
            await runtime.close()

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        pass


async def _serve_metrics(listener: socket.socket, token: str, log_level: str) -> Any:
    """GET /metrics for a worker without the API: a tiny Starlette app on its own port."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    from safelight.metrics import exposition, token_allows

    async def scrape(request: Request) -> Response:
        if not token_allows(token, request.headers.get("authorization")):
            return PlainTextResponse("send Authorization: Bearer <SAFELIGHT_METRICS_TOKEN>", status_code=401)
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    app = Starlette(routes=[Route("/metrics", scrape)])
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, log_config=None, access_log=False))
    asyncio.get_running_loop().create_task(server.serve(sockets=[listener]))
    return server


def workers() -> None:
    """The live workers (heartbeat within the last 30 s): host, models, tasks in flight."""
    import time

    from safelight.store.workers import LIVE_SECONDS

    live = _run(lambda store: store.workers.live(int(LIVE_SECONDS * 1000)))
    if not live:
        console.print(f"[yellow]no live workers[/] (none wrote a heartbeat in the last {LIVE_SECONDS:g} s): tasks "
                      "wait until a `safelight serve` or `safelight worker` process runs", highlight=False)
        return
    table = Table("id", "host", "pid", "models", "in flight", "up", "last seen", box=None, padding=(0, 2, 0, 0))
    now = time.time() * 1000
    for row in live:
        table.add_row(escape(row.id), escape(row.host), str(row.pid), escape(", ".join(row.models)), str(row.in_flight),
                      f"{(now - row.started_at) / 1000:.0f} s", f"{(now - row.last_seen) / 1000:.1f} s ago")
    console.print(table)


def migrate() -> None:
    """Create or upgrade the database schema."""
    from safelight.config import Settings

    async def noop(_store: Store) -> None:
        return None

    _run(noop)
    console.print(f"schema is current ({_describe_store(Settings())})")


def sweep() -> None:
    """Run the retention sweep once: delete expired result files and uploads (task records stay)."""
    from safelight.config import Settings
    from safelight.storage import open_storage
    from safelight.storage.retention import sweep as run_sweep

    settings = Settings()
    storage = _checked(lambda: open_storage(settings))
    report = _run(lambda store: run_sweep(store.tasks, storage, settings))
    console.print(f"swept: {report}")


# --- keys ---------------------------------------------------------------------------------------


def keys_create(
    name: Annotated[str, typer.Option(help="Key name; also the account name unless --account is given.")],
    credits: Annotated[int, typer.Option(min=0, help="Credits to grant the account.")] = 0,
    account: Annotated[str | None, typer.Option(help="Existing or new account to put the key on.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="An admin key (the console /admin and the admin API "
                                                        "/api/admin): it has no account and cannot create tasks.")]
    = False,
) -> None:
    """Create an API key and print it (it is not shown again)."""
    from safelight.store import cli_actor

    if admin:
        if credits or account:
            err.print("[red]error:[/] an admin key has no account: --credits and --account do not apply")
            raise typer.Exit(2)
        made = _run(lambda store: store.accounts.create_admin_key(name, actor=cli_actor()))
        console.print(f"admin key [bold]{escape(made.name)}[/], key id admin:{made.key_id}")
        print(made.key)
        return
    created = _run(lambda store: store.accounts.create_key(name, account=account, credits=credits,
                                                           actor=cli_actor()))
    console.print(f"account [bold]{escape(created.account_name)}[/] (id {created.account_id}), "
                  f"key id {created.key_id}")
    if created.account_existed:
        console.print(f"[yellow]note:[/] account {escape(repr(created.account_name))} already existed: the key was "
                      f"added to it{f' and {credits} credits granted' if credits else ''}; balance now "
                      f"{created.balance}", highlight=False)
    print(created.key)


def keys_list() -> None:
    """List keys (prefix only), their accounts, balances, credit caps and allowed addresses; then admin keys."""

    async def both(store: Store) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return await store.accounts.list_keys(), await store.accounts.list_admin_keys()

    rows, admins = _run(both)
    table = Table("id", "name", "prefix", "account", "balance", "caps (hour/day/total)", "allowed IPs", "status")
    for row in rows:
        caps = "/".join("-" if value is None else str(value) for value in row["limits"].values())
        table.add_row(str(row["id"]), row["name"], row["prefix"] + "…", row["account"], str(row["balance"]),
                      caps, ", ".join(row["allowed_ips"]) if row["allowed_ips"] else "any",
                      "revoked" if row["revoked_at"] else "active")
    for row in admins:
        table.add_row(f"admin:{row['id']}", row["name"], row["prefix"] + "…", "[dim](admin key)[/]", "", "", "",
                      "revoked" if row["revoked_at"] else "active")
    console.print(table)


def keys_revoke(key: Annotated[str, typer.Argument(help="Key id (admin:N for an admin key) or displayed prefix.")]
                ) -> None:
    """Revoke a key; it stops working within 2 seconds."""
    from safelight.store import cli_actor

    count = _run(lambda store: store.accounts.revoke_key(key, actor=cli_actor()))
    if not count:
        console.print(f"[red]no active key {escape(repr(key))}[/]")
        raise typer.Exit(1)
    console.print(f"revoked {count} key(s)")


def keys_limits(
    key_id: Annotated[int, typer.Argument(help="The user key's id (safelight keys list).")],
    hour: Annotated[int | None, typer.Option(min=1, help="Credits per rolling hour.")] = None,
    day: Annotated[int | None, typer.Option(min=1, help="Credits per rolling day.")] = None,
    total: Annotated[int | None, typer.Option(min=1, help="Credits in all.")] = None,
    allow_ip: Annotated[list[str] | None, typer.Option("--allow-ip", help="An address or CIDR the key may be "
                                                                          "used from (repeat for more).")] = None,
    any_ip: Annotated[bool, typer.Option("--any-ip", help="Remove the IP allow-list.")] = False,
    clear: Annotated[bool, typer.Option("--clear", help="Remove every cap (and, with --any-ip, the allow-list).")]
    = False,
) -> None:
    """Set a key's credit caps (a task past one gets code 433) and IP allow-list; options not given keep
    their current values."""
    from safelight.store import KeyLimits, NotFound, cli_actor

    async def change(store: Store) -> dict[str, Any]:
        current = await store.admin.user_key(key_id)
        if current is None:
            raise NotFound(f"no API key with id {key_id}")
        caps = {} if clear else {"hour": current["limit_hour"], "day": current["limit_day"],
                                 "total": current["limit_total"]}
        caps.update({name: value for name, value in (("hour", hour), ("day", day), ("total", total))
                     if value is not None})
        stored_ips = None if current["allowed_ips"] is None else json.loads(current["allowed_ips"])
        allowed = None if any_ip else (allow_ip or stored_ips)
        await store.accounts.set_key_limits(key_id, KeyLimits(caps.get("hour"), caps.get("day"), caps.get("total")),
                                            allowed, actor=cli_actor())
        return {"limits": caps, "allowed": allowed}

    try:
        result = _run(change)
    except (NotFound, ValueError) as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from None
    caps = ", ".join(f"{value} per {name}" if name != "total" else f"{value} in total"
                     for name, value in result["limits"].items() if value is not None) or "no credit caps"
    console.print(f"key {key_id}: {caps}; used from "
                  f"{', '.join(result['allowed']) if result['allowed'] else 'any address'}")


def keys_webhook_secret(
    account: Annotated[str, typer.Argument(help="Account name or id.")],
    rotate: Annotated[bool, typer.Option("--rotate", help="Replace it; callbacks sign with the new one at once.")]
    = False,
) -> None:
    """Show (or rotate) the account's webhook signing secret (whsec_…; kie and Standard Webhooks)."""
    from safelight.store import NotFound, cli_actor

    try:
        secret = _run(lambda store: store.accounts.webhook_key(account, rotate=rotate, actor=cli_actor()))
    except NotFound as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from None
    print(secret)


# --- credits add, maintenance -------------------------------------------------------------------


def credits_add(account: Annotated[str, typer.Argument(help="Account name or id.")],
                amount: Annotated[int, typer.Argument(help="Credits to add (negative to deduct).")]) -> None:
    """Grant (or with a negative amount, deduct) credits; recorded in the ledger."""
    from safelight.store import InsufficientCredits, NotFound, cli_actor

    try:
        balance = _run(lambda store: store.accounts.add_credits(account, amount, actor=cli_actor()))
    except (NotFound, InsufficientCredits) as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from None
    console.print(f"{account}: balance {balance}")


def maintenance(mode: Annotated[str, typer.Argument(help="on or off")]) -> None:
    """Maintenance mode: createTask answers code 455; polling and results keep working."""
    if mode not in ("on", "off"):
        console.print("[red]mode must be on or off[/]")
        raise typer.Exit(2)
    from safelight.store import cli_actor

    _run(lambda store: store.state.set_maintenance(mode == "on", actor=cli_actor()))
    console.print(f"maintenance {mode}")


# --- models routes|enable|disable ---------------------------------------------------------------


def models_routes() -> None:
    """The effective route of each model on this host (SAFELIGHT_CONFIG), checked as the server checks it,
    and each backend's circuit breaker as the live workers report it."""
    print_routes(breakers=True)


def print_routes(*, breakers: bool = False) -> None:
    """The table of `safelight models routes`; also printed first by `safelight models` on a server host
    (without the breakers, which need the store)."""
    from safelight.backends import backend_class
    from safelight.config import Settings
    from safelight.runtime import load_configured_routing

    settings = Settings()
    routing = _checked(lambda: load_configured_routing(settings))
    source = settings.routing_file or "no SAFELIGHT_CONFIG: every model on the sandbox"
    live = _live_breakers() if breakers else None
    table = Table(title=f"Routes on this host ({source})", title_justify="left", box=None, padding=(0, 2, 0, 0))
    for column in ("model", "route (tried in order)", "nsfw_checker"):
        table.add_column(column)
    if live is not None:
        table.add_column("circuit breakers (live workers)")
    for model, route in routing.routes.items():
        steps: list[str] = []
        checked = False
        for name in route:
            config = routing.backends[name]
            offers = backend_class(config.type).offers_safety_checker(config.options)
            checked = checked or offers
            batch = f", batch {config.max_batch}" if config.max_batch > 1 else ""
            steps.append(f"{name} ({config.type}, {config.concurrency} in flight{batch})")
        row = [model, " -> ".join(steps) or "[yellow]not served (route = [])[/]",
               "yes" if checked else "[dim]no (505)[/]"]
        if live is not None:
            row.append(" -> ".join(_breaker_summary(name, live) for name in route))
        table.add_row(*row)
    console.print(table)


def _live_breakers() -> list[dict[str, dict[str, Any]]] | None:
    """Each live worker's circuit breakers (backend -> state), from the heartbeats; None if unreadable."""
    from safelight.store.workers import LIVE_SECONDS

    try:
        live = _run(lambda store: store.workers.live(int(LIVE_SECONDS * 1000)))
    except Exception as exc:  # the routes still print; the store is only needed for this column
        err.print(f"[yellow]warning:[/] could not read the workers' circuit breakers from the store: "
                  f"{escape(type(exc).__name__)}: {escape(str(exc)[:200])}")
        return None
    return [worker.breakers for worker in live]


def _breaker_summary(backend: str, live: list[dict[str, dict[str, Any]]]) -> str:
    """One backend's breakers over the live workers: "bfl: closed", "bfl: open on 1 of 2 (trial in 12 s; ...)"."""
    import time

    states = [breakers[backend] for breakers in live if backend in breakers]
    if not states:
        return f"{escape(backend)}: [dim]no live worker[/]"
    tripped = [state for state in states if state.get("state") != "closed"]
    if not tripped:
        return f"{escape(backend)}: closed"
    parts = []
    for kind in ("open", "half-open"):
        count = sum(1 for state in tripped if state.get("state") == kind)
        if count:
            parts.append(f"[red]{kind}[/] on {count} of {len(states)}")
    retry_at = [state["retryAt"] for state in tripped if isinstance(state.get("retryAt"), int)]
    detail = []
    if retry_at:
        detail.append(f"trial in {max(0.0, (min(retry_at) - time.time() * 1000) / 1000):.0f} s")
    reason = next((str(state.get("reason")) for state in tripped if state.get("reason")), "")
    if reason:
        detail.append(f"last: {escape(reason[:120])}")
    return f"{escape(backend)}: {', '.join(parts)}" + (f" ({'; '.join(detail)})" if detail else "")


def _set_model(model_id: str, enabled: bool) -> None:
    from safelight.catalog import MODELS
    from safelight.store import cli_actor

    if model_id not in MODELS:
        console.print(f"[red]unknown model {escape(repr(model_id))}; models: {', '.join(MODELS)}[/]")
        raise typer.Exit(1)
    disabled = _run(lambda store: store.state.set_model_enabled(model_id, enabled, actor=cli_actor()))
    console.print(f"{model_id} {'enabled' if enabled else 'disabled'}; disabled now: {sorted(disabled) or 'none'}")


def models_enable(model_id: str) -> None:
    """Serve a model again."""
    _set_model(model_id, True)


def models_disable(model_id: str) -> None:
    """Stop accepting tasks for a model (createTask answers code 505)."""
    _set_model(model_id, False)


# --- attempts -----------------------------------------------------------------------------------


def attempts(task_id: Annotated[str, typer.Argument(help="Task id.")]) -> None:
    """Which backends a task was tried on, in order, and why each one did not serve it."""
    row = _run(lambda store: store.tasks.get(task_id))
    if row is None:
        console.print(f"[red]no task {escape(task_id)}[/]")
        raise typer.Exit(1)
    console.print(f"{task_id}  {row['model']}  state={row['state']}  served by={row['backend'] or '-'}  "
                  f"claims={row['claims']}", highlight=False)
    table = Table(box=None, padding=(0, 2, 0, 0))
    for column in ("at (ms)", "backend", "outcome", "failCode", "detail"):
        table.add_column(column)
    for entry in json.loads(row["backend_attempts"] or "[]"):
        table.add_row(str(entry["at"]), entry["backend"], entry["outcome"], entry["failCode"], entry["detail"])
    console.print(table)


# --- shared -------------------------------------------------------------------------------------


def _bootstrap(settings: Settings) -> None:
    """Migrate, and on the first start of an empty server print a ready-to-use demo key."""

    async def go(store: Store) -> CreatedKey | None:
        if settings.bootstrap_demo_key and await store.accounts.count_keys() == 0:
            return await store.accounts.create_key("demo", credits=settings.demo_credits)
        return None

    created = _run(go)
    if created is not None:
        console.print(f"\n[bold green]First start:[/] created account 'demo' with {settings.demo_credits} credits.")
        console.print(f"API key (shown once): [bold]{created.key}[/]\n")
        console.print(f"  export SAFELIGHT_API_KEY={created.key}")
        console.print(f"  export SAFELIGHT_BASE_URL={settings.public_url}\n", highlight=False)


def _describe_store(settings: Settings) -> str:
    url = settings.effective_database_url
    return url.split("@")[-1] if "@" in url else url


def _describe_files(settings: Settings) -> str:
    """Where result files and uploads go (SAFELIGHT_STORAGE_URL), and how clients are linked to them.
    Called after the preflight, which has vetted the storage settings."""
    from safelight.storage import open_storage

    where = open_storage(settings).description
    return f"{where}, {settings.file_urls} links" if settings.file_urls != "proxied" else where
