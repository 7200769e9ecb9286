"""The blocking SDK against the fake kie.ai on loopback (tests/fake_kie.py)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import pytest

from safelight.client import (
    APIConnectionError,
    AuthenticationError,
    Client,
    Flux2ProImageToImageInput,
    GenerationFailedError,
    Imagen4FastInput,
    InsufficientCreditsError,
    MaintenanceError,
    ModelDisabledError,
    NotFoundError,
    RateLimitError,
    SafelightError,
    ServerError,
    Task,
    TaskNotFoundError,
    ValidationError,
    WaitTimeoutError,
    ZImageInput,
    _sync,
)
from safelight.client._base import Poller
from tests.fake_kie import CREATE, RECORD

POLL = {"poll": 0.01, "max_poll": 0.02}


@pytest.fixture
def client(client_kwargs):
    with Client(**client_kwargs) as c:
        yield c


@pytest.fixture
def sleeps(monkeypatch):
    """Record the SDK's sleeps and skip them (the delays themselves are what is under test)."""
    recorded: list[float] = []
    monkeypatch.setattr(_sync.time, "sleep", recorded.append)
    return recorded


# --- the happy path -------------------------------------------------------------------------------


def test_run_parses_kie_record_and_reports_progress(client, kie):
    seen: list[Task] = []
    task = client.run("z-image", {"prompt": "a red fox", "aspect_ratio": "1:1"}, on_progress=seen.append, **POLL)

    assert task.succeeded and task.state == "success"
    assert len(task.task_id) == 32
    assert task.model == "z-image"
    # param is a JSON string whose input is a nested JSON string: both parsed.
    assert task.param["model"] == "z-image"
    assert task.input == {"prompt": "a red fox", "aspect_ratio": "1:1"}
    assert task.result_urls == [f"{kie.base_url}/files/{task.task_id}_0.png"]
    assert task.fail_code is None and task.fail_msg is None  # null on success
    assert task.cost_time == 1234 and task.credits_consumed == 4
    assert task.create_time and task.complete_time and task.update_time
    assert [t.state for t in seen] == ["waiting", "queuing", "generating", "generating", "success"]
    assert [t.progress for t in seen if t.state == "generating"] == [40, 80]
    # Two "recordInfo is null" answers came first and were treated as transient.
    assert len(kie.calls(RECORD)) == 2 + 5
    sent = kie.calls(CREATE)[0]
    assert sent["headers"]["authorization"] == f"Bearer {kie.api_key}"
    assert json.loads(sent["body"]) == {"model": "z-image", "input": {"prompt": "a red fox", "aspect_ratio": "1:1"}}


def test_create_task_sends_typed_input_and_callback(client, kie):
    task_id = client.create_task(
        "google/imagen4-fast", Imagen4FastInput(prompt="a cat", num_images="2", seed=7), callback_url="https://x.test/cb"
    )
    body = json.loads(kie.calls(CREATE)[0]["body"])
    # Only the fields that were set: kie applies no defaults, and we add none it did not ask for.
    assert body == {
        "model": "google/imagen4-fast",
        "input": {"prompt": "a cat", "num_images": "2", "seed": 7},
        "callBackUrl": "https://x.test/cb",
    }
    task = client.wait(task_id, **POLL)
    assert len(task.result_urls) == 2
    assert task.callback_url == "https://x.test/cb"


def test_typed_inputs_validate_before_sending(client, kie):
    # The SDK's own ValidationError (pydantic's no longer escapes).
    with pytest.raises(ValidationError):
        ZImageInput(prompt="x", aspect_ratio="2:1")
    with pytest.raises(ValidationError):
        Imagen4FastInput(prompt="x", num_images=2)  # kie's num_images is a string enum
    with pytest.raises(ValidationError):
        Flux2ProImageToImageInput(prompt="edit", input_urls=[], aspect_ratio="1:1", resolution="1K")
    with pytest.raises(ValidationError, match="aspect_ration is not a field"):
        ZImageInput(prompt="x", aspect_ration="1:1")  # a typo is refused, not dropped
    with pytest.raises(ValueError, match="not 'z-image'"):
        client.create_task("z-image", Imagen4FastInput(prompt="x"))
    with pytest.raises(TypeError):
        client.create_task("z-image", "prompt")
    assert kie.requests == []


