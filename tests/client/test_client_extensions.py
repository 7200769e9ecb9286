"""The SDK on Safelight's extensions (issue 13), against real servers on loopback: `run()` on
`Prefer: wait` and the event stream, `stream()`, `cancel()`, `list_tasks()`, idempotent creates and the
retry they make safe; and the fallbacks where a server lacks them (the fake kie.ai, kie.ai's host)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from safelight.client import (
    APIConnectionError,
    AsyncClient,
    Client,
    GenerationFailedError,
    NotSupportedError,
    Task,
    TaskEvent,
    TaskNotFoundError,
    ValidationError,
    WaitTimeoutError,
    ZImageInput,
    _sync,
)
from tests.client.conftest import FAST, ThreadedSafelight
from tests.fake_kie import CREATE, RECORD

STREAM = "/api/v1/jobs/stream"
Z = {"prompt": "extensions", "aspect_ratio": "1:1"}


class Recorder:
    """An httpx client whose requests are remembered: (method, path, headers)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, httpx.Headers]] = []
        self.clients: list[httpx.Client | httpx.AsyncClient] = []

    def record(self, request: httpx.Request) -> None:
        self.requests.append((request.method, request.url.path, request.headers))

    def client(self) -> httpx.Client:
        self.clients.append(client := httpx.Client(timeout=60, event_hooks={"request": [self.record]}))
        return client

    def async_client(self) -> httpx.AsyncClient:
        async def record(request: httpx.Request) -> None:
            self.record(request)

        self.clients.append(client := httpx.AsyncClient(timeout=60, event_hooks={"request": [record]}))
        return client

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.requests]


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    recording = Recorder()
    yield recording
    for client in recording.clients:
        if isinstance(client, httpx.AsyncClient):
            await client.aclose()
        else:
            client.close()


def sdk(server: ThreadedSafelight, recorder: Recorder | None = None, **kwargs) -> Client:
    http = recorder.client() if recorder is not None else None
    return Client(server.api_key, server.base_url, http_client=http, **FAST | kwargs)


# --- run(): Prefer: wait, then the stream ----------------------------------------------------------


def test_run_gets_the_result_in_the_create_answer(safelight, recorder):
    with sdk(safelight, recorder) as client:
        started = time.perf_counter()
        task = client.run("z-image", ZImageInput(prompt="held", aspect_ratio="16:9"))
        took_ms = (time.perf_counter() - started) * 1000
    assert task.succeeded and task.result_urls and task.input == {"prompt": "held", "aspect_ratio": "16:9"}
    # One request: createTask held until the task ended. No recordInfo poll, no stream.
    ((method, path, headers),) = recorder.requests
    assert (method, path, headers["prefer"]) == ("POST", "/api/v1/jobs/createTask", "wait=10")
    assert headers["idempotency-key"]
    # Create-to-result overhead beyond the task's own time (measured at ~16 ms; generous for a loaded CI box).
    assert task.cost_time is not None and took_ms - task.cost_time < 250


def test_run_follows_the_stream_when_the_hold_times_out(paced_safelight, recorder):
    seen: list[Task] = []
    with sdk(paced_safelight, recorder) as client:
        task = client.run("z-image", Z, prefer_wait=1, on_progress=seen.append)
    assert task.succeeded and task.progress == 100
    assert recorder.paths() == ["/api/v1/jobs/createTask", STREAM]  # pushed, never polled
    assert recorder.requests[0][2]["prefer"] == "wait=1"
    states = [t.state for t in seen]
    assert states[0] in ("queuing", "generating") and states[-1] == "success"
    progress = [t.progress for t in seen if t.state == "generating"]
    assert progress == sorted(progress) and len(set(progress)) >= 2  # progress events moved the bar


def test_run_with_on_progress_holds_one_second_only(paced_safelight, recorder):
    with sdk(paced_safelight, recorder) as client:
        client.run("z-image", Z, on_progress=lambda task: None)
    assert recorder.requests[0][2]["prefer"] == "wait=1"


