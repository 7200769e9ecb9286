"""`safelight generate | task | credits | models` against the fake kie.ai.

The progress display is checked in a real pseudo-terminal (pexpect), the exit codes and plain
output through pipes, and the argument handling in-process with Typer's runner.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safelight.cli import app
from safelight.cli.client_commands import coerce
from safelight.client import Client

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
CLI = [sys.executable, "-m", "safelight.cli"]


@pytest.fixture
def env(kie, tmp_path):
    return {
        **os.environ,
        "SAFELIGHT_BASE_URL": kie.base_url,
        "SAFELIGHT_API_KEY": kie.api_key,
        "SAFELIGHT_DATA_DIR": str(tmp_path / "data"),
        "TERM": "xterm-256color",
        "COLUMNS": "120",
        "NO_COLOR": "",
    }


@pytest.fixture
def runner(env, monkeypatch):
    for key in ("SAFELIGHT_BASE_URL", "SAFELIGHT_API_KEY", "SAFELIGHT_DATA_DIR", "COLUMNS"):
        monkeypatch.setenv(key, env[key])
    return CliRunner()


def test_generate_in_a_terminal_shows_progress_and_saves_files(kie, env, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    kie.null_polls = 1
    out = tmp_path / "images"
    child = pexpect.spawn(
        CLI[0],
        [*CLI[1:], "generate", "z-image", "--prompt", "a lighthouse", "--aspect-ratio", "16:9",
         "--out", str(out), "--poll", "0.25"],
        env=env, cwd=str(tmp_path), dimensions=(30, 120), encoding="utf-8", timeout=30,
    )
    child.expect(pexpect.EOF)
    child.close()
    screen = ANSI.sub("", child.before)
    assert child.exitstatus == 0, screen

    (task_id,) = kie.tasks
    assert f"task {task_id} submitted (z-image)" in screen
    # The live display went through every state, with the progress the server reported.
    positions = [screen.find(state) for state in ("waiting", "queuing", "generating", "success")]
    assert -1 not in positions and positions == sorted(positions), screen
    assert "40%" in screen and "80%" in screen
    assert re.search(r"0:00:0\d", screen)  # elapsed time
    saved = out / f"{task_id}_0.png"
    assert saved.read_bytes() == kie.png(0)
    assert str(saved) in screen


def test_generate_failure_exits_non_zero_with_fail_msg(kie, env, tmp_path):
    result = subprocess.run(
        [*CLI, "generate", "z-image", "-p", "this will fail", "-a", "1:1", "--poll", "0.01", "--out",
         str(tmp_path / "o")],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1
    assert "internal error, please try again later." in result.stderr
    assert "failCode 500" in result.stderr
    (task_id,) = kie.tasks
    assert task_id in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "o").exists()


def test_generate_off_a_terminal_logs_state_changes_and_prints_paths(kie, env, tmp_path):
    result = subprocess.run(
        [*CLI, "generate", "z-image", "-p", "fox", "-a", "1:1", "--poll", "0.01", "--out", str(tmp_path / "o")],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    (task_id,) = kie.tasks
    assert result.stdout.splitlines() == [str(tmp_path / "o" / f"{task_id}_0.png")]
    for state in ("waiting", "queuing", "generating 40%", "success"):
        assert state in result.stderr


def test_generate_json_with_typed_set_values(kie, runner, tmp_path):
    result = runner.invoke(app, [
        "generate", "google/imagen4-fast", "-p", "cats", "--set", "num_images=2", "--set", "seed=5",
        "--set", "negative_prompt=dogs, birds", "--out", str(tmp_path), "--json", "--poll", "0.01",
    ])
    assert result.exit_code == 0, result.output
    task = json.loads(result.stdout)
    sent = json.loads(kie.calls("/api/v1/jobs/createTask")[0]["body"])["input"]
    assert sent == {"prompt": "cats", "num_images": "2", "seed": 5, "negative_prompt": "dogs, birds"}
    assert task["state"] == "success" and task["input"] == sent
    assert [Path(f).name for f in task["files"]] == [f"{task['task_id']}_0.png", f"{task['task_id']}_1.png"]


def test_generate_uploads_local_images_into_the_models_image_field(kie, runner, tmp_path):
    ref = tmp_path / "ref.png"
    ref.write_bytes(kie.png(7))
    result = runner.invoke(app, [
        "generate", "flux-2/pro-image-to-image", "-p", "make it night", "-a", "auto", "--set", "resolution=1K",
        "--image", str(ref), "--image", "https://example.com/second.png", "--no-download", "--poll", "0.01",
    ])
    assert result.exit_code == 0, result.output
    (stored,) = kie.files
    assert kie.files[stored] == kie.png(7)
    sent = json.loads(kie.calls("/api/v1/jobs/createTask")[0]["body"])["input"]
    assert sent["input_urls"] == [f"{kie.base_url}/files/{stored}", "https://example.com/second.png"]
    (task_id,) = kie.tasks
    assert result.stdout.strip() == f"{kie.base_url}/files/{task_id}_0.png"  # URLs, nothing saved


def test_generate_refuses_bad_input_before_contacting_the_server(kie, runner, tmp_path):
    result = runner.invoke(app, ["generate", "z-image", "-p", "fox", "-a", "2:1"])
    assert result.exit_code == 2
    assert "input.aspect_ratio" in result.output and "aspect_ratio*" in result.output
    result = runner.invoke(app, ["generate", "z-image", "-p", "fox", "-a", "1:1", "--image", "x.png"])
    assert result.exit_code == 2 and "takes no images" in result.output
    result = runner.invoke(app, ["generate", "ideogram/character", "-p", "me", "--image", str(tmp_path / "no.png")])
    assert result.exit_code == 2 and "no such file" in result.output
    result = runner.invoke(app, ["generate", "z-image", "-p", "fox", "--set", "oops"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output
    result = runner.invoke(app, ["generate", "z-image", "-p", "fox", "-a", "1:1", "--set", "seed=5"])
    assert result.exit_code == 2 and "input.seed is not a field of z-image" in result.output
    assert kie.requests == []


def test_generate_server_error_exits_1(kie, runner):
    kie.inject("/api/v1/jobs/createTask", (200, {"code": 402, "msg": "Credits insufficient"}))
    result = runner.invoke(app, ["generate", "z-image", "-p", "fox", "-a", "1:1"])
    assert result.exit_code == 1 and "Credits insufficient (code 402)" in result.output


def test_task_get_and_wait(kie, runner, tmp_path):
    kie.null_polls = 0
    result = runner.invoke(app, ["generate", "z-image", "-p", "fox", "-a", "1:1", "--no-download", "--poll", "0.01"])
    (task_id,) = kie.tasks
    got = runner.invoke(app, ["task", "get", task_id, "--json"])
    assert got.exit_code == 0 and json.loads(got.stdout)["state"] == "success"
    human = runner.invoke(app, ["task", "get", task_id])
    assert "success" in human.stdout and '"prompt": "fox"' in human.stdout

    waited = runner.invoke(app, ["task", "wait", task_id, "--out", str(tmp_path / "w"), "--poll", "0.01"])
    assert waited.exit_code == 0, result.output
    assert waited.stdout.strip() == str(tmp_path / "w" / f"{task_id}_0.png")

    missing = runner.invoke(app, ["task", "wait", "0" * 32, "--poll", "0.01"])
    assert missing.exit_code == 1 and "recordInfo is null" in missing.output

    kie.tasks[task_id].scenario = "forever"
    kie.tasks[task_id].polls = 0
    slow = runner.invoke(app, ["task", "wait", task_id, "--timeout", "0.2", "--poll", "0.01"])
    assert slow.exit_code == 1 and f"safelight task wait {task_id}" in slow.output


def test_credits_and_models(kie, runner):
    assert runner.invoke(app, ["credits"]).stdout.strip() == "100"
    assert json.loads(runner.invoke(app, ["credits", "--json"]).stdout) == {"credits": 100}

    listing = runner.invoke(app, ["models"])
    assert listing.exit_code == 0
    assert "built-in catalog" in listing.stdout
    for text in ("z-image", "ideogram/character", "1K: 5 · 2K: 7 credits/image", "TURBO | BALANCED | QUALITY",
                 "input_urls*", "list[url] (1-8)"):
        assert text in listing.stdout
    models = json.loads(runner.invoke(app, ["models", "--json"]).stdout)
    assert [m["id"] for m in models][:1] == ["z-image"]

    kie.serve_models = True
    listing = runner.invoke(app, ["models"])
    assert "Z-Image (local)" in listing.stdout and "built-in" not in listing.stdout


def test_credits_with_a_bad_key(kie, runner, monkeypatch):
    monkeypatch.setenv("SAFELIGHT_API_KEY", "wrong")
    result = runner.invoke(app, ["credits"])
    assert result.exit_code == 1 and "You do not have access permissions" in result.output


@pytest.mark.parametrize(
    ("raw", "prop", "expected"),
    [
        ("2", {"type": "string", "enum": ["1", "2"]}, "2"),
        ('"2"', {"type": "string", "enum": ["1", "2"]}, "2"),
        ("5", {"anyOf": [{"type": "integer"}, {"type": "null"}]}, 5),
        ("null", {"anyOf": [{"type": "integer"}, {"type": "null"}]}, None),
        ("false", {"type": "boolean"}, False),
        ("yes", {"type": "boolean"}, True),
        ("0.5", {"type": "number"}, 0.5),
        ("https://a/1.png,https://a/2.png", {"type": "array", "items": {"type": "string"}},
         ["https://a/1.png", "https://a/2.png"]),
        ('["x"]', {"type": "array", "items": {"type": "string"}}, ["x"]),
        ("16:9", None, "16:9"),
        ("3", None, 3),
        ('{"a": 1}', None, {"a": 1}),
    ],
)
def test_set_values_take_the_schema_type(raw, prop, expected):
    assert coerce(raw, prop) == expected


def test_set_value_of_the_wrong_type_is_refused():
    with pytest.raises(ValueError, match="expected integer"):
        coerce("five", {"type": "integer"})


# --- the extensions: real elapsed time, task cancel | list, the event stream ------------------------


def test_generate_prints_the_real_elapsed_time_not_the_cost_time(kie, runner, tmp_path):
    # The fake's costTime is 1234 ms; its seven polls, from 0.1 s growing x1.5, take about 2.1 s.
    started = time.monotonic()
    result = runner.invoke(app, ["generate", "z-image", "-p", "fox", "-a", "1:1", "--no-download", "--poll", "0.1"])
    wall = time.monotonic() - started
    assert result.exit_code == 0, result.output
    shown = float(re.search(r"succeeded in (\d+\.\d) s", result.output).group(1))
    assert 1.9 <= shown <= wall + 0.05 and shown != 1.2


@pytest.fixture
def safelight_runner(monkeypatch):
    def make(server):
        monkeypatch.setenv("SAFELIGHT_BASE_URL", server.base_url)
        monkeypatch.setenv("SAFELIGHT_API_KEY", server.api_key)
        monkeypatch.setenv("COLUMNS", "200")
        return CliRunner()

    return make


def test_task_cancel(idle_safelight, safelight_runner):
    runner = safelight_runner(idle_safelight)
    with Client(idle_safelight.api_key, idle_safelight.base_url) as client:
        task_id = client.create_task("z-image", {"prompt": "cancel me", "aspect_ratio": "1:1"})
    result = runner.invoke(app, ["task", "cancel", task_id])
    assert result.exit_code == 0, result.output
    assert f"task {task_id} cancelled (failCode 499; its credits are refunded)" in result.output
    assert idle_safelight.balance() == 1000
    again = runner.invoke(app, ["task", "cancel", task_id, "--json"])
    assert again.exit_code == 1 and "already ended (fail)" in again.output
    missing = runner.invoke(app, ["task", "cancel", "0" * 32])
    assert missing.exit_code == 1 and "recordInfo is null" in missing.output


def test_task_list(idle_safelight, safelight_runner):
    runner = safelight_runner(idle_safelight)
    with Client(idle_safelight.api_key, idle_safelight.base_url) as client:
        ids = [client.create_task("z-image", {"prompt": f"t{n}", "aspect_ratio": "1:1"}) for n in range(3)]
        other = client.create_task("google/imagen4-fast", {"prompt": "other"})
        client.cancel(ids[0])
    listed = runner.invoke(app, ["task", "list", "--limit", "3"])
    assert listed.exit_code == 0, listed.output
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert rows[0] == ["task", "model", "state", "created", "took"]
    assert [row[0] for row in rows[1:]] == [other, ids[2], ids[1]]  # newest first, at most 3
    assert "waiting (#1 in queue)" in listed.stdout and "waiting (#2 in queue)" in listed.stdout

    only = runner.invoke(app, ["task", "list", "--state", "fail", "--model", "z-image", "--json"])
    (cancelled,) = json.loads(only.stdout)
    assert (cancelled["task_id"], cancelled["state"], cancelled["fail_code"]) == (ids[0], "fail", "499")
    assert "fail 499" in runner.invoke(app, ["task", "list", "--state", "fail"]).stdout
    none = runner.invoke(app, ["task", "list", "--state", "success"])
    assert none.exit_code == 0 and "no tasks" in none.output
    bad = runner.invoke(app, ["task", "list", "--state", "done"])
    assert bad.exit_code == 1 and "state must be one of" in bad.output


def test_task_cancel_and_list_on_a_server_without_them(kie, runner):
    for args in (["task", "cancel", "abc"], ["task", "list"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and "(a Safelight extension)" in result.output, result.output


def test_generate_on_safelight_follows_the_event_stream(paced_safelight, safelight_runner, tmp_path):
    runner = safelight_runner(paced_safelight)
    result = runner.invoke(app, ["generate", "z-image", "-p", "fox", "-a", "1:1", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    positions = [result.output.find(state) for state in ("generating", "success")]  # one line per state
    assert -1 not in positions and positions == sorted(positions), result.output
    shown = float(re.search(r"succeeded in (\d+\.\d) s", result.output).group(1))
    assert 1.4 <= shown < 5  # the paced backend takes 1.5 s
    (saved,) = (tmp_path / "o").iterdir()
    assert result.stdout.splitlines() == [str(saved)]

    waited = runner.invoke(app, ["task", "wait", saved.name.split("-")[0]])
    assert waited.exit_code == 0 and re.search(r"succeeded in 1\.\d s", waited.output), waited.output