def test_wait_backs_off_from_the_first_interval(client, kie, sleeps):
    task_id = client.create_task("z-image", {"prompt": "p", "aspect_ratio": "1:1"})
    client.wait(task_id, poll=2.0, max_poll=5.0)
    assert sleeps == [2.0, 3.0, 4.5, 5.0, 5.0, 5.0]


def test_default_poll_schedule_grows_to_15s():
    poller = Poller("t", timeout=1e6, poll=2.0, max_poll=15.0, factor=1.5, created_age=None, grace=30)
    assert [poller.sleep_time() for _ in range(8)] == [2.0, 3.0, 4.5, 6.75, 10.125, 15.0, 15.0, 15.0]


# --- "recordInfo is null" -------------------------------------------------------------------------


def test_unknown_task_is_not_found_at_once(client, kie):
    with pytest.raises(TaskNotFoundError) as info:
        client.wait("0" * 32, **POLL)
    error = info.value
    assert isinstance(error, NotFoundError) and isinstance(error, ValidationError)
    assert error.code == 422 and error.msg == "recordInfo is null" and error.task_id == "0" * 32
    assert len(kie.calls(RECORD)) == 1


def test_null_record_is_transient_only_for_tasks_this_client_created(client, kie, client_kwargs):
    task_id = client.create_task("z-image", {"prompt": "p", "aspect_ratio": "1:1"})
    with Client(**client_kwargs) as other:
        with pytest.raises(TaskNotFoundError) as info:
            other.wait(task_id, **POLL)
        assert info.value.task_id == task_id
    assert client.wait(task_id, **POLL).succeeded


def test_null_record_grace_window_expires(kie, client_kwargs):
    with Client(**client_kwargs, not_found_grace=0.0) as impatient:
        task_id = impatient.create_task("z-image", {"prompt": "p", "aspect_ratio": "1:1"})
        with pytest.raises(TaskNotFoundError):
            impatient.wait(task_id, **POLL)


# --- failure and timeout keep the task id ---------------------------------------------------------


def test_failed_task_raises_with_fail_code_and_msg(client, kie):
    with pytest.raises(GenerationFailedError) as info:
        client.run("z-image", {"prompt": "please fail", "aspect_ratio": "1:1"}, **POLL)
    error = info.value
    assert error.code == 501
    assert error.fail_code == "500"  # a number on the wire, normalised to a string
    assert error.fail_msg == "internal error, please try again later."
    assert error.task_id == error.task.task_id == next(iter(kie.tasks))
    assert error.task.state == "fail" and error.task.result_urls == []
    assert "internal error" in str(error) and error.task_id in str(error)


def test_wait_timeout_carries_task_id_and_last_state(client, kie):
    task_id = client.create_task("z-image", {"prompt": "forever", "aspect_ratio": "1:1"})
    started = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        client.wait(task_id, timeout=0.3, **POLL)
    assert time.monotonic() - started < 2
    error = info.value
    assert isinstance(error, WaitTimeoutError) and isinstance(error, SafelightError)
    assert error.task_id == task_id
    assert error.task is not None and error.task.state == "generating"
    assert task_id in str(error)


def test_errors_after_creation_carry_task_id(client, kie):
    task_id = client.create_task("z-image", {"prompt": "p", "aspect_ratio": "1:1"})
    kie.inject(RECORD, (200, {"code": 455, "msg": "Service under maintenance"}))
    with pytest.raises(MaintenanceError) as info:
        client.wait(task_id, **POLL)
    assert info.value.task_id == task_id and info.value.code == 455


# --- error mapping --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "cls", "msg"),
    [
        (401, AuthenticationError, "You do not have access permissions"),
        (402, InsufficientCreditsError, "Credits insufficient"),
        (404, NotFoundError, "Not found"),
        (422, ValidationError, "input.aspect_ratio must be one of 1:1, 4:3; got '2:1'"),
        (455, MaintenanceError, "Service under maintenance"),
        (501, GenerationFailedError, "Generation failed"),
        (505, ModelDisabledError, "Feature disabled"),
        (433, SafelightError, "Sub-key usage exceeds limit"),
    ],
)
def test_body_codes_map_to_typed_errors(client, kie, code, cls, msg):
    kie.inject(CREATE, (200, {"code": code, "msg": msg, "data": None}))
    with pytest.raises(cls) as info:
        client.create_task("z-image", {"prompt": "p", "aspect_ratio": "1:1"})
    error = info.value
    assert type(error) is cls
    assert (error.code, error.msg, error.http_status, error.task_id) == (code, msg, 200, None)
    assert len(kie.calls(CREATE)) == 1  # none of these is retried


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (401, "Unauthorized", AuthenticationError),
        (402, {"detail": "pay"}, InsufficientCreditsError),
        (404, "Not Found", NotFoundError),
        (422, {"message": "bad input"}, ValidationError),
        (400, {"success": False, "code": 400, "msg": "Missing required parameter: uploadPath"}, ValidationError),
    ],
)
def test_http_statuses_map_when_the_body_has_no_code(client, kie, status, body, cls):
    kie.inject(CREATE, (status, body))
    with pytest.raises(cls) as info:
        client.create_task("z-image", {"prompt": "p", "aspect_ratio": "1:1"})
    assert info.value.code == status and info.value.http_status == status
    if isinstance(body, dict) and "message" in body:
        assert info.value.msg == "bad input"  # the docs' `message` variant of `msg`