def test_run_raises_the_failure_of_a_held_task(idle_safelight):
    with sdk(idle_safelight) as client:
        with pytest.raises(GenerationFailedError) as info:
            client.run("z-image", Z, cancel_after=1, prefer_wait=5)  # Cancel-After ends it inside the hold
    assert info.value.fail_code == "499" and info.value.task is not None and info.value.task.failed
    assert info.value.task_id == info.value.task.task_id


def test_run_times_out_on_the_stream_at_its_deadline(idle_safelight, recorder):
    with sdk(idle_safelight, recorder) as client:
        started = time.monotonic()
        with pytest.raises(WaitTimeoutError) as info:
            client.run("z-image", Z, timeout=2.5, prefer_wait=1)
        took = time.monotonic() - started
    assert 2.4 <= took < 4  # the stream's read is cut at the deadline, not at the next keep-alive (15 s)
    assert info.value.task is not None and info.value.task.state == "waiting" and info.value.task_id
    assert recorder.paths() == ["/api/v1/jobs/createTask", STREAM]


async def test_async_run_gets_the_result_in_the_create_answer(safelight, recorder):
    async with AsyncClient(safelight.api_key, safelight.base_url, http_client=recorder.async_client()) as client:
        task = await client.run("z-image", Z)
    assert task.succeeded and recorder.paths() == ["/api/v1/jobs/createTask"]


async def test_async_run_follows_the_stream(paced_safelight, recorder):
    states: list[str] = []

    async def on_progress(task: Task) -> None:
        states.append(task.state)

    async with AsyncClient(paced_safelight.api_key, paced_safelight.base_url,
                           http_client=recorder.async_client()) as client:
        task = await client.run("z-image", Z, on_progress=on_progress)
        assert task.succeeded and states[-1] == "success" and "generating" in states
        assert recorder.paths() == ["/api/v1/jobs/createTask", STREAM]
        with pytest.raises(WaitTimeoutError):
            await client.run("z-image", {**Z, "prompt": "slow"}, timeout=1.2, prefer_wait=1)


def test_wait_with_stream_follows_an_existing_task(paced_safelight, recorder):
    with sdk(paced_safelight, recorder) as client:
        task_id = client.create_task("z-image", Z)
        task = client.wait(task_id, stream=True)
    assert task.succeeded and recorder.paths() == ["/api/v1/jobs/createTask", STREAM]


# --- run() where there are no extensions: it polls, fast at first ----------------------------------


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    recorded: list[float] = []
    monkeypatch.setattr(_sync.time, "sleep", recorded.append)
    return recorded


def test_run_against_a_server_without_extensions_polls_fast_then_backs_off(kie, client_kwargs, sleeps):
    with Client(**client_kwargs) as client:
        task = client.run("z-image", Z)
        assert task.succeeded
        assert kie.calls(CREATE)[0]["headers"]["prefer"] == "wait=10"  # asked, not honoured:
        assert client._extensions.present is False  # no Preference-Applied, so polls from now on
        assert sleeps[0] < 0.5 and sleeps == sorted(sleeps) and sleeps[1] == pytest.approx(sleeps[0] * 1.5)
        client.run("z-image", Z)
        assert "prefer" not in kie.calls(CREATE)[1]["headers"]


def kie_ai_transport(records: list[httpx.Request]) -> httpx.MockTransport:
    """kie.ai's host, mocked: createTask, then recordInfo generating twice and success."""
    polls = {"n": 0}

    def handle(request: httpx.Request) -> httpx.Response:
        records.append(request)
        if request.url.path == CREATE:
            return httpx.Response(200, json={"code": 200, "msg": "success", "data": {"taskId": "t1"}})
        if request.url.path == RECORD:
            polls["n"] += 1
            state = "success" if polls["n"] >= 3 else "generating"
            result = json.dumps({"resultUrls": ["https://cdn.test/t1.png"]}) if state == "success" else ""
            return httpx.Response(200, json={"code": 200, "msg": "success", "data": {
                "taskId": "t1", "model": "z-image", "state": state, "resultJson": result}})
        return httpx.Response(404, text="Not Found")

    return httpx.MockTransport(handle)


