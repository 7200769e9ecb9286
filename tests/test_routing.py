"""The routing file, the worker's route with fallback, batched claims, and nsfw_checker at create time."""

import asyncio
import json
import textwrap

import httpx
import pytest

from safelight.backends import Backend, BackendError, GeneratedImage
from safelight.catalog import MODELS, get_model, validate_input
from safelight.routing import SANDBOX, RoutingError, load_routing
from safelight.worker import Worker
from tests.helpers import BODY, png_bytes, wait_state


async def create(runtime, body=BODY):
    """As createTask does it: the batch key comes from the catalog's parameters."""
    spec = get_model(body["model"])
    params = spec.to_params(validate_input(spec, body["input"]))
    return await runtime.store.tasks.create(account_id=runtime.test_account, model=body["model"],
                                            param=json.dumps(body), callback_url=None,
                                            num_images=params.num_images, cost=4, batch_key=params.batch_key)

# --- the file ---


def write(tmp_path, text):
    path = tmp_path / "safelight.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_no_file_routes_every_model_to_the_sandbox():
    routing = load_routing("")
    assert routing.routes == {model: [SANDBOX] for model in MODELS}
    assert routing.backends[SANDBOX].type == "sandbox"


def test_a_full_file_is_read_with_routes_in_order(tmp_path):
    routing = load_routing(write(tmp_path, """
        [backends.bfl]
        type = "bfl"
        api_key_env = "BFL_API_KEY"
        concurrency = 24

        [backends.kie]
        type = "kie"
        api_key_env = "KIE_API_KEY"

        [models."flux-2/pro-image-to-image"]
        route = ["bfl", "kie"]

        [models."google/imagen4-fast"]
        route = []
    """))
    assert routing.route_for("flux-2/pro-image-to-image") == ["bfl", "kie"]
    assert routing.backends["bfl"].concurrency == 24
    assert routing.backends["bfl"].options == {"api_key_env": "BFL_API_KEY"}
    assert routing.route_for("google/imagen4-fast") == []  # taken off this server
    assert routing.route_for("z-image") == [SANDBOX]  # not mentioned: stays on the sandbox
    assert routing.used_backends() == [SANDBOX, "bfl", "kie"]  # first use, in catalog order


@pytest.mark.parametrize("text, message", [
    ("[backends.x]\ntype = 'warp-drive'\n", "unknown backend type 'warp-drive'"),
    ("[backends.x]\ntype = 'bfl'\nconcurrency = 0\n", "backends.x.concurrency: Input should be greater than"),
    ("[backends.x]\ntype = 'bfl'\napi_key_evn = 'K'\n", "backends.x.api_key_evn: Extra inputs are not permitted"),
    ("[models.'z-image']\nroute = ['nowhere']\n", "names backend 'nowhere', which no [backends.nowhere] table defines"),
    ("[models.'dall-e']\nroute = ['sandbox']\n", "models.'dall-e' is not a known model"),
    ("[backends.b]\ntype = 'bfl'\n[models.'z-image']\nroute = ['b']\n", "backend 'b' (type bfl) cannot serve z-image"),
    ("[models.'z-image']\nroute = ['sandbox', 'sandbox']\n", "a backend may appear only once in a route"),
    ("[models.'z-image']\nroutes = ['sandbox']\n", "models.z-image.route: Field required"),
    ("this is = not toml [", "is not valid TOML"),
    ("[backends.g]\ntype = 'diffusers.zimage'\nweights = 'w'\nconcurrency = 2\n",
     "backends.g.concurrency: a local pipeline runs one call at a time"),
    ("[backends.g]\ntype = 'diffusers.flux2'\nweights = 'w'\nvariant = 'pro'\n",
     "backends.g.variant: Input should be 'klein' or 'dev'"),
    # Local pipelines serve only what they can honour: no masks, no remix strength, no references on Z-Image.
    ("[backends.k]\ntype = 'diffusers.flux2'\nweights = 'w'\n[models.'ideogram/v3-edit']\nroute = ['k']\n",
     "backend 'k' (type diffusers.flux2) cannot serve ideogram/v3-edit"),
    ("[backends.k]\ntype = 'diffusers.flux2'\nweights = 'w'\n[models.'ideogram/character-remix']\nroute = ['k']\n",
     "cannot serve ideogram/character-remix"),
    ("[backends.z]\ntype = 'diffusers.zimage'\nweights = 'w'\n[models.'nano-banana-pro']\nroute = ['z']\n",
     "backend 'z' (type diffusers.zimage) cannot serve nano-banana-pro"),
    ("[backends.z]\ntype = 'diffusers.zimage'\nweights = 'w'\n[models.'google/nano-banana-edit']\nroute = ['z']\n",
     "cannot serve google/nano-banana-edit"),
])
def test_mistakes_are_reported_with_the_key_that_is_wrong(tmp_path, text, message):
    with pytest.raises(RoutingError) as caught:
        load_routing(write(tmp_path, text))
    assert message in str(caught.value)