def test_wrong_api_key_is_an_authentication_error(kie):
    with Client(api_key="nope", base_url=kie.base_url) as bad:
        with pytest.raises(AuthenticationError) as info:
            bad.credits()
    assert info.value.code == 401 and info.value.http_status == 200


def test_unknown_model_is_a_validation_error(client, kie):
    with pytest.raises(ValidationError, match="not published"):
        client.create_task("nope/model", {"prompt": "p"})


# --- retries --------------------------------------------------------------------------------------


def test_rate_limit_is_retried_with_exponential_backoff(kie, client_kwargs, sleeps):
    kie.inject(CREATE, *[(200, {"code": 429, "msg": "Rate limit exceeded"})] * 3)
    with Client(**client_kwargs | {"retry_backoff": 1.0, "retry_max_backoff": 100.0, "retry_budget": 100.0}) as c:
        c.create_task("z-image", {"prompt": "p", "aspect_ratio": "1:1"})
    assert len(kie.calls(CREATE)) == 4
    # Equal jitter: attempt n sleeps between half and all of backoff * 2**n.
    assert len(sleeps) == 3
    for n, delay in enumerate(sleeps):
        assert 2**n / 2 <= delay <= 2**n


def test_rate_limit_retries_really_wait(kie, client_kwargs):
    kie.inject(CREATE, *[(200, {"code": 429, "msg": "Rate limit exceeded"})] * 2)
    with Client(**client_kwargs | {"retry_backoff": 0.1, "retry_max_backoff": 1.0}) as c:
        c.create_task("z-image", {"prompt": "p", "aspect_ratio": "1:1"})
    times = [r["time"] for r in kie.calls(CREATE)]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert 0.05 <= gaps[0] and 0.1 <= gaps[1]


def test_rate_limit_gives_up_after_max_retries(kie, client_kwargs):
    kie.inject(CREATE, *[(200, {"code": 429, "msg": "Rate limit exceeded"})] * 5)
    with Client(**client_kwargs | {"max_retries": 2}) as c:
        with pytest.raises(RateLimitError) as info:
            c.create_task("z-image", {"prompt": "p", "aspect_ratio": "1:1"})
    assert info.value.code == 429
    assert len(kie.calls(CREATE)) == 3


def test_rate_limit_budget_bounds_total_sleep(kie, client_kwargs, sleeps):
    kie.inject(CREATE, *[(200, {"code": 429, "msg": "Rate limit exceeded"})] * 10)
    settings = client_kwargs | {"max_retries": 10, "retry_backoff": 1.0, "retry_max_backoff": 1.0, "retry_budget": 2.2}
    with Client(**settings) as c, pytest.raises(RateLimitError):
        c.create_task("z-image", {"prompt": "p", "aspect_ratio": "1:1"})
    assert sum(sleeps) <= 2.2 and len(sleeps) >= 2


def test_http_429_with_retry_after(kie, client_kwargs, sleeps):
    kie.inject(CREATE, (429, {"code": 429, "msg": "Rate limit exceeded"}, {"Retry-After": "0.04"}))
    with Client(**client_kwargs) as c:
        c.create_task("z-image", {"prompt": "p", "aspect_ratio": "1:1"})
    assert sleeps == [0.04]


def test_retries_can_be_turned_off(kie, client_kwargs):
    kie.inject(CREATE, (200, {"code": 429, "msg": "Rate limit exceeded"}))
    with Client(**client_kwargs | {"max_retries": 0}) as c, pytest.raises(RateLimitError):
        c.create_task("z-image", {"prompt": "p", "aspect_ratio": "1:1"})
    assert len(kie.calls(CREATE)) == 1


