"""The composition root: what one Safelight process builds and runs, one builder per role.

A process runs some of four roles:

- `api`: the HTTP routes (built by `safelight.api.app.create_app` around this runtime);
- `worker`: claims tasks and runs them on their backends;
- `delivery`: sends callbacks from the outbox;
- `retention`: deletes expired result files and uploads, hourly.

`safelight serve` runs all four, `safelight serve --no-worker` all but the worker, and
`safelight worker` only the worker. This module imports nothing from `api/`, so a GPU worker
never loads the HTTP stack.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from safelight.backends import Backend, BackendContext, backend_class
from safelight.catalog import ANY_MODEL, MODELS
from safelight.config import Settings
from safelight.delivery import CallbackDeliverer, RetryPolicy
from safelight.delivery.deliverer import IDLE_CHECK_SECONDS
from safelight.kie import task_record
from safelight.metrics import StoreSnapshot, refresh_store_gauges
from safelight.net import OutboundPolicy
from safelight.routing import Routing, load_routing
from safelight.storage import Storage, UrlSigner, check_storage, open_storage, url_signer
from safelight.storage.retention import run_periodically
from safelight.store import Store
from safelight.store.workers import LIVE_SECONDS
from safelight.worker import InputLoader, Worker

log = logging.getLogger(__name__)

# How often an API process checks that every model with waiting tasks has a live worker.
UNSERVED_CHECK_SECONDS = 60.0
# How often each API or worker process cancels tasks past their Cancel-After deadline.
DEADLINE_SWEEP_SECONDS = 1.0


class Role(StrEnum):
    API = "api"
    WORKER = "worker"
    DELIVERY = "delivery"
    RETENTION = "retention"


SERVE_ROLES = frozenset(Role)
SERVE_NO_WORKER_ROLES = frozenset({Role.API, Role.DELIVERY, Role.RETENTION})
WORKER_ROLES = frozenset({Role.WORKER})


def describe_roles(roles: Iterable[Role]) -> str:
    return ", ".join(role.value for role in Role if role in set(roles)) or "none"


def load_configured_routing(settings: Settings) -> Routing:
    """The routing file named by SAFELIGHT_CONFIG, checked; raises RoutingError naming the key."""
    return load_routing(settings.routing_file, sandbox_concurrency=settings.sandbox_concurrency)


def backend_context(settings: Settings, policy: OutboundPolicy) -> BackendContext:
    return BackendContext(policy=policy, max_download_bytes=max(settings.input_max_bytes, 50 << 20),
                          max_pixels=settings.input_max_pixels)


def build_backends(settings: Settings, routing: Routing, policy: OutboundPolicy) -> dict[str, Backend]:
    """One object per backend some route uses. Cheap: weights load and clients open in start()."""
    context = backend_context(settings, policy)
    return {name: backend_class(routing.backends[name].type)(name, routing.backends[name], context)
            for name in routing.used_backends()}


def outbound_policy(settings: Settings) -> OutboundPolicy:
    """SAFELIGHT_OUTBOUND_ALLOW, plus this server's own address, which is never a target."""
    return OutboundPolicy.for_server(settings.outbound_allow, listen_host=settings.host, listen_port=settings.port,
                                     public_url=settings.public_url)


def preflight(settings: Settings, routing: Routing, roles: Iterable[Role]) -> None:
    """Fail before serving, with a message naming what is missing (weights files, key variables).
    Only a process that runs the worker role needs its backends' weights and keys."""
    check_storage(settings)
    if Role.WORKER in set(roles):
        for backend in build_backends(settings, routing, outbound_policy(settings)).values():
            backend.preflight()


