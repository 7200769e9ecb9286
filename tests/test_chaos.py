"""The crash test's short form: bench/chaos.py kills Safelight's processes with SIGKILL under load, in both
modes, and afterwards nothing may be lost, run twice, charged twice, or missing from disk.

The long form (`bench/chaos.py --seconds 120 --kills 40`) is run by hand; see the script's docstring.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import PG_ADMIN_URL, pg_available

ROOT = Path(__file__).resolve().parent.parent
CHAOS = ROOT / "bench" / "chaos.py"
# A few kills in a short load, sized for two cores: about 20 s per mode, start-ups included. Two claims:
# a task one kill interrupts is recovered (run again), one that two kills interrupt fails and is refunded.
SHORT = ["--seconds", "15", "--kills", "4", "--clients", "4", "--seed", "7", "--lease-seconds", "2",
         "--max-claims", "2", "--settle-seconds", "45", "--json"]
MUST_BE_ZERO = ("lost", "run_twice", "double_charges", "ledger_mismatches", "missing_files", "state_regressions")


@functools.cache
def load_chaos():
    spec = importlib.util.spec_from_file_location("safelight_bench_chaos", CHAOS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_chaos(mode: str, *extra: str, timeout: float = 100) -> dict:
    """Run the script; on a timeout, SIGTERM it first so that it kills its own children."""
    process = subprocess.Popen([sys.executable, str(CHAOS), "--mode", mode, *SHORT, *extra], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        pytest.fail(f"bench/chaos.py --mode {mode} ran past {timeout} s\n{stdout}\n{stderr[-4000:]}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert process.returncode in (0, 1) and lines, f"rc {process.returncode}\n{stdout}\n{stderr[-4000:]}"
    report = json.loads(lines[-1])
    report["_output"] = f"{stdout}\n{stderr[-4000:]}"
    assert (process.returncode == 1) == any(report[kind] for kind in MUST_BE_ZERO), report["_output"]
    return report


def check(report: dict, mode: str) -> None:
    output = report["_output"]
    assert report["mode"] == mode
    for kind in MUST_BE_ZERO:
        assert report[kind] == 0, f"{kind}: {report['details'].get(kind)}\n{output}"
    assert sum(report["kills_by_process"].values()) == 4, output
    assert report["accepted"] > 0 and report["succeeded"] > 0, output
    assert report["succeeded"] + report["failed"] == report["accepted"], output
    assert not report["unexpected_exits"], output


def test_chaos_sqlite():
    check(run_chaos("sqlite"), "sqlite")


def test_chaos_postgres():
    if not asyncio.run(pg_available()):
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and not reachable at {PG_ADMIN_URL}")
        pytest.skip("PostgreSQL not reachable")
    report = run_chaos("postgres", "--pg-admin-url", PG_ADMIN_URL)
    check(report, "postgres")
    assert set(report["kills_by_process"]) == {"api-1", "api-2", "worker-1", "worker-2"}


# --- the checker itself: each kind of damage is found ------------------------------------------------


def _png(path: Path, whole: bool = True) -> None:
    chaos = load_chaos()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(chaos.PNG_HEAD + b"data" + (chaos.PNG_TAIL if whole else b""))


def _store(tmp_path: Path):
    """A consistent store: a z-image task that succeeded, an imagen4 x4 task that failed (refunded)."""
    ok, failed = "a" * 32, "b" * 32
    tasks = [
        dict(id=ok, account_id=1, model="z-image", state="success", num_images=1, credits_reserved=1,
             credits_consumed=1, result=json.dumps({"files": [f"results/{ok}/1-t0/0.png"], "seeds": [1]}),
             fail_code="", claims=1, files_deleted=False),
        dict(id=failed, account_id=1, model="google/imagen4-fast", state="fail", num_images=4, credits_reserved=16,
             credits_consumed=0, result=None, fail_code="500", claims=3, files_deleted=False),
    ]
    ledger = [dict(id=1, account_id=1, task_id=None, kind="grant", amount=100),
              dict(id=2, account_id=1, task_id=ok, kind="reserve", amount=-1),
              dict(id=3, account_id=1, task_id=failed, kind="reserve", amount=-16),
              dict(id=4, account_id=1, task_id=failed, kind="refund", amount=16)]
    accounts = [dict(id=1, name="chaos", balance=99)]
    _png(tmp_path / f"results/{ok}/1-t0/0.png")
    _png(tmp_path / f"results/{ok}/0-t1/0.png")  # an earlier claim's unreferenced files: fine
    return tasks, ledger, accounts


def _verify(tmp_path, tasks, ledger, accounts, accepted=("a" * 32, "b" * 32)):
    chaos = load_chaos()
    load = chaos.Load()
    for task_id in accepted:
        load.accepted[task_id] = chaos.Seen(model="z-image")
    finding, info = chaos.verify(tasks, ledger, accounts, tmp_path, load)
    return Counter({kind: count for kind, count in finding.counts.items() if count}), info, load


def test_checker_passes_a_consistent_store(tmp_path):
    found, info, _ = _verify(tmp_path, *_store(tmp_path))
    assert found == Counter()
    assert info["succeeded_with_unreferenced_claim_dirs"] == 1


def test_checker_finds_lost_tasks(tmp_path):
    tasks, ledger, accounts = _store(tmp_path)
    found, _, _ = _verify(tmp_path, tasks, ledger, accounts, accepted=("a" * 32, "b" * 32, "c" * 32))
    assert found == Counter(lost=1)
    tasks[1].update(state="generating", credits_consumed=0)
    ledger.pop()  # not refunded yet
    accounts[0]["balance"] = 83
    found, _, _ = _verify(tmp_path, tasks, ledger, accounts)
    assert found == Counter(lost=1)


def test_checker_finds_double_charges_and_ledger_mismatches(tmp_path):
    tasks, ledger, accounts = _store(tmp_path)
    ledger.append(dict(id=5, account_id=1, task_id="a" * 32, kind="reserve", amount=-1))
    accounts[0]["balance"] = 98
    found, _, _ = _verify(tmp_path, tasks, ledger, accounts)
    assert found["double_charges"] == 1 and found["ledger_mismatches"] >= 1

    tasks, ledger, accounts = _store(tmp_path)
    ledger.append(dict(id=5, account_id=1, task_id="a" * 32, kind="refund", amount=1))
    accounts[0]["balance"] = 100
    found, _, _ = _verify(tmp_path, tasks, ledger, accounts)
    assert found["double_charges"] == 1

    tasks, ledger, accounts = _store(tmp_path)
    accounts[0]["balance"] = 98  # balance != sum(ledger)
    found, _, _ = _verify(tmp_path, tasks, ledger, accounts)
    assert found["ledger_mismatches"] >= 1 and not found["double_charges"]

    tasks, ledger, accounts = _store(tmp_path)
    tasks[1]["credits_consumed"] = 16  # failed, refunded and charged
    found, _, _ = _verify(tmp_path, tasks, ledger, accounts)
    assert found["double_charges"] == 1


def test_checker_finds_missing_files_and_results_of_two_claims(tmp_path):
    tasks, ledger, accounts = _store(tmp_path)
    (tmp_path / f"results/{'a' * 32}/1-t0/0.png").unlink()
    found, _, _ = _verify(tmp_path, tasks, ledger, accounts)
    assert found == Counter(missing_files=1)

    _png(tmp_path / f"results/{'a' * 32}/1-t0/0.png", whole=False)  # truncated
    found, _, _ = _verify(tmp_path, tasks, ledger, accounts)
    assert found == Counter(missing_files=1)

    tasks, ledger, accounts = _store(tmp_path)
    ok = "a" * 32
    tasks[0].update(model="google/imagen4-fast", num_images=2, credits_reserved=8, credits_consumed=8, claims=2,
                    result=json.dumps({"files": [f"results/{ok}/1-t0/0.png", f"results/{ok}/2-t2/1.png"]}))
    ledger[1]["amount"] = -8
    accounts[0]["balance"] = 92
    _png(tmp_path / f"results/{ok}/2-t2/1.png")
    found, _, _ = _verify(tmp_path, tasks, ledger, accounts)
    assert found == Counter(run_twice=1)


def test_checker_compares_what_clients_saw(tmp_path):
    chaos = load_chaos()
    tasks, ledger, accounts = _store(tmp_path)
    load = chaos.Load()
    load.accepted["a" * 32] = chaos.Seen(model="z-image", states=["waiting", "success"],
                                         result_keys=[f"results/{'a' * 32}/0-t1/0.png"])
    load.accepted["b" * 32] = chaos.Seen(model="z-image", states=["waiting", "success"], unknown_after_accept=1)
    finding, _ = chaos.verify(tasks, ledger, accounts, tmp_path, load)
    assert finding.counts["run_twice"] == 1  # the result changed after a client saw it succeed
    assert finding.counts["state_regressions"] == 2  # seen as success, stored as fail; and unknown after accept