def test_against_kie_ai_nothing_of_the_extensions_is_tried(monkeypatch, sleeps):
    monkeypatch.delenv("SAFELIGHT_BASE_URL", raising=False)
    records: list[httpx.Request] = []
    with httpx.Client(transport=kie_ai_transport(records)) as http, \
            Client("kie-key", "https://api.kie.ai", http_client=http) as client:
        task = client.run("z-image", Z)
        assert task.succeeded and [r.url.path for r in records] == [CREATE, RECORD, RECORD, RECORD]
        assert "prefer" not in records[0].headers and records[0].headers["idempotency-key"]  # harmless there
        assert sleeps[0] < 0.5
        events = list(client.stream("t1"))  # made from polls
        assert [e.kind for e in events] == ["done"]
        records.clear()
        with pytest.raises(NotSupportedError, match="kie.ai has no cancel"):
            client.cancel("t1")
        with pytest.raises(NotSupportedError, match="kie.ai has no task list"):
            next(client.list_tasks())
        assert records == []  # refused without a request


def test_against_kie_ai_a_broken_create_is_not_retried_despite_its_key(monkeypatch, sleeps):
    # kie.ai ignores Idempotency-Key: a second attempt could create a second paid task.
    sent: list[httpx.Request] = []

    def cut(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)

    with httpx.Client(transport=httpx.MockTransport(cut)) as http:
        with Client("kie-key", "https://api.kie.ai", http_client=http) as client, \
                pytest.raises(APIConnectionError):
            client.create_task("z-image", Z)
    assert len(sent) == 1 and sent[0].headers["idempotency-key"] and sleeps == []


# --- stream() --------------------------------------------------------------------------------------


def test_stream_yields_state_progress_and_done(paced_safelight, recorder):
    with sdk(paced_safelight, recorder) as client:
        task_id = client.create_task("z-image", Z)
        events = list(client.stream(task_id))
    kinds = [e.kind for e in events]
    assert kinds[0] == "state" and kinds[-1] == "done" and kinds.count("done") == 1 and "progress" in kinds
    assert isinstance(events[0].data, Task) and events[0].data.state in ("waiting", "queuing", "generating")
    progress = [e for e in events if e.kind == "progress"]
    assert all(isinstance(e.data, int) and e.progress == e.data == e.task.progress for e in progress)
    assert [e.data for e in progress] == sorted(e.data for e in progress)
    done = events[-1]
    assert isinstance(done.data, Task) and done.data.succeeded and done.data.result_urls
    states = [e.data.state for e in events if e.kind == "state"]
    assert len(states) == len(set(states))  # one event per state change
    assert recorder.paths() == ["/api/v1/jobs/createTask", STREAM]


def test_stream_of_a_finished_task_is_one_done_event(safelight):
    with sdk(safelight) as client:
        task = client.run("z-image", Z)
        assert [(e.kind, e.task.state) for e in client.stream(task)] == [("done", "success")]


def test_stream_of_an_unknown_task_raises_not_found(safelight):
    with sdk(safelight) as client, pytest.raises(TaskNotFoundError) as info:
        list(client.stream("0" * 32))
    assert info.value.task_id == "0" * 32


def test_stream_timeout(idle_safelight):
    with sdk(idle_safelight) as client:
        task_id = client.create_task("z-image", Z)
        events: list[TaskEvent] = []
        started = time.monotonic()
        with pytest.raises(WaitTimeoutError):
            for event in client.stream(task_id, timeout=1.0):
                events.append(event)
        assert 0.9 < time.monotonic() - started < 3
    assert [(e.kind, e.task.state) for e in events] == [("state", "waiting")]
    assert events[0].task.raw["queuePosition"] == 0