@dataclass
class Runtime:
    """A running process: the shared services, and the roles it started. Build it with `open()`."""

    settings: Settings
    roles: frozenset[Role]
    store: Store
    storage: Storage
    signer: UrlSigner
    policy: OutboundPolicy
    routing: Routing
    worker: Worker | None = None
    deliverer: CallbackDeliverer | None = None
    # Models with waiting tasks that no live worker serves, as of the last check (API role).
    unserved: list[str] = field(default_factory=list)
    _background: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def open(cls, settings: Settings, roles: Iterable[Role], *, routing: Routing | None = None,
                   migrate: bool = True) -> Runtime:
        """Connect the store (migrating it first), then build and start each role asked for."""
        storage = open_storage(settings)
        store = Store(settings.effective_database_url)
        try:
            if migrate:
                await store.migrate()
            signer = url_signer(await store.state.secret_key(), settings, storage)
        except BaseException:
            await store.close()
            raise
        runtime = cls(settings=settings, roles=frozenset(roles), store=store,
                      storage=storage, signer=signer,
                      policy=outbound_policy(settings),
                      routing=routing or load_configured_routing(settings))
        try:
            await runtime._start_roles()
        except BaseException:
            await runtime.close()
            raise
        return runtime

    async def _start_roles(self) -> None:
        if self.roles & {Role.API, Role.WORKER}:
            # Waits (Prefer: wait, the event stream) and a worker's cancels hear of other processes' changes.
            await self.store.task_events.listen()
            self._background.append(asyncio.create_task(self._sweep_deadlines(), name="cancel-after"))
        if Role.WORKER in self.roles:
            self.worker = self.build_worker(build_backends(self.settings, self.routing, self.policy))
            await self.worker.start()
        if Role.DELIVERY in self.roles:
            self.deliverer = self.build_deliverer()
            await self.deliverer.start()
        if Role.RETENTION in self.roles and self.settings.retention_sweep_interval_seconds > 0:
            self._background.append(asyncio.create_task(
                run_periodically(self.store.tasks, self.storage, self.settings,
                                 self.settings.retention_sweep_interval_seconds),
                name="retention-sweep"))
        self._background.append(asyncio.create_task(refresh_store_gauges(self.store_snapshot), name="metrics"))
        if Role.API in self.roles:
            self._background.append(asyncio.create_task(self._watch_unserved_models(), name="unserved-models"))
        if self.store.db.is_sqlite and self.roles in (SERVE_NO_WORKER_ROLES, WORKER_ROLES):
            log.warning("a split deployment on SQLite (serve --no-worker with safelight worker) has no cross-process "
                        "wake-ups: a worker sees new tasks only at its lease sweep (every %g s), and a finished "
                        "task's callback waits up to %g s. Use PostgreSQL for API replicas and workers.",
                        self.settings.lease_seconds / 2, IDLE_CHECK_SECONDS)

    async def _sweep_deadlines(self, every_seconds: float = DEADLINE_SWEEP_SECONDS) -> None:
        """Cancel tasks whose Cancel-After deadline passed. Every API and worker process sweeps, so a
        deadline holds even when no worker runs; the store ends each task once."""
        while True:
            try:
                await self.store.tasks.cancel_overdue()
            except Exception:
                log.warning("could not sweep Cancel-After deadlines", exc_info=True)
            await asyncio.sleep(every_seconds)

    # --- what an operator sees --------------------------------------------------------------------

    async def store_snapshot(self) -> StoreSnapshot:
        """The queue, callback and worker gauges, read from the store (the metrics refresh them)."""
        served: dict[str, int] = {}
        for worker in await self.store.workers.live(int(LIVE_SECONDS * 1000)):
            for model in worker.models:
                served[model] = served.get(model, 0) + 1
        return StoreSnapshot(queue=await self.store.tasks.count_unfinished_by_model(),
                             callbacks_pending=await self.store.callbacks.count_pending(), workers=served)

    async def unserved_models(self) -> list[str]:
        """Models with tasks waiting that no live worker serves (they would wait forever)."""
        waiting = await self.store.tasks.waiting_models()
        if not waiting:
            return []
        served = {model for worker in await self.store.workers.live(int(LIVE_SECONDS * 1000))
                  for model in worker.models}
        if self.worker is not None:
            served |= set(self.worker.routes)
        if ANY_MODEL in served:  # a pass-through worker takes every model the catalog lacks
            waiting = {model for model in waiting if model in MODELS}
        return sorted(waiting - served)

    async def _watch_unserved_models(self, every_seconds: float = UNSERVED_CHECK_SECONDS) -> None:
        await asyncio.sleep(min(every_seconds, LIVE_SECONDS))  # give workers a chance to write a heartbeat
        while True:
            try:
                self.unserved = await self.unserved_models()
                if self.unserved:
                    log.warning("tasks are waiting for %s, which no live worker serves: start a `safelight worker` "
                                "that routes them (safelight workers lists the live ones)", ", ".join(self.unserved))
            except Exception:
                log.warning("could not check which models the live workers serve", exc_info=True)
            await asyncio.sleep(every_seconds)

    async def readiness(self) -> dict[str, Any]:
        """This process: the database answers, the roles it runs are running."""
        problems: list[str] = []
        try:
            await self.store.ping()
        except Exception as exc:
            problems.append(f"the database does not answer: {type(exc).__name__}")
        if Role.WORKER in self.roles and (self.worker is None or not self.worker.running):
            problems.append("the worker is not running")
        if Role.DELIVERY in self.roles and (self.deliverer is None or not self.deliverer.running):
            problems.append("callback delivery is not running")
        return {"ready": not problems, "roles": sorted(role.value for role in self.roles), "problems": problems,
                "unservedModels": self.unserved}

    async def close(self) -> None:
        """Stop the roles (the worker hands unfinished tasks back), then close the store."""
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        if self.worker is not None:
            await self.worker.stop()
        if self.deliverer is not None:
            await self.deliverer.stop()
        await self.store.close()
        await self.storage.close()

    # --- what the roles are made of -------------------------------------------------------------

    def input_loader(self) -> InputLoader:
        settings = self.settings
        return InputLoader(storage=self.storage, signer=self.signer, policy=self.policy,
                           max_bytes=settings.input_max_bytes, max_pixels=settings.input_max_pixels)

    def build_worker(self, backends: Mapping[str, Backend]) -> Worker:
        settings = self.settings
        return Worker(store=self.store, storage=self.storage, loader=self.input_loader(), backends=backends,
                      routes=self.routing.routes, lease_seconds=settings.lease_seconds,
                      max_claims=settings.max_claims, task_timeout_seconds=settings.task_timeout_seconds)

    def build_deliverer(self) -> CallbackDeliverer:
        settings = self.settings
        retry = RetryPolicy(base_seconds=settings.callback_retry_base_seconds,
                            cap_seconds=settings.callback_retry_cap_seconds,
                            window_seconds=settings.callback_retry_window_seconds,
                            max_attempts=settings.callback_max_attempts)
        return CallbackDeliverer(store=self.store, policy=self.policy, retry=retry, build_record=self.task_record,
                                 timeout_seconds=settings.callback_timeout_seconds,
                                 concurrency=settings.callback_concurrency,
                                 per_account=settings.callback_per_account)

    # --- small shared helpers -------------------------------------------------------------------

    def result_url(self, key: str) -> str:
        return self.signer.link(key, self.settings.result_url_ttl_seconds)

    def task_record(self, row: Mapping[Any, Any]) -> dict[str, Any]:
        """The recordInfo `data` of a task row, with its result URLs signed now."""
        return task_record(row, self.result_url)
