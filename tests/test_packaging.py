"""`pip install safelight`, no extras, as a user would: the SDK and the client commands, none of the server.

The slow packaging test (marker `packaging`, ~15-20 s): it creates a fresh virtualenv, runs a plain
`pip install <checkout>` there (real dependency resolution, through pip's cache and the index), and
drives the installed `safelight` script. It also builds the wheel and looks inside. Select or skip it
with `-m packaging` / `-m "not packaging"`.

The build reads a copy of only what it needs (pyproject.toml, README.md, src/), so it never writes
into the checkout and a stale build/ directory there cannot leak files into the wheel.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_kie import API_KEY, FakeKie

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[1]
CORE = {"anyio", "httpx", "pydantic", "typer", "rich", "stamina"}
SERVER = ("fastapi", "sqlalchemy", "pydantic_settings", "uvicorn", "alembic", "aiosqlite", "PIL", "python_multipart")
NEEDS_SERVER = "error: this command needs the server: pip install 'safelight[server]'\n"


def _run(args: list[str | Path], *, env: dict[str, str] | None = None, cwd: Path | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would leak the checkout or its venv into the fresh one."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "KIE_API_KEY") and not k.startswith("SAFELIGHT_")}
    return {**env, "COLUMNS": "200", "NO_COLOR": "1", **extra}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the build reads, copied out of the checkout."""
    root = tmp_path_factory.mktemp("source")
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, root / name)
    return root


@pytest.fixture(scope="module")
def venv(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with `pip install <source>`: no extras, dependencies resolved by pip."""
    venv = tmp_path_factory.mktemp("venv")
    made = _run([sys.executable, "-m", "venv", venv], timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    installed = _run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", source], env=_clean_env(),
                     timeout=480)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv


@pytest.fixture(scope="module")
def kie() -> Iterator[FakeKie]:
    with FakeKie(serve_models=True) as fake:
        yield fake


def test_core_install_has_the_sdk_and_none_of_the_server(venv: Path, tmp_path: Path) -> None:
    probe = f"""
import importlib.metadata as md, importlib.util, json, sys
before = set(sys.modules)
import safelight
imported_by_version = sorted(set(sys.modules) - before)
import safelight.client
print(json.dumps({{
    "version": [safelight.__version__, safelight.client.__version__, md.version("safelight")],
    "imported_by_version": imported_by_version,
    "core": sorted(r.split(";")[0] for r in md.requires("safelight") if "extra ==" not in r),
    "license": md.metadata("safelight")["License-Expression"],
    "importable": [name for name in {SERVER!r} if importlib.util.find_spec(name) is not None],
}}))
"""
    result = _run([venv / "bin" / "python", "-c", probe], env=_clean_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert len(set(facts["version"])) == 1, facts["version"]  # one version source: safelight/__init__.py
    assert facts["imported_by_version"] == ["safelight"]
    assert {re.match(r"[\w.-]+", req).group(0) for req in facts["core"]} == CORE
    assert facts["license"] == "Apache-2.0"
    assert facts["importable"] == []  # fastapi, sqlalchemy, ... are not installed


def test_client_commands_work_on_the_core_install(venv: Path, kie: FakeKie, tmp_path: Path) -> None:
    safelight = venv / "bin" / "safelight"
    env = _clean_env(SAFELIGHT_BASE_URL=kie.base_url, SAFELIGHT_API_KEY=API_KEY)
    for args in ([], ["generate"], ["task", "get"], ["credits"], ["models"], ["serve"]):
        shown = _run([safelight, *args, "--help"], env=env, cwd=tmp_path)
        assert shown.returncode == 0, (args, shown.stdout + shown.stderr)
        assert "Usage: safelight" in shown.stdout

    made = _run([safelight, "generate", "z-image", "-p", "a lighthouse", "-a", "1:1", "--poll", "0.01",
                 "--out", tmp_path / "out"], env=env, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    (task_id,) = kie.tasks
    saved = tmp_path / "out" / f"{task_id}_0.png"
    assert made.stdout.splitlines() == [str(saved)] and saved.read_bytes() == kie.png(0)

    record = _run([safelight, "task", "get", task_id, "--json"], env=env, cwd=tmp_path)
    assert record.returncode == 0, record.stderr
    assert json.loads(record.stdout)["state"] == "success"

    credits = _run([safelight, "credits"], env=env, cwd=tmp_path)
    assert (credits.returncode, credits.stdout) == (0, "100\n"), credits.stderr

    models = _run([safelight, "models", "--json"], env=env, cwd=tmp_path)
    assert models.returncode == 0, models.stderr
    assert [m["id"] for m in json.loads(models.stdout)] == ["z-image"]
    listed = _run([safelight, "models"], env=env, cwd=tmp_path)  # without the server: no routes table first
    assert listed.returncode == 0 and "Routes on this host" not in listed.stdout, listed.stdout + listed.stderr
    assert "z-image" in listed.stdout


@pytest.mark.parametrize("args", [
    ["migrate"],
    ["serve", "--port", "1"],
    ["worker"],
    ["keys", "create", "--name", "demo"],
    ["credits", "add", "demo", "5"],
    ["models", "routes"],
    ["maintenance", "on"],
])
def test_server_commands_say_how_to_install_the_server(venv: Path, tmp_path: Path, args: list[str]) -> None:
    result = _run([venv / "bin" / "safelight", *args], env=_clean_env(SAFELIGHT_DATA_DIR=str(tmp_path / "d")),
                  cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", NEEDS_SERVER)
    assert not (tmp_path / "d").exists()


def test_wheel_ships_py_typed_and_no_test_code(venv: Path, source: Path, tmp_path: Path) -> None:
    built = _run([venv / "bin" / "python", "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", tmp_path,
                  source], env=_clean_env(), timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("safelight-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "safelight/py.typed" in names
    assert "safelight/store/migrations/env.py" in names
    assert any(n.startswith("safelight/store/migrations/versions/0001_") for n in names)
    # The sandbox's fonts, each with its licence beside it.
    fonts = {n.removeprefix("safelight/backends/fonts/") for n in names if n.startswith("safelight/backends/fonts/")}
    assert fonts == {"DejaVuSans-subset.ttf", "DroidSansFallback-subset.ttf", "LICENSE-DejaVu.txt",
                     "LICENSE-DroidSansFallback.txt"}
    assert {n.split("/")[0] for n in names} == {"safelight", wheel.name.split("-py3")[0] + ".dist-info"}
    # Test-only code stays in the checkout: tests/tiny_pipelines.py, tools/render_client_models.py.
    assert "safelight/backends/local/tiny.py" not in names and "safelight/client/_generate.py" not in names
    assert not [n for n in names if "tiny" in n or "render_client_models" in n or n.startswith(("tests/", "tools/"))]