def test_stream_reopens_a_broken_connection_without_repeating_events(paced_safelight):
    """The connection is cut under the stream; the SDK reopens it and the server's repeated state is
    not passed on twice."""
    with CuttingProxy(paced_safelight.base_url, cut_stream_after=3) as proxy:
        with Client(paced_safelight.api_key, proxy.url, **FAST) as client:
            task_id = client.create_task("z-image", Z)
            events = list(client.stream(task_id))
    assert proxy.streams_cut == 1 and proxy.stream_requests >= 2
    assert events[-1].kind == "done" and events[-1].task.succeeded
    states = [e.task.state for e in events if e.kind == "state"]
    assert len(states) == len(set(states))


async def test_async_stream(paced_safelight):
    async with AsyncClient(paced_safelight.api_key, paced_safelight.base_url, **FAST) as client:
        task_id = await client.create_task("z-image", Z)
        events = [event async for event in client.stream(task_id)]
        assert events[0].kind == "state" and events[-1].kind == "done" and events[-1].task.succeeded
        assert any(e.kind == "progress" and isinstance(e.data, int) for e in events)
        # Cancelled while we follow: the stream ends with its `done`, a failure, not an exception.
        task_id = await client.create_task("z-image", Z)
        seen: list[TaskEvent] = []
        first = asyncio.Event()

        async def follow() -> None:
            async for event in client.stream(task_id):
                seen.append(event)
                first.set()

        following = asyncio.create_task(follow())
        await asyncio.wait_for(first.wait(), 10)
        cancelled = await client.cancel(task_id)
        await asyncio.wait_for(following, 10)
    assert cancelled.failed and seen[-1].kind == "done" and seen[-1].task.fail_code == "499"


def test_stream_against_a_server_without_it_is_made_from_polls(kie, client_kwargs, recorder):
    with Client(**client_kwargs, http_client=recorder.client()) as client:
        task_id = client.create_task("z-image", Z)
        events = list(client.stream(task_id, poll=0.01, max_poll=0.02))
        assert [(e.kind, e.task.state) for e in events] == [
            ("state", "waiting"), ("state", "queuing"), ("state", "generating"), ("progress", "generating"),
            ("done", "success")]
        assert [e.data for e in events if e.kind == "progress"] == [80] and events[2].task.progress == 40
        assert recorder.paths().count(STREAM) == 1  # asked once (HTTP 404), then remembered
        list(client.stream(task_id, poll=0.01))
        assert recorder.paths().count(STREAM) == 1


# --- cancel() --------------------------------------------------------------------------------------


def test_cancel(idle_safelight):
    with sdk(idle_safelight) as client:
        task_id = client.create_task("z-image", Z)
        assert idle_safelight.balance() == 999
        task = client.cancel(task_id)
        assert (task.task_id, task.state, task.fail_code, task.fail_msg) == (task_id, "fail", "499", "cancelled")
        assert idle_safelight.balance() == 1000  # refunded
        with pytest.raises(ValidationError, match=r"already ended \(fail\)") as info:
            client.cancel(task)  # a Task works as well as its id
        assert info.value.code == 422 and info.value.task_id == task_id
        with pytest.raises(TaskNotFoundError):
            client.cancel("0" * 32)


def test_cancel_and_list_on_a_server_without_them(kie, client_kwargs):
    with Client(**client_kwargs) as client:
        with pytest.raises(NotSupportedError, match="has no cancel") as info:
            client.cancel("abc")
        assert info.value.code == 404 and info.value.task_id == "abc"
        with pytest.raises(NotSupportedError, match="has no task list"):
            list(client.list_tasks())


# --- list_tasks() ----------------------------------------------------------------------------------