def test_server_errors_are_retried(client, kie):
    kie.inject(CREATE, (200, {"code": 500, "msg": "Server Error - An unexpected error occurred"}),
               (502, "<html>bad gateway</html>"))
    task_id = client.create_task("z-image", {"prompt": "p", "aspect_ratio": "1:1"})
    assert task_id in kie.tasks
    assert len(kie.calls(CREATE)) == 3


def test_persistent_server_error_is_raised_with_kie_message(client, kie):
    # kie reports a missing required field as code 500 "This field is required".
    with pytest.raises(ServerError) as info:
        client.create_task("z-image", {"aspect_ratio": "1:1"})
    assert info.value.msg == "This field is required" and info.value.code == 500
    assert len(kie.calls(CREATE)) == 4  # 1 + max_retries


def test_poll_errors_are_retried_inside_get_task(client, kie):
    task_id = client.create_task("z-image", {"prompt": "p", "aspect_ratio": "1:1"})
    kie.inject(RECORD, (200, {"code": 429, "msg": "Rate limit exceeded"}), (503, "unavailable"))
    assert client.wait(task_id, **POLL).succeeded


def test_connection_refused_is_retried_then_raised(sleeps):
    import socket

    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with Client(api_key="k", base_url=f"http://127.0.0.1:{port}", **{"retry_backoff": 0.01}) as c:
        with pytest.raises(APIConnectionError):
            c.create_task("z-image", {"prompt": "p", "aspect_ratio": "1:1"})
    assert len(sleeps) == 3  # nothing reached the server, so even createTask is retried


