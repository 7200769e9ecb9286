"""API benchmark: createTask throughput and latency against the stack's own limit, side by side.

    .venv/bin/python bench/api.py [--seconds 10] [--clients 32]

Measures, in one run on this machine:
  1. a bare ASGI JSON endpoint served by the same uvicorn set-up (the limit of the stack);
  2. createTask on the embedded server (SQLite WAL, sandbox backend, in-process worker);
  3. createTask -> success latency with the sandbox backend;
  4. overload: `--overload-clients` (200) clients creating tasks as fast as they can for
     `--overload-seconds`, with the queue caps in force, while one more client polls recordInfo;
     createTask latency is reported apart for accepted (200) and refused (429) answers.
Each server runs in its own process; the load generator is a small keep-alive HTTP/1.1 client on
raw asyncio streams, so the client costs far less than the server it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FASTAPI_APP = '''
from fastapi import FastAPI
app = FastAPI()
@app.post("/")
async def bare():
    return {"code": 200, "msg": "success", "data": {"taskId": "0" * 32}}
'''
BARE_APP = '''
import json
BODY = json.dumps({"code": 200, "msg": "success", "data": {"taskId": "0" * 32}}).encode()
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})
'''


class Connection:
    """One keep-alive HTTP/1.1 connection; enough protocol for JSON requests and responses."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.retry_after: float | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}",
                 "Content-Type: application/json"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
        found = re.search(rb"(?i)retry-after: (\d+)", head)
        self.retry_after = float(found.group(1)) if found else None
        return await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def load(port: int, method: str, path: str, body: bytes, headers: dict, clients: int, seconds: float):
    latencies: list[float] = []
    failures = 0
    stop_at = time.perf_counter() + seconds

    async def one_client() -> None:
        nonlocal failures
        conn = Connection("127.0.0.1", port)
        await conn.open()
        try:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                response = await conn.request(method, path, body, headers)
                latencies.append(time.perf_counter() - started)
                if b'"code":200' not in response.replace(b" ", b""):
                    failures += 1
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "failures": failures,
    }


def start(args: list[str], env: dict, wait_for: str) -> subprocess.Popen:
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    output = ""
    deadline = time.monotonic() + 60
    while wait_for not in output:
        line = process.stdout.readline()
        if not line and process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start:\n{output}")
        output += line
    process.startup_output = output
    return process


async def end_to_end(port: int, key: str, count: int) -> dict:
    conn = Connection("127.0.0.1", port)
    await conn.open()
    headers = {"Authorization": f"Bearer {key}"}
    body = json.dumps({"model": "z-image", "input": {"prompt": "bench", "aspect_ratio": "1:1"}}).encode()
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        task_id = json.loads(await conn.request("POST", "/api/v1/jobs/createTask", body, headers))["data"]["taskId"]
        while True:
            data = json.loads(await conn.request("GET", f"/api/v1/jobs/recordInfo?taskId={task_id}", b"",
                                                 headers))["data"]
            if data["state"] in ("success", "fail"):
                break
            await asyncio.sleep(0.002)
        assert data["state"] == "success", data
        latencies.append(time.perf_counter() - started)
    conn.close()
    latencies.sort()
    return {"tasks": count, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)], "mean_ms": 1000 * statistics.mean(latencies)}