def test_list_tasks_pages_through_the_cursor(idle_safelight, recorder):
    with sdk(idle_safelight, recorder) as client:
        ids = [client.create_task("z-image", {**Z, "prompt": f"n{n}"}) for n in range(5)]
        other = client.create_task("google/imagen4-fast", {"prompt": "other"})
        recorder.requests.clear()
        listed = list(client.list_tasks(page_size=2))
        assert [t.task_id for t in listed] == [other, *reversed(ids)]  # newest first
        assert recorder.paths() == ["/api/v1/jobs/list"] * 3
        assert all(isinstance(t, Task) and t.state == "waiting" for t in listed)
        assert listed[-1].raw["queuePosition"] == 0

        recorder.requests.clear()
        assert [t.task_id for t in client.list_tasks(limit=3, page_size=2)] == [other, ids[4], ids[3]]
        assert len(recorder.requests) == 2  # a page of 2, then a page of 1
        assert [t.task_id for t in client.list_tasks(model="z-image", limit=1)] == [ids[4]]
        assert [t.model for t in client.list_tasks(model="google/imagen4-fast")] == ["google/imagen4-fast"]
        assert list(client.list_tasks(state="success")) == []
        assert len(list(client.list_tasks(state="waiting", since=listed[2].create_time))) >= 3
        assert list(client.list_tasks(since=listed[0].create_time + 60_000)) == []
        with pytest.raises(ValidationError, match="state must be one of"):
            list(client.list_tasks(state="done"))


async def test_async_list_tasks(idle_safelight):
    async with AsyncClient(idle_safelight.api_key, idle_safelight.base_url, **FAST) as client:
        ids = [await client.create_task("z-image", {**Z, "prompt": f"a{n}"}) for n in range(3)]
        assert [t.task_id async for t in client.list_tasks(page_size=1)] == list(reversed(ids))
        assert [t.task_id async for t in client.list_tasks(limit=2)] == [ids[2], ids[1]]


# --- idempotency -----------------------------------------------------------------------------------


def test_idempotency_key_is_sent_and_honoured(idle_safelight, recorder):
    with sdk(idle_safelight, recorder) as client:
        first = client.create_task("z-image", Z, idempotency_key="order-42")
        again = client.create_task("z-image", Z, idempotency_key="order-42")
        assert first == again
        assert [h["idempotency-key"] for _, _, h in recorder.requests] == ["order-42", "order-42"]
        assert idle_safelight.task_count() == 1 and idle_safelight.balance() == 999  # charged once
        with pytest.raises(ValidationError, match="already used for a different request"):
            client.create_task("z-image", {**Z, "prompt": "another"}, idempotency_key="order-42")

        # By default a fresh key each time: two creates, two tasks.
        recorder.requests.clear()
        assert client.create_task("z-image", Z) != client.create_task("z-image", Z)
        keys = [h["idempotency-key"] for _, _, h in recorder.requests]
        assert len(set(keys)) == 2
        # None sends no key at all.
        client.create_task("z-image", Z, idempotency_key=None)
        assert "idempotency-key" not in recorder.requests[-1][2]
        with pytest.raises(ValueError, match="printable ASCII"):
            client.create_task("z-image", Z, idempotency_key="ünicode")


async def test_async_idempotency_key(idle_safelight):
    async with AsyncClient(idle_safelight.api_key, idle_safelight.base_url, **FAST) as client:
        ids = {await client.create_task("z-image", Z, idempotency_key="same") for _ in range(3)}
    assert len(ids) == 1 and idle_safelight.task_count() == 1


# --- THE retry: a create whose connection broke after it was sent ----------------------------------


