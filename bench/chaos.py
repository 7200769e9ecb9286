"""Crash test: kill -9 Safelight's processes at random moments under load, then check nothing was lost.

    .venv/bin/python bench/chaos.py --mode sqlite   [--seconds 60] [--kills 20] [--clients 6] [--seed 1]
    .venv/bin/python bench/chaos.py --mode postgres [--seconds 60] [--kills 20] [--clients 6] [--seed 1]

Modes:
  sqlite    one embedded `safelight serve` (API + worker + delivery + retention, SQLite in the data dir),
            killed with SIGKILL and restarted.
  postgres  two `safelight serve --no-worker` API replicas and two `safelight worker` processes on one
            fresh PostgreSQL database (created on --pg-admin-url, dropped afterwards) and one shared data
            dir for the files; each process is killed and restarted at random.

Several clients create tasks (z-image, and google/imagen4-fast with num_images "4") and poll them
the whole time, tolerating the connection errors a killed process causes. A create counts as
accepted only if it answered code 200 with a taskId; one whose connection broke may or may not
have been stored, and is counted apart. After `--seconds` the killing stops, everything down is
restarted, and the run waits (up to --settle-seconds) for every task to end. Then every process
is stopped and the database and the files are checked directly:

  lost              an accepted task missing from the store, or still unfinished after the settle time
  run twice         a succeeded task whose result files come from more than one claim
                    (results/<taskId>/<claim>-<token>/<n>.png), or whose results changed after a
                    client had seen it succeed
  double charges    a task with more than one reserve, more than one refund, a refund although it
                    succeeded, or a refund and a charge (credits_consumed) at once
  ledger mismatches an account whose balance != the sum of its ledger (or != grants - successes), or a
                    task whose reservation, charge or refund does not match its state and price
  missing files     a result file a succeeded task references that is absent or not a whole PNG, or
                    fewer files than images
  state regressions the API answered a task as unknown after accepting it, or moved it out of a
                    terminal state, or the store ends in another state than the one a client saw

The exit status is 1 if any of these is non-zero, 2 if the run itself could not be made. --seed makes
the load mix and the kill schedule (moments, targets, downtimes) reproducible; the interleaving
with the processes' own timing is not. Use only on this machine: all processes listen on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("SAFELIGHT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
# Credits per image (the catalog's defaults; the children run with no SAFELIGHT_PRICES).
PRICES = {"z-image": 1, "google/imagen4-fast": 4}
Z_IMAGE_RATIOS = ["1:1", "4:3", "3:4", "16:9", "9:16"]
TERMINAL = {"success", "fail"}
UNFINISHED = ("waiting", "queuing", "generating")
PNG_HEAD = b"\x89PNG\r\n\x1a\n"
PNG_TAIL = b"IEND\xaeB`\x82"
# What makes the run fail; the other figures are informational.
FAILING = ("lost", "run_twice", "double_charges", "ledger_mismatches", "missing_files", "state_regressions")

# Every child process still alive, so that atexit (and the finally in main) can kill them all.
_LIVE: dict[int, subprocess.Popen[bytes]] = {}
_CLEANUP_DIRS: list[Path] = []


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and anything it started (each child leads its own process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    _LIVE.pop(process.pid, None)


def _cleanup() -> None:
    for process in list(_LIVE.values()):
        _kill_group(process)
    for directory in _CLEANUP_DIRS:
        shutil.rmtree(directory, ignore_errors=True)
    _CLEANUP_DIRS.clear()


atexit.register(_cleanup)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def say(message: str) -> None:
    """Progress, on stderr: stdout carries only the table (and the --json line)."""
    print(message, file=sys.stderr, flush=True)


# --- the processes ------------------------------------------------------------------------------


@dataclass
class Service:
    """One Safelight process, restartable; its output goes to a log file in the run's directory."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    port: int | None = None  # API processes only
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    crashes: list[str] = field(default_factory=list)  # exits nobody asked for

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        with self.log.open("ab") as log:
            log.write(f"\n--- start {self.starts + 1} at {time.time():.3f}\n".encode())
            log.flush()
            self.process = subprocess.Popen(self.args, env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _LIVE[self.process.pid] = self.process
        self.starts += 1

    def kill(self) -> None:
        if self.process is not None:
            _kill_group(self.process)
        self.process = None

    def reap_crash(self) -> bool:
        """True (and the exit noted) if the process exited by itself."""
        if self.process is None or self.process.poll() is None:
            return False
        code = self.process.returncode
        _LIVE.pop(self.process.pid, None)
        self.process = None
        self.crashes.append(f"exit {code}; log tail: {self.log_tail(400)!r}")
        return True

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


async def wait_healthy(service: Service, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            if not service.running:
                raise RuntimeError(f"{service.name} exited while starting:\n{service.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{service.url}/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{service.name} did not become healthy in {timeout:.0f} s:\n{service.log_tail()}")


# --- what the clients saw -----------------------------------------------------------------------


@dataclass
class Seen:
    """One accepted task, as the clients observed it through the API."""

    model: str
    states: list[str] = field(default_factory=list)
    result_keys: list[str] | None = None  # storage keys of the first successful recordInfo
    unknown_after_accept: int = 0  # recordInfo answered 422 "recordInfo is null"
    regressions: list[str] = field(default_factory=list)


@dataclass
class Load:
    accepted: dict[str, Seen] = field(default_factory=dict)
    rejected: Counter[str] = field(default_factory=Counter)  # createTask answered, code != 200
    create_refused: int = 0  # every replica refused the connection: nothing was sent, surely not created
    create_unknown: int = 0  # the connection broke after sending: maybe created
    poll_errors: Counter[str] = field(default_factory=Counter)  # recordInfo answered nothing usable, by why
    downloads: int = 0
    download_errors: Counter[str] = field(default_factory=Counter)


def storage_key(url: str) -> str:
    """results/<id>/<claim>-<token>/<n>.png from a signed result URL."""
    path = unquote(urlsplit(url).path)
    return path.split("/files/", 1)[1] if "/files/" in path else path


def task_body(rng: random.Random, client: int, count: int) -> dict[str, Any]:
    prompt = f"chaos client {client} task {count}"
    if rng.random() < 0.5:
        return {"model": "z-image", "input": {"prompt": prompt, "aspect_ratio": rng.choice(Z_IMAGE_RATIOS)}}
    return {"model": "google/imagen4-fast", "input": {"prompt": prompt, "num_images": "4", "aspect_ratio": "1:1"}}


async def run_client(index: int, urls: list[str], key: str, rng: random.Random, load: Load, stop_creating: float,
                     give_up: asyncio.Event, max_outstanding: int = 6) -> None:
    """Create tasks until `stop_creating` (monotonic), keep at most `max_outstanding` unfinished, poll
    them; after `stop_creating` poll what is left until it ends or `give_up` is set."""
    outstanding: dict[str, Seen] = {}
    count = 0
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    async with httpx.AsyncClient(timeout=5, headers={"Authorization": f"Bearer {key}"}, limits=limits) as http:
        while not give_up.is_set():
            creating = time.monotonic() < stop_creating
            if not creating and not outstanding:
                return
            if creating and len(outstanding) < max_outstanding:
                count += 1
                body = task_body(rng, index, count)
                task_id = await create(http, urls, rng, body, load)
                if task_id is not None:
                    seen = Seen(model=body["model"])
                    load.accepted[task_id] = seen
                    outstanding[task_id] = seen
            errors = load.poll_errors.total()
            for task_id, seen in list(outstanding.items()):
                await poll(http, urls, rng, task_id, seen, load)
                if seen.states and seen.states[-1] in TERMINAL:
                    del outstanding[task_id]
            if load.poll_errors.total() > errors:  # a process is down: do not spin on its refused connections
                await asyncio.sleep(rng.uniform(0.1, 0.3))
            await asyncio.sleep(rng.uniform(0.02, 0.08) if creating else 0.2)


def replicas(urls: list[str], rng: random.Random) -> list[str]:
    """The API replicas in the order to try them: a random one first, then the others (a load
    balancer's failover: a refused connection sent nothing, so the next replica may take it)."""
    first = rng.randrange(len(urls))
    return urls[first:] + urls[:first]


async def create(http: httpx.AsyncClient, urls: list[str], rng: random.Random, body: dict[str, Any],
                 load: Load) -> str | None:
    for url in replicas(urls, rng):
        try:
            response = await http.post(f"{url}/api/v1/jobs/createTask", json=body)
            break
        except httpx.ConnectError:
            continue
        except httpx.HTTPError:  # sent, then the connection broke: maybe created, maybe not
            load.create_unknown += 1
            await asyncio.sleep(0.1)
            return None
    else:
        load.create_refused += 1
        await asyncio.sleep(0.1)
        return None
    try:
        answer = response.json()
    except ValueError:
        load.rejected[f"HTTP {response.status_code}"] += 1
        return None
    data = answer.get("data") if isinstance(answer, dict) else None
    if answer.get("code") == 200 and isinstance(data, dict) and data.get("taskId"):
        return str(data["taskId"])
    load.rejected[str(answer.get("code"))] += 1
    return None


async def poll(http: httpx.AsyncClient, urls: list[str], rng: random.Random, task_id: str, seen: Seen,
               load: Load) -> None:
    answer: Any = None
    error = "every replica refused the connection"
    for base in replicas(urls, rng):
        try:
            answer = (await http.get(f"{base}/api/v1/jobs/recordInfo", params={"taskId": task_id})).json()
            break
        except httpx.ConnectError:
            continue
        except httpx.HTTPError as exc:
            error = f"connection broke ({type(exc).__name__})"
            break
        except ValueError:
            error = "not JSON"
            break
    if not isinstance(answer, dict):
        load.poll_errors[error] += 1
        return
    if answer.get("code") == 422:
        seen.unknown_after_accept += 1
        return
    data = answer.get("data")
    if answer.get("code") != 200 or not isinstance(data, dict):
        load.poll_errors[f"code {answer.get('code')}"] += 1
        return
    state = str(data.get("state"))
    previous = seen.states[-1] if seen.states else None
    if previous in TERMINAL and state != previous:
        seen.regressions.append(f"{previous} -> {state}")
    if state != previous:
        seen.states.append(state)
    if state == "success":
        result = json.loads(data.get("resultJson") or "{}")
        keys = [storage_key(url) for url in result.get("resultUrls", [])]
        if seen.result_keys is None:
            seen.result_keys = keys
            if result.get("resultUrls"):
                await download(http, result["resultUrls"][0], load)
        elif keys != seen.result_keys:
            seen.regressions.append(f"result changed: {seen.result_keys} -> {keys}")


async def download(http: httpx.AsyncClient, url: str, load: Load) -> None:
    """Fetch one result through its signed URL (whichever replica signed it may be down: then skip)."""
    try:
        response = await http.get(url)
    except httpx.HTTPError:
        return
    load.downloads += 1
    if response.status_code != 200:
        load.download_errors[f"HTTP {response.status_code}"] += 1
    elif not response.content.startswith(PNG_HEAD):
        load.download_errors["not a PNG"] += 1


# --- the chaos ----------------------------------------------------------------------------------


@dataclass
class Kill:
    at: float  # seconds after the load started
    target: str
    downtime: float  # seconds before the restart
    delay_if_down: float  # if the target is down at `at`: wait for its restart, then this long


def kill_schedule(rng: random.Random, names: list[str], kills: int, seconds: float) -> list[Kill]:
    window = max(0.0, seconds - 1.0)
    moments = sorted(0.5 + rng.random() * window for _ in range(kills))
    return [Kill(at=round(at, 3), target=rng.choice(names), downtime=round(rng.uniform(0.05, 1.5), 3),
                 delay_if_down=round(rng.uniform(0.0, 1.0), 3)) for at in moments]


class Chaos:
    def __init__(self, services: list[Service]) -> None:
        self.services = {service.name: service for service in services}
        self.restarts: set[asyncio.Task[None]] = set()
        self.log: list[str] = []
        self.started = time.monotonic()

    def note(self, message: str) -> None:
        line = f"[{time.monotonic() - self.started:7.2f}s] {message}"
        self.log.append(line)
        say(line)

    async def run(self, schedule: list[Kill]) -> None:
        for kill in schedule:
            await asyncio.sleep(max(0.0, self.started + kill.at - time.monotonic()))
            service = self.services[kill.target]
            while not service.running:  # still down from an earlier kill: wait for its restart
                await asyncio.sleep(0.02)
                await self.supervise()
            if kill.delay_if_down and time.monotonic() - self.started > kill.at + 0.05:
                await asyncio.sleep(kill.delay_if_down)
            pid = service.process.pid if service.process else None
            service.kill()
            service.kills += 1
            self.note(f"kill -9 {service.name} (pid {pid}); restart in {kill.downtime:.2f} s")
            task = asyncio.create_task(self._restart_later(service, kill.downtime))
            self.restarts.add(task)
            task.add_done_callback(self.restarts.discard)

    async def _restart_later(self, service: Service, downtime: float) -> None:
        await asyncio.sleep(downtime)
        if not service.running:
            service.start()

    async def supervise(self) -> None:
        """Restart any process that exited by itself (noted: a crash nobody asked for)."""
        for service in self.services.values():
            if service.reap_crash():
                self.note(f"{service.name} exited by itself: {service.crashes[-1]}")
                service.start()

    async def supervise_forever(self) -> None:
        while True:
            await self.supervise()
            await asyncio.sleep(0.2)

    async def bring_all_up(self) -> None:
        await asyncio.gather(*self.restarts)
        await self.supervise()
        for service in self.services.values():
            if not service.running:
                service.start()
        await asyncio.gather(*(wait_healthy(s) for s in self.services.values() if s.port is not None))


# --- the checks ---------------------------------------------------------------------------------


@dataclass
class Finding:
    counts: Counter[str] = field(default_factory=Counter)
    details: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, detail: str) -> None:
        self.counts[kind] += 1
        self.details.setdefault(kind, []).append(detail)


async def read_store(database_url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            tasks = [dict(row) for row in (await conn.execute(text(
                "SELECT id, account_id, model, state, num_images, credits_reserved, credits_consumed, result, "
                "fail_code, claims, files_deleted FROM tasks"))).mappings()]
            ledger = [dict(row) for row in (await conn.execute(text(
                "SELECT id, account_id, task_id, kind, amount FROM credit_ledger ORDER BY id"))).mappings()]
            accounts = [dict(row) for row in (await conn.execute(text(
                "SELECT id, name, balance FROM accounts"))).mappings()]
    finally:
        await engine.dispose()
    return tasks, ledger, accounts


async def count_unfinished(database_url: str) -> int:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(text(
                "SELECT count(*) FROM tasks WHERE state IN ('waiting', 'queuing', 'generating')"))).scalar_one())
    finally:
        await engine.dispose()


