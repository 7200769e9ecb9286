"""The admin CLI against a real store: keys, credits, maintenance, models, migrate, and `serve` starting up;
and the server commands on an install without the server extra."""

import asyncio
import os
import re
import subprocess
import sys
import time

import httpx
import pytest
from typer.testing import CliRunner

from safelight.cli import app, server_commands
from safelight.store import Store
from tests.helpers import free_port

runner = CliRunner()


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("SAFELIGHT_DATABASE_URL", raising=False)
    monkeypatch.setenv("SAFELIGHT_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def run(*args):
    result = runner.invoke(app, list(args))
    return result


def store_for(data_dir):
    return Store(f"sqlite+aiosqlite:///{data_dir / 'safelight.db'}")


async def check(data_dir, fn):
    store = store_for(data_dir)
    try:
        return await fn(store)
    finally:
        await store.close()


def test_keys_credits_maintenance_and_models(data_dir):
    created = run("keys", "create", "--name", "acme", "--credits", "50")
    assert created.exit_code == 0, created.output
    key = re.search(r"sl_[\w-]+", created.output).group(0)
    assert asyncio.run(check(data_dir, lambda s: s.accounts.authenticate(key))) is not None

    listed = run("keys", "list")
    assert "acme" in listed.output and "50" in listed.output and key not in listed.output

    assert run("credits", "add", "acme", "25").exit_code == 0
    assert asyncio.run(check(data_dir, lambda s: s.accounts.balance(1))) == 75
    refused = run("credits", "add", "nobody", "5")
    assert refused.exit_code == 1 and "no account named 'nobody'" in refused.output

    assert run("maintenance", "on").exit_code == 0
    assert asyncio.run(check(data_dir, lambda s: s.state.maintenance())) is True
    assert run("maintenance", "sideways").exit_code == 2
    assert run("maintenance", "off").exit_code == 0

    assert run("models", "disable", "z-image").exit_code == 0
    assert asyncio.run(check(data_dir, lambda s: s.state.disabled_models())) == {"z-image"}
    assert run("models", "enable", "z-image").exit_code == 0
    assert run("models", "disable", "dall-e").exit_code == 1

    secret = run("keys", "webhook-secret", "acme").output.strip()
    rotated = run("keys", "webhook-secret", "acme", "--rotate").output.strip()
    assert secret.startswith("whsec_") and rotated.startswith("whsec_") and secret != rotated
    assert run("keys", "webhook-secret", "acme").output.strip() == rotated
    assert run("keys", "webhook-secret", "ghost").exit_code == 1

    prefix = key[:9]
    assert run("keys", "revoke", prefix).exit_code == 0
    assert asyncio.run(check(data_dir, lambda s: s.accounts.authenticate(key))) is None
    assert run("keys", "revoke", prefix).exit_code == 1


def test_migrate_creates_the_schema(data_dir):
    result = run("migrate")
    assert result.exit_code == 0 and "schema is current" in result.output
    assert (data_dir / "safelight.db").exists()


def test_serve_starts_prints_a_demo_key_and_serves(tmp_path):
    port = free_port()
    env = {**os.environ, "SAFELIGHT_DATA_DIR": str(tmp_path / "served")}
    env.pop("SAFELIGHT_DATABASE_URL", None)
    process = subprocess.Popen([sys.executable, "-m", "safelight.cli", "serve", "--port", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output = ""
        deadline = time.monotonic() + 30
        while "Application startup complete" not in output and time.monotonic() < deadline:
            output += process.stdout.readline()
        key = re.search(r"SAFELIGHT_API_KEY=(sl_[\w-]+)", output).group(1)
        headers = {"Authorization": f"Bearer {key}"}
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/api/v1/chat/credit", headers=headers).json()["data"] == 1000
        task_id = httpx.post(f"{base}/api/v1/jobs/createTask", headers=headers, json={
            "model": "z-image", "input": {"prompt": "served", "aspect_ratio": "1:1"}}).json()["data"]["taskId"]
        for _ in range(200):
            record = httpx.get(f"{base}/api/v1/jobs/recordInfo", params={"taskId": task_id}, headers=headers).json()
            if record["data"]["state"] == "success":
                break
            time.sleep(0.02)
        assert record["data"]["state"] == "success"
    finally:
        process.terminate()
        process.wait(timeout=15)
        process.stdout.close()


def test_server_commands_without_the_server_extra_say_how_to_install_it(data_dir, monkeypatch):
    # tests/test_packaging.py runs the same on a real `pip install safelight`; this is the fast check.
    monkeypatch.setattr(server_commands, "server_installed", lambda: False)
    for args in (["migrate"], ["keys", "create", "--name", "demo"], ["credits", "add", "acme", "5"],
                 ["models", "routes"], ["maintenance", "on"], ["attempts", "t1"], ["serve", "--port", "1"]):
        result = run(*args)
        assert (result.exit_code, result.stdout) == (2, ""), (args, result.output)
        assert result.stderr == "error: this command needs the server: pip install 'safelight[server]'\n"
    assert not data_dir.exists()
    assert run("serve", "--help").exit_code == 0


def test_the_cli_imports_nothing_of_the_server_until_a_server_command_runs():
    code = ("import sys, safelight.cli;"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('fastapi', 'sqlalchemy', 'pydantic_settings', 'uvicorn', 'alembic', 'PIL')"
            " or m.startswith(('safelight.config', 'safelight.store', 'safelight.api', 'safelight.runtime')));"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_negative_amounts_deduct_and_existing_accounts_are_named(data_dir):
    assert run("keys", "create", "--name", "demo", "--credits", "100").exit_code == 0
    deducted = run("credits", "add", "demo", "-40")
    assert deducted.exit_code == 0, deducted.output
    assert "balance 60" in deducted.output
    too_much = run("credits", "add", "demo", "-999999")
    assert too_much.exit_code == 1 and "insufficient credits" in too_much.output
    again = run("keys", "create", "--name", "demo", "--credits", "5")
    assert again.exit_code == 0
    assert "account 'demo' already existed: the key was added to it and 5 credits granted; balance now 65" in " ".join(
        again.output.split())


def test_user_text_in_errors_is_printed_as_written(data_dir, tmp_path, monkeypatch):
    routing = tmp_path / "safelight.toml"
    routing.write_text('[models."z-image"]\nroute = ["kei"]\n')
    monkeypatch.setenv("SAFELIGHT_CONFIG", str(routing))
    result = run("models", "routes")
    assert result.exit_code == 2
    assert "which no [backends.kei] table defines" in " ".join(result.output.split())


def test_workers_lists_the_live_ones(data_dir):
    assert "no live workers" in run("workers").output

    async def beat(store):
        await store.migrate()
        await store.workers.beat("gpu-1-4242-abc", host="gpu-1", pid=4242, models=["z-image"], in_flight=2,
                                 started_at=0)

    asyncio.run(check(data_dir, beat))
    listed = run("workers")
    assert listed.exit_code == 0
    assert "gpu-1-4242-abc" in listed.output and "z-image" in listed.output and " 2 " in listed.output