class CuttingProxy:
    """A TCP proxy on loopback in front of a server. It relays everything, except that it answers the
    first createTask request by forwarding it, waiting for the server's answer (so the task exists), and
    then closing the client's connection instead of relaying that answer. With `cut_stream_after=N` it
    instead cuts the first event stream after relaying N chunks of it."""

    def __init__(self, upstream: str, *, cut_create: bool = True, cut_stream_after: int | None = None) -> None:
        host, port = httpx.URL(upstream).host, httpx.URL(upstream).port
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.cut_create = cut_create and cut_stream_after is None
        self.cut_stream_after = cut_stream_after
        self.creates: list[bytes] = []  # every createTask request's head, as received
        self.creates_cut = 0
        self.stream_requests = 0
        self.streams_cut = 0
        self.lock = threading.Lock()
        self.closing = False

    def __enter__(self) -> CuttingProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing = True
        self.listener.close()

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(client,), daemon=True).start()

    def _connection(self, client: socket.socket) -> None:
        server = socket.create_connection(self.upstream)
        verdict: dict[str, str] = {}  # what to do with the answer to the request in flight
        threading.Thread(target=self._requests, args=(client, server, verdict), daemon=True).start()
        relayed = 0
        try:
            while chunk := server.recv(65536):
                if verdict.get("cut") == "create":
                    break  # the server answered (the task exists): drop the client without the answer
                if verdict.get("cut") == "stream":
                    if relayed >= (self.cut_stream_after or 0):
                        break
                    relayed += 1
                client.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(client)
            _close(server)

    def _requests(self, client: socket.socket, server: socket.socket, verdict: dict[str, str]) -> None:
        try:
            while chunk := client.recv(65536):
                with self.lock:
                    if chunk.startswith(b"POST /api/v1/jobs/createTask"):
                        self.creates.append(chunk.split(b"\r\n\r\n")[0])
                        if self.cut_create and not self.creates_cut:
                            self.creates_cut += 1
                            verdict["cut"] = "create"
                    elif chunk.startswith(b"GET /api/v1/jobs/stream"):
                        self.stream_requests += 1
                        if self.cut_stream_after is not None and not self.streams_cut:
                            self.streams_cut += 1
                            verdict["cut"] = "stream"
                server.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(server)

    def idempotency_keys(self) -> list[str]:
        keys = []
        for head in self.creates:
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.decode().partition(":")
                if name.lower() == "idempotency-key":
                    keys.append(value.strip())
        return keys


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.fixture
def proxy(safelight: ThreadedSafelight) -> Iterator[CuttingProxy]:
    with CuttingProxy(safelight.base_url) as cutting:
        yield cutting


def test_a_create_cut_after_sending_is_retried_with_its_key_into_one_task(safelight, proxy):
    with Client(safelight.api_key, proxy.url, **FAST) as client:
        task = client.run("z-image", Z)
    assert task.succeeded
    assert proxy.creates_cut == 1 and len(proxy.creates) == 2  # sent, cut, sent again ...
    first, second = proxy.idempotency_keys()
    assert first == second  # ... with the same key, so the server answered the task it had made
    assert safelight.task_count() == 1 and safelight.balance() == 999  # one task, charged once
    with Client(safelight.api_key, safelight.base_url) as direct:
        (listed,) = direct.list_tasks()
    assert listed.task_id == task.task_id


async def test_async_create_cut_after_sending_is_retried_into_one_task(safelight, proxy):
    async with AsyncClient(safelight.api_key, proxy.url, **FAST) as client:
        task_id = await client.create_task("z-image", Z)
    assert proxy.creates_cut == 1 and len(proxy.creates) == 2 and len(set(proxy.idempotency_keys())) == 1
    assert safelight.task_count() == 1 and safelight.balance() == 999
    async with AsyncClient(safelight.api_key, safelight.base_url) as direct:
        assert [t.task_id async for t in direct.list_tasks()] == [task_id]


def test_without_a_key_the_cut_create_is_not_retried(safelight, proxy):
    with Client(safelight.api_key, proxy.url, **FAST) as client, pytest.raises(APIConnectionError):
        client.create_task("z-image", Z, idempotency_key=None)
    assert len(proxy.creates) == 1 and proxy.idempotency_keys() == []
    assert safelight.task_count() == 1  # it was created all the same: a retry would have paid twice