def test_read_timeout_on_create_is_not_retried_without_an_idempotency_key(kie, client_kwargs, sleeps):
    # A createTask that timed out may have been created: without a key, retrying could pay twice.
    sent: list[httpx.Request] = []

    def slow(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        raise httpx.ReadTimeout("timed out", request=request)

    transport = httpx.Client(transport=httpx.MockTransport(slow))
    with Client(**client_kwargs, http_client=transport) as c, pytest.raises(APIConnectionError):
        c.create_task("z-image", {"prompt": "p", "aspect_ratio": "1:1"}, idempotency_key=None)
    assert sleeps == [] and len(sent) == 1 and "idempotency-key" not in sent[0].headers

    # With a key (by default a fresh uuid4), the same request is safe to send again: retried, same key.
    sent.clear()
    with Client(**client_kwargs, http_client=transport) as c, pytest.raises(APIConnectionError):
        c.create_task("z-image", {"prompt": "p", "aspect_ratio": "1:1"})
    assert len(sleeps) == 3 and len(sent) == 4
    keys = {request.headers["idempotency-key"] for request in sent}
    assert len(keys) == 1 and uuid.UUID(keys.pop()).version == 4
    transport.close()


# --- files ----------------------------------------------------------------------------------------


def test_download_saves_results_without_overwriting(client, kie, tmp_path):
    task = client.run("google/imagen4-fast", {"prompt": "two", "num_images": "2"}, **POLL)
    first = client.download(task, tmp_path / "out")
    assert [p.name for p in first] == [f"{task.task_id}_0.png", f"{task.task_id}_1.png"]
    assert first[0].read_bytes() == kie.png(0) and first[1].read_bytes() == kie.png(1)

    again = client.download(task, tmp_path / "out")
    assert [p.name for p in again] == [f"{task.task_id}_0-1.png", f"{task.task_id}_1-1.png"]
    assert first[0].read_bytes() == kie.png(0)

    first[0].write_bytes(b"stale")
    replaced = client.download(task, tmp_path / "out", overwrite=True)
    assert replaced == first and first[0].read_bytes() == kie.png(0)
    assert not list((tmp_path / "out").glob(".*.part"))


def test_download_by_task_id(client, kie, tmp_path):
    task = client.run("z-image", {"prompt": "p", "aspect_ratio": "1:1"}, **POLL)
    paths = client.download(task.task_id, tmp_path)
    assert paths == [tmp_path / f"{task.task_id}_0.png"]


def test_download_names_without_the_task_id_get_it_as_prefix(client, kie, tmp_path):
    kie.files["results/abc/0.png"] = kie.png(0)
    kie.files["results/abc/noext"] = kie.png(1)
    task = Task(task_id="abc", model="z-image", state="success",
                result_urls=[f"{kie.base_url}/files/results/abc/0.png?expires=1&signature=x",
                             f"{kie.base_url}/files/results/abc/noext"])
    paths = client.download(task, tmp_path)
    assert [p.name for p in paths] == ["abc-0.png", "abc-noext.png"]  # extension from Content-Type


def test_download_of_unfinished_task_raises(client, kie, tmp_path):
    task = Task(task_id="abc", model="z-image", state="generating")
    with pytest.raises(SafelightError, match="no results") as info:
        client.download(task, tmp_path)
    assert info.value.task_id == "abc"


def test_download_missing_file_is_not_found_with_task_id(client, kie, tmp_path):
    task = Task(task_id="abc", model="z-image", state="success", result_urls=[f"{kie.base_url}/files/gone.png"])
    with pytest.raises(NotFoundError) as info:
        client.download(task, tmp_path)
    assert info.value.task_id == "abc"
    assert list(tmp_path.iterdir()) == []


def test_download_sends_the_key_only_to_our_own_host(client, kie, cdn, tmp_path):
    kie.result_base = cdn.base_url
    task = client.run("z-image", {"prompt": "p", "aspect_ratio": "1:1"}, **POLL)
    cdn.files[f"{task.task_id}_0.png"] = kie.png(0)
    client.download(task, tmp_path)
    (request,) = cdn.calls(f"/files/{task.task_id}_0.png")
    assert "authorization" not in request["headers"]


def test_upload_path_bytes_and_url(client, kie, tmp_path):
    image = tmp_path / "My Photo.png"
    image.write_bytes(kie.png(3))

    url = client.upload(image)
    (stored,) = [name for name in kie.files if name.startswith("safelight/uploads/My_Photo-")]
    assert url == f"{kie.base_url}/files/{stored}" and stored.endswith(".png")
    assert kie.files[stored] == kie.png(3)

    url = client.upload(kie.png(4), upload_path="/avatars/", file_name="me.png")
    assert url == f"{kie.base_url}/files/avatars/me.png" and kie.files["avatars/me.png"] == kie.png(4)

    url = client.upload(b"RIFF\x00\x00\x00\x00WEBPVP8 ")
    assert url.endswith(".webp")

    url = client.upload("https://example.com/pics/cat.jpg", upload_path="remote")
    assert url == f"{kie.base_url}/files/remote/cat.jpg"
    body = json.loads(kie.calls("/api/file-url-upload")[0]["body"])
    assert body == {"fileUrl": "https://example.com/pics/cat.jpg", "uploadPath": "remote"}

    with pytest.raises(FileNotFoundError):
        client.upload(tmp_path / "missing.png")


def test_upload_goes_to_upload_base_url(kie, cdn, tmp_path):
    with Client(api_key=kie.api_key, base_url=kie.base_url, upload_base_url=cdn.base_url) as c:
        url = c.upload(b"\x89PNG\r\n\x1a\nxx", file_name="a.png")
    assert url.startswith(cdn.base_url) and kie.requests == []


def test_upload_error_shape(kie, tmp_path):
    with Client(api_key="wrong", base_url=kie.base_url) as c, pytest.raises(AuthenticationError):
        c.upload(b"data")
    kie.inject("/api/file-stream-upload",
               (200, {"success": False, "code": 500, "msg": "Internal server error"}),
               (200, {"success": False, "code": 400, "msg": "Missing required parameter: uploadPath"}))
    with Client(api_key=kie.api_key, base_url=kie.base_url, retry_backoff=0.01) as c:
        with pytest.raises(ValidationError, match="uploadPath"):
            c.upload(b"data")


def test_upload_then_use_the_url_as_input(client, kie, tmp_path):
    ref = tmp_path / "ref.png"
    ref.write_bytes(kie.png(9))
    url = client.upload(ref)
    task = client.run(
        "flux-2/pro-image-to-image",
        Flux2ProImageToImageInput(prompt="make it blue", input_urls=[url], aspect_ratio="auto", resolution="1K"),
        **POLL,
    )
    assert task.input["input_urls"] == [url]


# --- account --------------------------------------------------------------------------------------


def test_credits(client, kie):
    assert client.credits() == 100


def test_models_fall_back_to_the_builtin_catalog_on_kie(client, kie):
    models = client.models()
    ids = [m["id"] for m in models]
    assert ids[:2] == ["z-image", "flux-2/pro-image-to-image"]
    assert {"google/imagen4-fast", "google/imagen4-ultra", "ideogram/v3-edit", "nano-banana-pro"} <= set(ids)
    assert all(m["builtin"] for m in models)
    assert models[1]["prices"] == {"1K": 5, "2K": 7}
    assert "input_urls" in models[1]["input_schema"]["properties"]


def test_models_from_a_safelight_server(client, kie):
    kie.serve_models = True
    (model,) = client.models()
    assert model["id"] == "z-image" and model["priceUnit"] == "credits per image" and "builtin" not in model
    assert model["input_schema"] == model["inputSchema"]  # Safelight's camelCase key, offered both ways
    kie.inject("/api/v1/models", (200, {"code": 404, "msg": "Not found"}))
    assert client.models()[0].get("builtin") is True


# --- configuration --------------------------------------------------------------------------------


def test_settings_from_environment(monkeypatch):
    for name in ("SAFELIGHT_API_KEY", "SAFELIGHT_BASE_URL", "SAFELIGHT_UPLOAD_BASE_URL", "KIE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with Client() as c:
        assert (c.settings.api_key, c.base_url, c.upload_base_url) == (
            None, "http://127.0.0.1:8000", "http://127.0.0.1:8000")

    monkeypatch.setenv("KIE_API_KEY", "kie-key")
    with Client() as c:
        assert (c.settings.api_key, c.base_url, c.upload_base_url) == (
            "kie-key", "https://api.kie.ai", "https://kieai.redpandaai.co")

    monkeypatch.setenv("SAFELIGHT_BASE_URL", "http://gpu-box:9000/")
    with Client() as c:
        assert (c.settings.api_key, c.base_url, c.upload_base_url) == (
            "kie-key", "http://gpu-box:9000", "http://gpu-box:9000")

    monkeypatch.setenv("SAFELIGHT_API_KEY", "sl-key")
    monkeypatch.delenv("SAFELIGHT_BASE_URL")
    with Client() as c:
        assert (c.settings.api_key, c.base_url) == ("sl-key", "http://127.0.0.1:8000")

    with Client(api_key="arg", base_url="https://api.kie.ai") as c:
        assert (c.settings.api_key, c.upload_base_url) == ("arg", "https://kieai.redpandaai.co")


# --- Task parsing ---------------------------------------------------------------------------------


def test_task_tolerates_blank_and_null_fields():
    blank = Task.from_record(
        {"taskId": "t", "model": "z-image", "state": "waiting", "param": "", "resultJson": "", "failCode": "",
         "failMsg": "", "costTime": "", "completeTime": None, "createTime": "1698765400000", "updateTime": None,
         "progress": None, "creditsConsumed": ""}
    )
    assert blank.param == {} and blank.input == {} and blank.result_urls == [] and blank.seeds is None
    assert blank.fail_code is None and blank.fail_msg is None and blank.cost_time is None
    assert blank.create_time == 1698765400000 and blank.credits_consumed is None and not blank.done

    bare = Task.from_record({"taskId": "t", "state": "SUCCESS"})
    assert bare.succeeded and bare.model == "" and bare.param == {}

    as_object = Task.from_record(
        {"taskId": "t", "state": "success",
         "param": {"model": "m", "input": {"prompt": "p"}},
         "resultJson": {"resultUrls": ["https://r/1.png", "", None], "seeds": [1, "2"]},
         "consumeCredits": 8}
    )
    assert as_object.model == "m" and as_object.input == {"prompt": "p"}
    assert as_object.result_urls == ["https://r/1.png"] and as_object.seeds == [1, 2]
    assert as_object.credits_consumed == 8

    broken = Task.from_record({"taskId": "t", "state": "fail", "param": "{not json", "resultJson": "[1]",
                               "failCode": 500, "failMsg": None})
    assert broken.param == {} and broken.result_urls == [] and broken.fail_code == "500"
    assert json.dumps(broken.to_dict())  # JSON-ready


def test_error_repr_and_str():
    error = GenerationFailedError(501, "boom", "tid", fail_code="500", fail_msg="boom")
    assert str(error) == "boom (code 501) [task tid]"
    assert "task_id='tid'" in repr(error)


def test_client_is_importable_without_the_server(tmp_path):
    import subprocess
    import sys

    # The SDK shares only the standard-library modules that define the wire contract and retries.
    shared = "('safelight.client', 'safelight.kie', 'safelight.retrying')"
    code = ("import sys, safelight.client;"
            f"bad = [m for m in sys.modules if m.startswith('safelight.') and not m.startswith({shared})];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(tmp_path))
