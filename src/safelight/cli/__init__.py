"""`safelight`: generate images and look at tasks (the SDK's commands); run the server or a worker, and
administer keys, credits, models and maintenance (the server's commands).

`pip install safelight` gives the client commands (`generate`, `task get|wait`, `credits`, `models`;
client_commands.py). The server commands (server_commands.py) need `pip install 'safelight[server]'`;
without it they print one line saying so and exit 2. This module imports only typer and the SDK.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from . import server_commands
from .client_commands import register as register_client_commands
from .client_commands import show_credits, show_models

app = typer.Typer(help="Safelight: a self-hosted image-generation job server (kie.ai Market API).",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
keys_app = typer.Typer(help="API keys (shown once at creation; stored only as hashes).", no_args_is_help=True)
credits_app = typer.Typer(help="Credit balances. With no subcommand: the balance of SAFELIGHT_API_KEY.")
models_app = typer.Typer(help="Models. With no subcommand: this host's routes, then models, fields and prices.")
app.add_typer(keys_app, name="keys")
app.add_typer(credits_app, name="credits")
app.add_typer(models_app, name="models")


@app.callback()
def _root(
    data_dir: Annotated[Path | None, typer.Option(envvar="SAFELIGHT_DATA_DIR", help="Data directory.")] = None,
    database_url: Annotated[str | None, typer.Option(envvar="SAFELIGHT_DATABASE_URL",
                                                     help="Database URL (default: SQLite in the data dir).")] = None,
) -> None:
    # The server's Settings() reads the environment, so options become environment variables.
    if data_dir is not None:
        os.environ["SAFELIGHT_DATA_DIR"] = str(data_dir)
    if database_url:
        os.environ["SAFELIGHT_DATABASE_URL"] = database_url


@credits_app.callback(invoke_without_command=True)
def credits_default(ctx: typer.Context,
                    json_output: Annotated[bool, typer.Option("--json")] = False) -> None:
    if ctx.invoked_subcommand is None:
        show_credits(json_output=json_output)


@models_app.callback(invoke_without_command=True)
def models_default(ctx: typer.Context, json_output: Annotated[bool, typer.Option("--json")] = False) -> None:
    if ctx.invoked_subcommand is None:
        # This host's routes need the server; on the SDK-only install, only the server's model list.
        if not json_output and server_commands.server_installed():
            server_commands.print_routes()
        show_models(json_output=json_output)


# Server commands first: `safelight --help` lists them in the order it always has.
server_commands.register(app, keys_app=keys_app, credits_app=credits_app, models_app=models_app)
register_client_commands(app)


def main() -> None:
    app()