def claim_dirs_on_disk(files_dir: Path) -> dict[str, set[str]]:
    """task id -> the claim directories (<claim>-<token>) under results/<taskId>/."""
    found: dict[str, set[str]] = {}
    results = files_dir / "results"
    if results.is_dir():
        for task_dir in results.iterdir():
            if task_dir.is_dir():
                found[task_dir.name] = {sub.name for sub in task_dir.iterdir() if sub.is_dir()}
    return found


def whole_png(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            head = file.read(8)
            file.seek(max(0, path.stat().st_size - 8))
            tail = file.read(8)
    except OSError:
        return False
    return head == PNG_HEAD and tail == PNG_TAIL


def verify(tasks: list[dict[str, Any]], ledger: list[dict[str, Any]], accounts: list[dict[str, Any]],
           files_dir: Path, load: Load) -> tuple[Finding, dict[str, Any]]:
    finding = Finding()
    by_id = {task["id"]: task for task in tasks}
    info: dict[str, Any] = {}

    # lost: accepted and missing, or still unfinished
    for task_id in load.accepted:
        if task_id not in by_id:
            finding.add("lost", f"{task_id}: accepted (code 200) but not in the store")
    for task in tasks:
        if task["state"] not in TERMINAL:
            finding.add("lost", f"{task['id']}: stuck in {task['state']} after the settle time "
                                f"(claims {task['claims']})")

    # money, per task
    rows_by_task: dict[str, list[dict[str, Any]]] = {}
    for row in ledger:
        if row["task_id"] is not None:
            rows_by_task.setdefault(row["task_id"], []).append(row)
    for task_id in rows_by_task.keys() - by_id.keys():
        finding.add("ledger_mismatches", f"{task_id}: ledger rows for a task that does not exist: "
                                         f"{[(r['kind'], r['amount']) for r in rows_by_task[task_id]]}")
    for task in tasks:
        task_id, state = task["id"], task["state"]
        rows = rows_by_task.get(task_id, [])
        kinds = Counter(row["kind"] for row in rows)
        reserved, consumed = int(task["credits_reserved"]), int(task["credits_consumed"])
        expected = PRICES.get(task["model"], 0) * int(task["num_images"])
        refunded = sum(int(row["amount"]) for row in rows if row["kind"] == "refund")
        reserve_amount = -sum(int(row["amount"]) for row in rows if row["kind"] == "reserve")
        charged_twice = []
        if kinds["reserve"] > 1:
            charged_twice.append(f"{kinds['reserve']} reserve rows")
        if kinds["refund"] > 1:
            charged_twice.append(f"{kinds['refund']} refund rows")
        if state == "success" and kinds["refund"]:
            charged_twice.append("succeeded and refunded")
        if kinds["refund"] and consumed:
            charged_twice.append(f"refunded and charged ({consumed} consumed)")
        if charged_twice:
            finding.add("double_charges", f"{task_id} ({state}): {'; '.join(charged_twice)}")
        other = set(kinds) - {"reserve", "refund"}
        problems = []
        if other:
            problems.append(f"unexpected ledger kinds {sorted(other)}")
        if reserved != expected:
            problems.append(f"reserved {reserved}, price x images is {expected}")
        if kinds["reserve"] == 0 and reserved:
            problems.append("no reserve row")
        elif kinds["reserve"] == 1 and reserve_amount != reserved:
            problems.append(f"reserve row of {reserve_amount}, credits_reserved {reserved}")
        if state == "success" and consumed != reserved:
            problems.append(f"succeeded with consumed {consumed} != reserved {reserved}")
        if state == "fail":
            if consumed:
                problems.append(f"failed with consumed {consumed}")
            if reserved and kinds["refund"] == 0:
                problems.append("failed without a refund")
            elif kinds["refund"] == 1 and refunded != reserved:
                problems.append(f"refund of {refunded} for a reservation of {reserved}")
        if state in UNFINISHED and (consumed or kinds["refund"]):
            problems.append(f"unfinished with consumed {consumed}, {kinds['refund']} refunds")
        if problems:
            finding.add("ledger_mismatches", f"{task_id} ({state}): {'; '.join(problems)}")

    # money, per account
    for account in accounts:
        rows = [row for row in ledger if row["account_id"] == account["id"]]
        total = sum(int(row["amount"]) for row in rows)
        if int(account["balance"]) != total:
            finding.add("ledger_mismatches", f"account {account['name']}: balance {account['balance']} "
                                             f"!= sum of ledger {total}")
        granted = sum(int(row["amount"]) for row in rows if row["kind"] in ("grant", "adjust"))
        held = sum(int(task["credits_reserved"]) for task in tasks
                   if task["account_id"] == account["id"] and task["state"] != "fail")
        if int(account["balance"]) != granted - held:
            finding.add("ledger_mismatches", f"account {account['name']}: balance {account['balance']} != granted "
                                             f"{granted} - reservations of unfailed tasks {held}")

    # files
    on_disk = claim_dirs_on_disk(files_dir)
    rerun = 0
    for task in tasks:
        if task["state"] != "success":
            continue
        task_id = task["id"]
        result = json.loads(task["result"] or "{}")
        keys = list(result.get("files", []))
        if len(keys) != int(task["num_images"]):
            finding.add("missing_files", f"{task_id}: {len(keys)} result files for {task['num_images']} images")
        claims = set()
        for key in keys:
            parts = key.split("/")
            if len(parts) != 4 or parts[0] != "results" or parts[1] != task_id:
                finding.add("run_twice", f"{task_id}: result key {key!r} is not under results/{task_id}/<claim>/")
                continue
            claims.add(parts[2])
            claim_number = parts[2].split("-", 1)[0]
            if not claim_number.isdigit() or int(claim_number) > int(task["claims"]):
                finding.add("run_twice", f"{task_id}: result from claim {parts[2]!r}, task claimed "
                                         f"{task['claims']} times")
            if not task["files_deleted"] and not whole_png(files_dir / key):
                state = "absent" if not (files_dir / key).exists() else "not a whole PNG"
                finding.add("missing_files", f"{task_id}: {key} {state}")
        if len(claims) > 1:
            finding.add("run_twice", f"{task_id}: result files from {len(claims)} claims: {sorted(claims)}")
        if len(on_disk.get(task_id, set()) - claims) > 0:
            rerun += 1
    info["succeeded_with_unreferenced_claim_dirs"] = rerun
    info["result_dirs_of_failed_tasks"] = sum(1 for task in tasks
                                              if task["state"] == "fail" and on_disk.get(task["id"]))
    info["result_dirs_without_task"] = len(on_disk.keys() - by_id.keys())
    info["recovered_tasks"] = sum(1 for task in tasks if int(task["claims"]) > 1)

    # what the clients saw against what the store holds
    for task_id, seen in load.accepted.items():
        task = by_id.get(task_id)
        if seen.unknown_after_accept:
            finding.add("state_regressions", f"{task_id}: recordInfo answered 'recordInfo is null' "
                                             f"{seen.unknown_after_accept} times after createTask accepted it")
        for regression in seen.regressions:
            finding.add("state_regressions", f"{task_id}: {regression}")
        final_seen = next((state for state in reversed(seen.states) if state in TERMINAL), None)
        if task is None or final_seen is None:
            continue
        if task["state"] != final_seen:
            finding.add("state_regressions", f"{task_id}: a client saw {final_seen}, the store says {task['state']}")
        if final_seen == "success" and seen.result_keys is not None and not task["files_deleted"]:
            stored = json.loads(task["result"] or "{}").get("files", [])
            if seen.result_keys != stored:
                finding.add("run_twice", f"{task_id}: a client saw results {seen.result_keys}, the store holds "
                                         f"{stored}")
    return finding, info


# --- the run ------------------------------------------------------------------------------------


def child_env(data_dir: Path, database_url: str | None, lease_seconds: float, max_claims: int) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("SAFELIGHT_")}
    env.update(PYTHONUNBUFFERED="1", SAFELIGHT_DATA_DIR=str(data_dir), SAFELIGHT_LEASE_SECONDS=str(lease_seconds),
               SAFELIGHT_MAX_CLAIMS=str(max_claims), SAFELIGHT_BOOTSTRAP_DEMO_KEY="false")
    if database_url:
        env["SAFELIGHT_DATABASE_URL"] = database_url
    return env