def test_a_missing_file_is_an_error_not_a_silent_default(tmp_path):
    with pytest.raises(RoutingError, match="does not exist"):
        load_routing(tmp_path / "nope.toml")


# --- the worker's route ---


class Scripted(Backend):
    """Fails or succeeds as told; records the jobs of every call."""

    type_name = "scripted"

    def __init__(self, name, *, error=None, max_batch=1, safety=False, per_job_error=None):
        super().__init__(name, concurrency=2, max_batch=max_batch)
        self.error, self.safety, self.per_job_error = error, safety, per_job_error
        self.calls: list[list[str]] = []

    @property
    def has_safety_checker(self):
        return self.safety

    async def generate(self, job):
        return (await self.generate_batch([job]))[0]

    async def generate_batch(self, jobs):
        self.calls.append([job.task_id for job in jobs])
        await asyncio.sleep(0.01)
        if self.error:
            raise self.error
        return [self.per_job_error if (self.per_job_error and i == 0) else
                [GeneratedImage(png_bytes(8, 8), seed) for seed in job.seeds] for i, job in enumerate(jobs)]


def route_worker(runtime, backends, route, model="google/imagen4-fast"):
    return Worker(store=runtime.store, storage=runtime.storage, loader=runtime.input_loader(),
                  backends={b.name: b for b in backends}, routes={model: route}, lease_seconds=60)


async def run_one(runtime, worker, body=None):
    await worker.start()
    try:
        task_id = await create(runtime, body or BODY)
        return await wait_state(runtime, task_id)
    finally:
        await worker.stop()


async def test_a_transient_failure_moves_on_to_the_next_backend_and_is_logged(runtime):
    first = Scripted("first", error=BackendError("503", "provider unavailable", transient=True,
                                                 detail="backend first: HTTP 503 from upstream"))
    second = Scripted("second")
    row = await run_one(runtime, route_worker(runtime, [first, second], ["first", "second"]))
    assert row["state"] == "success" and row["backend"] == "second"
    assert len(first.calls) == 1 and len(second.calls) == 1
    attempts = json.loads(row["backend_attempts"])
    assert [(a["backend"], a["outcome"], a["failCode"]) for a in attempts] == [
        ("first", "fallback", "503"), ("second", "success", "")]
    assert "HTTP 503 from upstream" in attempts[0]["detail"]
    assert await runtime.store.accounts.ledger_sum(runtime.test_account) == \
        await runtime.store.accounts.balance(runtime.test_account)


async def test_a_permanent_failure_does_not_fall_through(runtime):
    first = Scripted("first", error=BackendError("451", "blocked by the provider's safety filter"))
    second = Scripted("second")
    before = await runtime.store.accounts.balance(runtime.test_account)
    row = await run_one(runtime, route_worker(runtime, [first, second], ["first", "second"]))
    assert (row["state"], row["fail_code"]) == ("fail", "451")
    assert row["fail_msg"] == "blocked by the provider's safety filter"
    assert second.calls == []
    assert await runtime.store.accounts.balance(runtime.test_account) == before  # refunded


async def test_the_last_backend_failing_transiently_fails_the_task_with_its_message(runtime):
    only = Scripted("only", error=BackendError("503", "provider unavailable; credits refunded", transient=True,
                                               detail="backend only: HTTP 401 (check the API key)"))
    row = await run_one(runtime, route_worker(runtime, [only], ["only"]))
    assert (row["fail_code"], row["fail_msg"]) == ("503", "provider unavailable; credits refunded")
    assert "401" not in row["fail_msg"]  # the operator's detail stays in the log and the attempt record
    assert json.loads(row["backend_attempts"])[0]["outcome"] == "fail"