async def prefer_wait(port: int, key: str, count: int) -> dict:
    """createTask with `Prefer: wait` -> the finished record in one request, one task at a time; beside
    it the task's own costTime (claim to success) and the sandbox's bare drawing time."""
    conn = Connection("127.0.0.1", port)
    await conn.open()
    headers = {"Authorization": f"Bearer {key}", "Prefer": "wait=60"}
    body = json.dumps({"model": "z-image", "input": {"prompt": "bench", "aspect_ratio": "1:1"}}).encode()
    latencies, cost_times = [], []
    for _ in range(count):
        started = time.perf_counter()
        data = json.loads(await conn.request("POST", "/api/v1/jobs/createTask", body, headers))["data"]
        latencies.append(time.perf_counter() - started)
        assert data.get("state") == "success", data
        cost_times.append(data["costTime"] / 1000)
    conn.close()
    latencies.sort()
    cost_times.sort()
    return {"tasks": count, "p50_ms": 1000 * latencies[count // 2], "p99_ms": 1000 * latencies[int(count * 0.99)],
            "cost_p50_ms": 1000 * cost_times[count // 2], "draw_ms": 1000 * sandbox_draw_seconds(),
            "draw_zh_ms": 1000 * sandbox_draw_seconds(prompt=CHINESE_PROMPT)}


# 140 characters of Chinese, like two of kie's four seed examples: real glyphs, wrapped by width.
CHINESE_PROMPT = ("创作一幅具有电影质感的写实风格中景镜头,呈现 90 年代末独立电影的怀旧温情氛围。"
                  "画面主角是一位染着亮粉色头发、满脸雀斑的年轻女孩,她直视镜头,眼神专注。"
                  "光线为柔和的黄金时刻阳光,透过蒙着薄尘的窗户洒入,形成镜头光晕,照亮空气中漂浮的尘埃。"
                  "背景是一间模糊的凌乱卧室,墙上贴满海报。")


def sandbox_draw_seconds(repeats: int = 20, prompt: str = "bench") -> float:
    """The sandbox's own work for one 1024x1024 PNG (median), in this process."""
    from safelight.backends import Job
    from safelight.backends.sandbox import draw_preview
    from safelight.catalog import get_model, validate_input

    spec = get_model("z-image")
    assert spec is not None
    params = spec.to_params(validate_input(spec, {"prompt": prompt, "aspect_ratio": "1:1"}))
    job = Job(task_id="bench", params=params, seeds=[1])
    times = []
    for seed in range(repeats):
        started = time.perf_counter()
        draw_preview(job, 1024, 1024, seed)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def overload(port: int, key: str, clients: int, seconds: float, *, honour_retry_after: bool = False) -> dict:
    """Many clients creating at once; the caps turn the excess into fast 429s. A separate client
    polls recordInfo of one task the whole time, to show reads stay responsive. With
    `honour_retry_after`, a refused client waits as the Retry-After header asks (at most 5 s)."""
    headers = {"Authorization": f"Bearer {key}"}
    body = json.dumps({"model": "z-image", "input": {"prompt": "overload", "aspect_ratio": "1:1"}}).encode()
    by_code: dict[int, list[float]] = {}
    reads: list[float] = []
    stop_at = time.perf_counter() + seconds

    probe = Connection("127.0.0.1", port)
    await probe.open()
    task_id = json.loads(await probe.request("POST", "/api/v1/jobs/createTask", body, headers))["data"]["taskId"]

    async def creator() -> None:
        conn = Connection("127.0.0.1", port)
        await conn.open()
        try:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    answer = await conn.request("POST", "/api/v1/jobs/createTask", body, headers)
                except (asyncio.IncompleteReadError, ConnectionError):
                    # uvicorn closes a keep-alive connection idle for 5 s (a client waiting out
                    # Retry-After): reconnect, as an HTTP client library would.
                    conn.close()
                    await conn.open()
                    started = time.perf_counter()
                    answer = await conn.request("POST", "/api/v1/jobs/createTask", body, headers)
                code = json.loads(answer)["code"]
                by_code.setdefault(code, []).append(time.perf_counter() - started)
                if honour_retry_after and code == 429:
                    await asyncio.sleep(min(conn.retry_after or 1.0, 5.0, max(0.0, stop_at - time.perf_counter())))
        finally:
            conn.close()

    async def reader() -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await probe.request("GET", f"/api/v1/jobs/recordInfo?taskId={task_id}", b"", headers)
            reads.append(time.perf_counter() - started)
            await asyncio.sleep(0.05)

    await asyncio.gather(reader(), *(creator() for _ in range(clients)))
    probe.close()

    def summary(values: list[float]) -> dict:
        values = sorted(values)
        if not values:
            return {"count": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        return {"count": len(values), "p50_ms": 1000 * values[len(values) // 2],
                "p99_ms": 1000 * values[int(len(values) * 0.99)], "max_ms": 1000 * values[-1]}

    return {"codes": {code: summary(values) for code, values in sorted(by_code.items())},
            "all": summary([v for values in by_code.values() for v in values]), "recordInfo": summary(reads)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--e2e-tasks", type=int, default=50)
    parser.add_argument("--overload-clients", type=int, default=200)
    parser.add_argument("--overload-seconds", type=float, default=25.0)
    parser.add_argument("--max-queued-per-account", type=int, default=1000,
                        help="SAFELIGHT_MAX_QUEUED_PER_ACCOUNT during the overload run")
    options = parser.parse_args()
    python = sys.executable
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    uvicorn_flags = ["--log-level", "warning", "--no-access-log"]

    with tempfile.TemporaryDirectory() as tmp:
        baselines = {}
        for name, source in (("bare_asgi", BARE_APP), ("bare_fastapi", FASTAPI_APP)):
            (Path(tmp) / f"{name}.py").write_text(source)
            bare = start([python, "-m", "uvicorn", f"{name}:app", "--port", "8901", "--app-dir", tmp,
                          *uvicorn_flags, "--log-level", "info"], env, "Uvicorn running")
            try:
                baselines[name] = asyncio.run(load(8901, "POST", "/", b"{}", {}, options.clients, options.seconds))
            finally:
                bare.terminate()
                bare.wait()

        body = json.dumps({"model": "z-image", "input": {"prompt": "a benchmark", "aspect_ratio": "1:1"}}).encode()
        # API-only replica (the scale-out shape: workers elsewhere), then the embedded server whose
        # in-process worker renders sandbox images on the same two cores while the load runs.
        # The throughput runs measure createTask itself: the queue caps are lifted so every request creates.
        uncapped = {"SAFELIGHT_MAX_QUEUED_PER_ACCOUNT": "100000000", "SAFELIGHT_MAX_QUEUED": "100000000"}
        server_env = {**env, "SAFELIGHT_DATA_DIR": str(Path(tmp) / "api-only"), "SAFELIGHT_DEMO_CREDITS": "100000000",
                      **uncapped}
        server = start([python, "-m", "safelight.cli", "serve", "--port", "8903", "--log-level", "warning",
                        "--no-worker"], server_env, "SAFELIGHT_API_KEY=")
        key = re.search(r"SAFELIGHT_API_KEY=(sl_[\w-]+)", server.startup_output).group(1)
        time.sleep(1.0)
        try:
            api_only_result = asyncio.run(load(8903, "POST", "/api/v1/jobs/createTask", body,
                                               {"Authorization": f"Bearer {key}"}, options.clients, options.seconds))
        finally:
            server.terminate()
            server.wait()

        server_env = {**env, "SAFELIGHT_DATA_DIR": str(Path(tmp) / "data"), "SAFELIGHT_DEMO_CREDITS": "100000000",
                      **uncapped}
        server = start([python, "-m", "safelight.cli", "serve", "--port", "8902", "--log-level", "warning"],
                       server_env, "SAFELIGHT_API_KEY=")
        key = re.search(r"SAFELIGHT_API_KEY=(sl_[\w-]+)", server.startup_output).group(1)
        time.sleep(1.0)
        try:
            create_result = asyncio.run(load(8902, "POST", "/api/v1/jobs/createTask", body,
                                             {"Authorization": f"Bearer {key}"}, options.clients, options.seconds))
            # Let the worker drain the backlog the load test created before timing single tasks.
            time.sleep(1.0)
            drain_deadline = time.monotonic() + 600
            import httpx

            while time.monotonic() < drain_deadline:
                # safelight_queue_tasks (refreshed from the store every few seconds): nothing unfinished left.
                scrape = httpx.get("http://127.0.0.1:8902/metrics").text
                queued = [line for line in scrape.splitlines() if line.startswith("safelight_queue_tasks{")]
                if queued and all(float(line.rsplit(" ", 1)[1]) == 0 for line in queued) or (
                        "safelight_queue_tasks" in scrape and not queued):
                    break
                time.sleep(1)
            e2e = asyncio.run(end_to_end(8902, key, options.e2e_tasks))
            waited = asyncio.run(prefer_wait(8902, key, options.e2e_tasks))
        finally:
            server.terminate()
            server.wait()

        server_env = {**env, "SAFELIGHT_DATA_DIR": str(Path(tmp) / "overload"), "SAFELIGHT_DEMO_CREDITS": "100000000",
                      "SAFELIGHT_MAX_QUEUED_PER_ACCOUNT": str(options.max_queued_per_account)}
        server = start([python, "-m", "safelight.cli", "serve", "--port", "8904", "--log-level", "warning"],
                       server_env, "SAFELIGHT_API_KEY=")
        key = re.search(r"SAFELIGHT_API_KEY=(sl_[\w-]+)", server.startup_output).group(1)
        time.sleep(1.0)
        try:
            overloaded = asyncio.run(overload(8904, key, options.overload_clients, options.overload_seconds))
            polite = asyncio.run(overload(8904, key, options.overload_clients, options.overload_seconds,
                                          honour_retry_after=True))
        finally:
            server.terminate()
            server.wait()

    print(f"machine: {os.cpu_count()} cores; {options.clients} concurrent clients; {options.seconds:g} s per run")
    print(f"{'endpoint':<34}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    rows = (("bare ASGI JSON (uvicorn limit)", baselines["bare_asgi"]),
            ("bare FastAPI JSON route", baselines["bare_fastapi"]),
            ("createTask (SQLite, API only)", api_only_result), ("createTask (SQLite, worker on)", create_result))
    for name, result in rows:
        print(f"{name:<34}{result['rps']:>10.0f}{result['p50_ms']:>10.2f}{result['p99_ms']:>10.2f}"
              f"{result['failures']:>8}")
    for name in ("bare_asgi", "bare_fastapi"):
        print(f"createTask (API only) / {name} throughput: "
              f"{api_only_result['rps'] / baselines[name]['rps']:.0%}  (target >= 50%)")
    print(f"createTask p99: API only {api_only_result['p99_ms']:.1f} ms, worker on {create_result['p99_ms']:.1f} ms"
          "  (target < 50 ms)")
    print(f"createTask -> success, sandbox, {e2e['tasks']} tasks one at a time: p50 {e2e['p50_ms']:.1f} ms, "
          f"p99 {e2e['p99_ms']:.1f} ms, mean {e2e['mean_ms']:.1f} ms")
    print(f"createTask with Prefer: wait -> success, sandbox, {waited['tasks']} tasks one at a time: "
          f"p50 {waited['p50_ms']:.1f} ms, p99 {waited['p99_ms']:.1f} ms; the tasks' own costTime p50 "
          f"{waited['cost_p50_ms']:.1f} ms; drawing one 1024x1024 preview {waited['draw_ms']:.1f} ms "
          f"({waited['draw_zh_ms']:.1f} ms with a Chinese prompt)")
    for title, result_set in (("clients ignoring Retry-After", overloaded), ("clients honouring Retry-After", polite)):
        print(f"overload, {title}: {options.overload_clients} clients for {options.overload_seconds:g} s, SQLite "
              f"with the worker on, SAFELIGHT_MAX_QUEUED_PER_ACCOUNT={options.max_queued_per_account}")
        print(f"  {'answer':<22}{'count':>8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
        rows_overload = [(f"createTask code {code}", result) for code, result in result_set["codes"].items()]
        rows_overload += [("createTask, all", result_set["all"]), ("recordInfo (1 reader)", result_set["recordInfo"])]
        for name, result in rows_overload:
            print(f"  {name:<22}{result['count']:>8}{result['p50_ms']:>10.1f}{result['p99_ms']:>10.1f}"
                  f"{result['max_ms']:>10.1f}")
        print(f"  createTask p99 {result_set['all']['p99_ms']:.0f} ms  (target < 500 ms)")


if __name__ == "__main__":
    main()