def create_key(env: dict[str, str], credits: int) -> str:
    """`safelight keys create` (which also migrates the store, before any server starts); the key."""
    done = subprocess.run([sys.executable, "-m", "safelight.cli", "keys", "create", "--name", "chaos",
                           "--credits", str(credits)], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not lines[-1].startswith("sl_"):
        raise RuntimeError(f"keys create failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return lines[-1].strip()


@contextlib.asynccontextmanager
async def postgres_database(admin_url: str):
    import asyncpg

    try:
        admin = await asyncio.wait_for(asyncpg.connect(admin_url), 5)
    except Exception as exc:
        raise RuntimeError(f"PostgreSQL is not reachable at {admin_url}: {exc}") from None
    name = f"safelight_chaos_{uuid.uuid4().hex[:12]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        try:
            yield f"{base}/{name}"
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def build_services(mode: str, env: dict[str, str], logs: Path) -> list[Service]:
    python = [sys.executable, "-m", "safelight.cli"]
    services = []

    def api(name: str, *extra: str) -> Service:
        port = free_port()
        return Service(name, [*python, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                              *extra], env, logs / f"{name}.log", port=port)

    if mode == "sqlite":
        services.append(api("serve"))
    else:
        services += [api("api-1", "--no-worker"), api("api-2", "--no-worker")]
        services += [Service(name, [*python, "worker", "--log-level", "warning"], env, logs / f"{name}.log")
                     for name in ("worker-1", "worker-2")]
    return services


async def chaos_run(options: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rng = random.Random(options.seed)
    data_dir, logs = workdir / "data", workdir / "logs"
    data_dir.mkdir()
    logs.mkdir()
    async with contextlib.AsyncExitStack() as stack:
        database_url = None
        if options.mode == "postgres":
            database_url = await stack.enter_async_context(postgres_database(options.pg_admin_url))
        env = child_env(data_dir, database_url, options.lease_seconds, options.max_claims)
        key = await asyncio.to_thread(create_key, env, 10**12)
        store_url = database_url or f"sqlite+aiosqlite:///{(data_dir / 'safelight.db').resolve()}"

        services = build_services(options.mode, env, logs)
        stack.callback(lambda: [service.kill() for service in services])
        for service in services:
            service.start()
        await asyncio.gather(*(wait_healthy(s) for s in services if s.port is not None))
        urls = [service.url for service in services if service.port is not None]
        schedule = kill_schedule(rng, [service.name for service in services], options.kills, options.seconds)
        say(f"chaos: mode {options.mode}, {options.seconds:g} s, {options.kills} kills, {options.clients} clients, "
            f"seed {options.seed}, lease {options.lease_seconds:g} s, max claims {options.max_claims}; logs in {logs}")

        load = Load()
        chaos = Chaos(services)
        give_up = asyncio.Event()
        stop_creating = chaos.started + options.seconds
        clients = [asyncio.create_task(run_client(index, urls, key, random.Random(rng.random()), load,
                                                  stop_creating, give_up))
                   for index in range(options.clients)]
        supervisor = asyncio.create_task(chaos.supervise_forever())
        try:
            await chaos.run(schedule)
            await asyncio.sleep(max(0.0, stop_creating - time.monotonic()))
            load_seconds = time.monotonic() - chaos.started
            chaos.note("load over; no more kills: restarting anything down and letting the tasks settle")
            settle_started = time.monotonic()
            await chaos.bring_all_up()
            deadline = settle_started + options.settle_seconds
            unfinished = -1
            while time.monotonic() < deadline:
                unfinished = await count_unfinished(store_url)
                if unfinished == 0 and all(client.done() for client in clients):
                    break
                await asyncio.sleep(0.25)
            settle_seconds = time.monotonic() - settle_started
            chaos.note(f"settled in {settle_seconds:.1f} s ({unfinished} unfinished)")
            give_up.set()
            await asyncio.gather(*clients)
        finally:
            give_up.set()
            supervisor.cancel()
            for client in clients:
                client.cancel()
            await asyncio.gather(supervisor, *clients, return_exceptions=True)
            for service in services:  # nothing may change while the store and the files are read
                service.kill()

        tasks, ledger, accounts = await read_store(store_url)
        finding, info = verify(tasks, ledger, accounts, data_dir / "files", load)

    states = Counter(task["state"] for task in tasks)
    state_of = {task["id"]: task["state"] for task in tasks}
    fail_codes = Counter(task["fail_code"] for task in tasks if task["state"] == "fail")
    stored_unacknowledged = len({task["id"] for task in tasks} - load.accepted.keys())
    report: dict[str, Any] = {
        "mode": options.mode, "seconds": options.seconds, "kills": options.kills, "clients": options.clients,
        "seed": options.seed, "lease_seconds": options.lease_seconds, "max_claims": options.max_claims,
        "accepted": len(load.accepted),
        "succeeded": sum(1 for task_id in load.accepted if state_of.get(task_id) == "success"),
        "failed": sum(1 for task_id in load.accepted if state_of.get(task_id) == "fail"),
        **{kind: finding.counts.get(kind, 0) for kind in FAILING},
        "stored_tasks": len(tasks), "store_states": dict(states), "fail_codes": dict(fail_codes),
        "stored_without_answer": stored_unacknowledged, "create_unknown": load.create_unknown,
        "create_refused": load.create_refused, "rejected": dict(load.rejected), "poll_errors": dict(load.poll_errors),
        "downloads": load.downloads, "download_errors": dict(load.download_errors),
        **info,
        "kills_by_process": {service.name: service.kills for service in services},
        "starts_by_process": {service.name: service.starts for service in services},
        "unexpected_exits": {service.name: service.crashes for service in services if service.crashes},
        "load_seconds": round(load_seconds, 1), "settle_seconds": round(settle_seconds, 1),
        "details": {kind: lines[:20] for kind, lines in finding.details.items()},
    }
    return report


def print_table(report: dict[str, Any]) -> None:
    title = (f"Safelight chaos run: --mode {report['mode']} --seconds {report['seconds']:g} --kills {report['kills']} "
             f"--clients {report['clients']} --seed {report['seed']} --lease-seconds {report['lease_seconds']:g}"
             f" --max-claims {report['max_claims']}")
    print(title)
    print("-" * len(title))
    rows = [
        ("accepted (createTask code 200)", report["accepted"]),
        ("succeeded", report["succeeded"]),
        ("failed", report["failed"], _codes(report["fail_codes"])),
        ("lost", report["lost"]),
        ("run twice", report["run_twice"]),
        ("double charges", report["double_charges"]),
        ("ledger mismatches", report["ledger_mismatches"]),
        ("missing result files", report["missing_files"]),
        ("state regressions (API vs store)", report["state_regressions"]),
    ]
    for row in rows:
        flag = "  <-- FAIL" if row[0].split(" (")[0].replace(" ", "_") in FAILING and row[1] else ""
        note = f"  ({row[2]})" if len(row) > 2 and row[2] else ""
        print(f"  {row[0]:<38}{row[1]:>8}{note}{flag}")
    print("  informational:")
    info = [
        ("kills (by process)", _codes(report["kills_by_process"])),
        ("creates with a broken connection", f"{report['create_unknown']} (stored anyway: "
                                             f"{report['stored_without_answer']})"),
        ("creates refused (process down)", report["create_refused"]),
        ("creates rejected (code != 200)", _codes(report["rejected"]) or 0),
        ("tasks recovered after a crash", f"{report['recovered_tasks']} (claimed more than once)"),
        ("succeeded, unreferenced claim dirs", report["succeeded_with_unreferenced_claim_dirs"]),
        ("result dirs of failed tasks", report["result_dirs_of_failed_tasks"]),
        ("downloads via signed URL", f"{report['downloads']} (errors: {_codes(report['download_errors']) or 0})"),
        ("poll errors (process down)", _codes(report["poll_errors"]) or 0),
        ("exits nobody asked for", sum(len(v) for v in report["unexpected_exits"].values())),
        ("load / settle time", f"{report['load_seconds']:g} s / {report['settle_seconds']:g} s"),
    ]
    for name, value in info:
        print(f"    {name:<36}{value}")
    for kind, lines in report["details"].items():
        print(f"  {kind}:")
        for line in lines:
            print(f"    {line}")
    for name, crashes in report["unexpected_exits"].items():
        for crash in crashes:
            print(f"  {name} exited by itself: {crash}")


def _codes(counts: dict[str, int]) -> str:
    return ", ".join(f"{name}: {count}" for name, count in sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--seconds", type=float, default=60.0, help="load time, kills included (default 60)")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs during the load (default 20)")
    parser.add_argument("--clients", type=int, default=6, help="concurrent clients (default 6)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lease-seconds", type=float, default=3.0,
                        help="SAFELIGHT_LEASE_SECONDS of the processes (default 3: quick recovery)")
    parser.add_argument("--max-claims", type=int, default=3,
                        help="SAFELIGHT_MAX_CLAIMS (default 3); 1 fails (and refunds) every task a kill interrupts")
    parser.add_argument("--settle-seconds", type=float, default=90.0,
                        help="how long every task has to end once the killing stops (default 90)")
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL,
                        help="PostgreSQL to create the run's database on (env SAFELIGHT_TEST_PG)")
    parser.add_argument("--keep", action="store_true", help="keep the data dir and the process logs")
    parser.add_argument("--json", action="store_true", help="also print the report as one JSON line, last")
    options = parser.parse_args(argv)

    # SIGTERM (a CI timeout, a `kill`) unwinds like Ctrl-C: the finally blocks kill every child.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="safelight-chaos-"))
    if not options.keep:
        _CLEANUP_DIRS.append(workdir)
    try:
        report = asyncio.run(chaos_run(options, workdir))
    except RuntimeError as exc:
        print(f"chaos: the run could not be made: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("chaos: interrupted; every process it started is killed", file=sys.stderr)
        return 130
    finally:
        _cleanup()
        signal.signal(signal.SIGTERM, previous)
    print_table(report)
    if options.keep:
        print(f"  data and logs kept in {workdir}")
    if options.json:
        print(json.dumps(report, sort_keys=True))
    return 1 if any(report[kind] for kind in FAILING) else 0


if __name__ == "__main__":
    sys.exit(main())
