"""The delivery loop: sends outbox rows to callBackUrls, at least once, retrying with backoff.

It runs beside the worker, never inside it: a slow or dead receiver costs a delivery slot here,
not a GPU or a task (Cog's issue 2229). Every attempt is logged; a crash mid-send leaves the
row leased, and it is sent again once the lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import RowMapping

from safelight import metrics, tracing
from safelight.kie import callback_body
from safelight.net import FetchError, OutboundPolicy, UnsafeURLError, post_json
from safelight.store import Store, now_ms

from .signing import signature_headers

log = logging.getLogger(__name__)

USER_AGENT = "Safelight-Webhooks/1"
# Wake-ups arrive as events (in-process, or NOTIFY on PostgreSQL); this bounds how long a callback
# could wait if one were missed (SQLite with the worker in another process has no cross-process event).
IDLE_CHECK_SECONDS = 30.0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, for at least `window_seconds`, at most `max_attempts` tries."""

    base_seconds: float = 5.0
    cap_seconds: float = 3600.0
    window_seconds: float = 26 * 3600.0
    max_attempts: int = 200

    def next_attempt_at(self, attempts: int, created_at_ms: int, now: int) -> int | None:
        """When to try again after `attempts` failed tries; None when the delivery has run out."""
        if attempts >= self.max_attempts or now - created_at_ms >= self.window_seconds * 1000:
            return None
        ceiling = min(self.cap_seconds, self.base_seconds * 2 ** min(attempts - 1, 40))
        return now + int(1000 * random.uniform(0, ceiling))


class CallbackDeliverer:
    def __init__(self, *, store: Store, policy: OutboundPolicy, build_record: Callable[[RowMapping], dict[str, Any]],
                 retry: RetryPolicy, timeout_seconds: float = 15.0, concurrency: int = 16,
                 per_account: int = 4) -> None:
        self.store = store
        self.policy = policy
        self.build_record = build_record
        self.retry = retry
        self.timeout = timeout_seconds
        self.concurrency = concurrency
        # Deliveries in flight for one account: its hanging receivers cannot take every slot.
        self.per_account = max(1, min(per_account, concurrency))
        self._in_flight: Counter[int] = Counter()
        self._accounts: dict[asyncio.Task[None], int] = {}
        self._delivery_ids: dict[asyncio.Task[None], str] = {}
        self._stopping = False
        self._lease_ms = int((timeout_seconds + 30) * 1000)
        self._sending: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    async def start(self) -> None:
        await self.store.callback_wakeup.listen()
        self._loop_task = asyncio.create_task(self._run(), name="callback-delivery")

    async def stop(self) -> None:
        self._stopping = True  # the loop ends even if a cancellation were lost
        if self._loop_task:
            self._loop_task.cancel()
        interrupted = [self._delivery_ids[task] for task in self._sending if task in self._delivery_ids]
        for task in list(self._sending):
            task.cancel()
        loops = [self._loop_task] if self._loop_task else []
        await asyncio.gather(*self._sending, *loops, return_exceptions=True)
        if interrupted:
            # Their leases would keep them from the next process for the rest of the lease: hand them back.
            with contextlib.suppress(Exception):
                await self.store.callbacks.release(interrupted)

    async def _run(self) -> None:
        wakeup = self.store.callback_wakeup
        while not self._stopping:
            try:
                free = self.concurrency - len(self._sending)
                busy = {account: count for account, count in self._in_flight.items() if count}
                # One instant for the claim and for the next wake-up: a delivery that falls due in
                # between is then the next wake-up, not left behind until the idle check.
                at = now_ms()
                for delivery in await self.store.callbacks.claim_due(free, self._lease_ms, at=at,
                                                                     per_account=self.per_account, busy=busy):
                    self._in_flight[delivery["account_id"]] += 1
                    task = asyncio.create_task(self._deliver(delivery))
                    self._sending.add(task)
                    self._accounts[task] = delivery["account_id"]
                    self._delivery_ids[task] = delivery["id"]
                    task.add_done_callback(self._done)
                # Sleep until the next scheduled retry, or until a new delivery or a free slot pokes
                # the wakeup. Deliveries due at the claim but not taken wait for a slot.
                next_due = await self.store.callbacks.next_due_at(after=at)
                delay = IDLE_CHECK_SECONDS if next_due is None else (next_due - now_ms()) / 1000
                await wakeup.wait(min(max(delay, 0.01), IDLE_CHECK_SECONDS))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("callback delivery loop error; retrying")
                await asyncio.sleep(1)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._delivery_ids.pop(task, None)
        account = self._accounts.pop(task, None)
        if account is not None:
            self._in_flight[account] -= 1
        self.store.callback_wakeup.poke()  # a slot is free

    async def _deliver(self, delivery: RowMapping) -> None:
        status_code: int | None = None
        error = ""
        permanent = False
        started = time.perf_counter()
        span = tracing.Span()
        try:
            row = await self.store.tasks.get(delivery["task_id"])
            if row is None:
                raise LookupError(f"task {delivery['task_id']} of callback {delivery['id']} does not exist")
            span = tracing.start_span("safelight.callback", parent=row["trace_context"], task_id=row["id"],
                                      attempt=delivery["attempts"])
            body, task_id, secret = await self._body(row)
            headers = signature_headers(secret=secret, task_id=task_id, webhook_id=delivery["id"],
                                        timestamp=int(time.time()), body=body)
            headers.update({"Content-Type": "application/json", "User-Agent": USER_AGENT})
            response = await post_json(delivery["url"], body, headers=headers, policy=self.policy,
                                       timeout=self.timeout)
            status_code = response.status
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except UnsafeURLError as exc:
            # The address will not become allowed by waiting: stop instead of retrying for a day.
            error, permanent = f"refused: {exc.reason}", True
        except FetchError as exc:
            error = exc.reason
        except Exception as exc:  # never let one delivery kill the loop
            log.exception("callback %s failed unexpectedly", delivery["id"])
            error = f"internal error: {type(exc).__name__}"
        elapsed = time.perf_counter() - started
        latency_ms = int(elapsed * 1000)
        delivered = not error
        metrics.CALLBACK_DELIVERY_SECONDS.observe(elapsed)
        retry_at = None
        if not delivered and not permanent:
            retry_at = self.retry.next_attempt_at(delivery["attempts"], delivery["created_at"], now_ms())
        await self.store.callbacks.record_attempt(delivery, status_code=status_code, latency_ms=latency_ms,
                                                  error=error, delivered=delivered, retry_at=retry_at)
        metrics.CALLBACKS.labels("delivered" if delivered else "retry" if retry_at else "gave_up").inc()
        span.end(error=error or None)
        context = {"task_id": delivery["task_id"], "account": delivery["account_id"]}
        if delivered:
            log.info("callback %s for task %s delivered (attempt %d, HTTP %s, %d ms)", delivery["id"],
                     delivery["task_id"], delivery["attempts"], status_code, latency_ms, extra=context)
        else:
            level = logging.INFO if retry_at else logging.WARNING
            log.log(level, "callback %s for task %s attempt %d: %s%s", delivery["id"], delivery["task_id"],
                    delivery["attempts"], error, "" if retry_at else " (giving up)", extra=context)

    async def _body(self, row: RowMapping) -> tuple[bytes, str, str]:
        balance, secret = await self.store.accounts.balance_and_webhook_key(row["account_id"])
        return callback_body(self.build_record(row), balance), row["id"], secret
