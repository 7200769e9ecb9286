"""Everything a running server holds: store, storage, signer, worker, and small hot-path caches."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from safelight.backends import Backend, BackendContext, backend_class
from safelight.config import Settings
from safelight.delivery import CallbackDeliverer, RetryPolicy
from safelight.net import OutboundPolicy
from safelight.records import build_task_record
from safelight.routing import Routing, load_routing
from safelight.storage import LocalStorage, UrlSigner
from safelight.storage.retention import run_periodically
from safelight.store import Store
from safelight.worker import InputLoader, Worker

from .ratelimit import RateLimiter

log = logging.getLogger(__name__)


@dataclass
class TtlCache:
    """A tiny time-bounded cache for facts read on every request (key lookups, maintenance flag)."""

    ttl: float
    _items: dict = field(default_factory=dict)

    def get(self, key):
        hit = self._items.get(key)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, key, value) -> None:
        if len(self._items) > 10_000:
            self._items.clear()
        self._items[key] = (value, time.monotonic() + self.ttl)

    def clear(self) -> None:
        self._items.clear()


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(settings.effective_database_url)
        self.storage = LocalStorage(settings.files_dir)
        self.policy = OutboundPolicy.from_string(settings.outbound_allow)
        self.routing: Routing = load_routing(settings.config, sandbox_concurrency=settings.worker_concurrency)
        # Models for which some backend of the route honours nsfw_checker (createTask answers 505 otherwise).
        self.safety_checked_models = {
            model for model, route in self.routing.routes.items()
            if any(backend_class(self.routing.backends[name].type)
                   .offers_safety_checker(self.routing.backends[name].options) for name in route)}
        self.signer: UrlSigner | None = None
        self.worker: Worker | None = None
        self.deliverer: CallbackDeliverer | None = None
        self._sweeper: asyncio.Task | None = None
        # Revoking a key or flipping maintenance takes effect within this many seconds.
        self.auth_cache = TtlCache(ttl=2.0)
        self.flags_cache = TtlCache(ttl=1.0)
        self.rate_limiter = (RateLimiter(settings.rate_limit_per_key, settings.rate_limit_window_seconds)
                             if settings.rate_limit_per_key > 0 else None)

    async def start(self, *, migrate: bool = True) -> None:
        if migrate:
            await self.store.migrate()
        self.signer = UrlSigner(await self.store.state.secret_key(), self.settings.public_url)
        if self.settings.run_worker:
            self.worker = self.build_worker()
            await self.worker.start()
        if self.settings.run_delivery:
            self.deliverer = self.build_deliverer()
            await self.deliverer.start()
        if self.settings.retention_sweep_interval_seconds > 0:
            self._sweeper = asyncio.create_task(
                run_periodically(self, self.settings.retention_sweep_interval_seconds), name="retention-sweep")

    def build_deliverer(self) -> CallbackDeliverer:
        settings = self.settings
        assert self.signer is not None
        signer, ttl = self.signer, settings.result_url_ttl_seconds
        retry = RetryPolicy(base_seconds=settings.callback_retry_base_seconds,
                            cap_seconds=settings.callback_retry_cap_seconds,
                            window_seconds=settings.callback_retry_window_seconds,
                            max_attempts=settings.callback_max_attempts)
        return CallbackDeliverer(store=self.store, policy=self.policy, retry=retry,
                                 build_record=lambda row: build_task_record(row, signer, ttl),
                                 timeout_seconds=settings.callback_timeout_seconds,
                                 concurrency=settings.callback_concurrency)

    def build_backends(self) -> dict[str, Backend]:
        """One object per backend some route uses. Cheap: weights load in start()."""
        settings = self.settings
        context = BackendContext(policy=self.policy, max_download_bytes=max(settings.input_max_bytes, 50 << 20),
                                 max_pixels=settings.input_max_pixels)
        return {name: backend_class(self.routing.backends[name].type)(name, self.routing.backends[name], context)
                for name in self.routing.used_backends()}

    def preflight(self) -> None:
        """Fail before serving, with a message naming what is missing (weights files, key variables)."""
        if self.settings.run_worker:
            for backend in self.build_backends().values():
                backend.preflight()

    def build_worker(self) -> Worker:
        settings = self.settings
        assert self.signer is not None
        loader = InputLoader(storage=self.storage, signer=self.signer, policy=self.policy,
                             max_bytes=settings.input_max_bytes, max_pixels=settings.input_max_pixels)
        return Worker(store=self.store, storage=self.storage, loader=loader, backends=self.build_backends(),
                      routes=self.routing.routes,
                      lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts,
                      task_timeout_seconds=settings.task_timeout_seconds)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self.worker is not None:
            await self.worker.stop()
        if self.deliverer is not None:
            await self.deliverer.stop()
        await self.store.close()

    async def account_for_key(self, key: str) -> int | None:
        cached = self.auth_cache.get(key)
        if cached is not None:
            return cached
        account_id = await self.store.accounts.authenticate(key)
        if account_id is not None:
            self.auth_cache.put(key, account_id)
        return account_id

    async def maintenance(self) -> bool:
        cached = self.flags_cache.get("maintenance")
        if cached is None:
            cached = await self.store.state.maintenance()
            self.flags_cache.put("maintenance", cached)
        return cached

    async def disabled_models(self) -> set[str]:
        cached = self.flags_cache.get("disabled")
        if cached is None:
            cached = await self.store.state.disabled_models()
            self.flags_cache.put("disabled", cached)
        return cached