async def test_compatible_tasks_are_claimed_and_run_as_one_batch(runtime):
    batcher = Scripted("batcher", max_batch=4)
    worker = route_worker(runtime, [batcher], ["batcher"])
    ids = [await create(runtime) for _ in range(5)]  # same model and size -> same batch key
    # A different size is a different batch key and is never mixed in.
    other = await create(runtime, {"model": "google/imagen4-fast", "input": {"prompt": "x", "aspect_ratio": "9:16"}})
    await worker.start()
    try:
        rows = [await wait_state(runtime, task_id) for task_id in [*ids, other]]
    finally:
        await worker.stop()
    assert all(row["state"] == "success" for row in rows)
    assert sorted(len(call) for call in batcher.calls) == [1, 1, 4]
    assert [other] in batcher.calls
    assert ids[:4] in batcher.calls  # oldest first


async def test_one_refused_task_in_a_batch_fails_alone(runtime):
    batcher = Scripted("batcher", max_batch=2, per_job_error=BackendError("451", "blocked by the safety checker"))
    worker = route_worker(runtime, [batcher], ["batcher"])
    ids = [await create(runtime) for _ in range(2)]
    await worker.start()
    try:
        rows = [await wait_state(runtime, task_id) for task_id in ids]
    finally:
        await worker.stop()
    assert [row["state"] for row in rows] == ["fail", "success"]
    assert rows[0]["fail_code"] == "451"


async def test_nsfw_tasks_skip_backends_without_a_safety_checker(runtime):
    plain, checked = Scripted("plain"), Scripted("checked", safety=True)
    body = {"model": "google/imagen4-fast", "input": {"prompt": "x", "nsfw_checker": True}}
    row = await run_one(runtime, route_worker(runtime, [plain, checked], ["plain", "checked"]), body)
    # imagen4-fast has no nsfw_checker field: it is ignored like any unknown field, so the route is whole
    assert row["backend"] == "plain"
    body = {"model": "z-image", "input": {"prompt": "x", "aspect_ratio": "1:1", "nsfw_checker": True}}
    plain, checked = Scripted("plain"), Scripted("checked", safety=True)
    row = await run_one(runtime, route_worker(runtime, [plain, checked], ["plain", "checked"], model="z-image"), body)
    assert row["backend"] == "checked" and plain.calls == []


# --- createTask ---


async def test_nsfw_checker_without_a_checker_is_refused_at_create_with_505(settings, tmp_path):
    from tests.helpers import free_port, start_server

    config = write(tmp_path, """
        [models."google/imagen4-fast"]
        route = []
    """)
    port = free_port()
    settings = settings.model_copy(update={"routing_file": str(config), "port": port,
                                           "public_url": f"http://127.0.0.1:{port}"})
    server, task = await start_server(settings)
    runtime = server.config.app.state.runtime
    # A backend type without a checker: pretend the sandbox has none for z-image on this server.
    server.config.app.state.admission.safety_checked_models.discard("z-image")
    key = (await runtime.store.accounts.create_key("nsfw", credits=100)).key
    try:
        async with httpx.AsyncClient(base_url=settings.public_url, headers={"Authorization": f"Bearer {key}"}) as c:
            body = {"model": "z-image", "input": {"prompt": "x", "aspect_ratio": "1:1", "nsfw_checker": True}}
            answer = (await c.post("/api/v1/jobs/createTask", json=body)).json()
            assert answer == {"code": 505, "msg": "nsfw_checker is not available for z-image on this server",
                              "data": None}
            body["input"]["nsfw_checker"] = False
            assert (await c.post("/api/v1/jobs/createTask", json=body)).json()["code"] == 200
            answer = (await c.post("/api/v1/jobs/createTask",
                                   json={"model": "google/imagen4-fast", "input": {"prompt": "x"}})).json()
            assert answer == {"code": 505, "msg": "model google/imagen4-fast is not served on this server",
                              "data": None}
        assert sum((await runtime.store.tasks.count_by_state()).values()) == 1  # only the accepted one
    finally:
        server.should_exit = True
        await task
