"""Circuit breakers: a backend that keeps failing transiently is skipped for a while.

Without one, a dead provider costs every task its timeouts and retries before the route moves on.
Each backend of a worker process has a breaker (routing-file options `breaker_failures`, default
5, and `breaker_cooldown_seconds`, default 30; `breaker_failures = 0` disables it):

    closed ──N transient failures in a row──▶ open ──cool-down──▶ half-open ──trial succeeds──▶ closed
                                               ▲                      │
                                               └──── trial fails ─────┘

- closed: every task tries the backend; a success resets the count.
- open: tasks skip the backend (the attempt log says "skipped") until the cool-down has passed.
- half-open: ONE task is let through as a trial; the others keep skipping it until the trial ends.

Only transient failures count (timeouts, 5xx, overload, an operator-side provider problem). A
permanent one (moderation, input the provider refuses) says nothing about the backend's health: it
neither counts nor resets, and a trial that ends so lets the next task be the trial.

Hand-written rather than taken from a library (pybreaker, aiobreaker, purgatory): those wrap the
call and raise when open, while the worker needs to ask first and move on along the route, to let
exactly one trial through, and to publish the state; that is this small state machine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from safelight import metrics

log = logging.getLogger(__name__)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class Permit(StrEnum):
    """What `Breaker.allow` answers."""

    SKIP = "skip"  # open, or half-open with its trial running: move on along the route
    CALL = "call"  # closed: try the backend
    TRIAL = "trial"  # half-open: this call is the one trial


@dataclass(frozen=True)
class BreakerView:
    """What a breaker shows: published with the worker's heartbeat, read by `safelight models routes`."""

    state: BreakerState
    failures: int  # transient failures in a row
    reason: str = ""  # the last transient failure, while not closed
    retry_at_ms: int | None = None  # when an open breaker lets a trial through (epoch ms)

    def to_json(self) -> dict[str, Any]:
        return {"state": str(self.state), "failures": self.failures, "reason": self.reason,
                "retryAt": self.retry_at_ms}


class Breaker:
    """One backend's breaker in one worker process. Not thread-safe: the worker's event loop owns it.

    The worker asks `allow()` before trying the backend, reports how the call went with `success()`
    or `failure(reason)` (a transient failure), and hands the permit back with `release(permit)`
    whatever happened: a trial that ended without telling (a permanent failure, a cancel) lets the
    next task be the trial. `on_change` is called after every change of state.
    """

    def __init__(self, backend: str, failures: int, cooldown_seconds: float, *,
                 clock: Callable[[], float] = time.monotonic, on_change: Callable[[Breaker], None] | None = None
                 ) -> None:
        self.backend = backend
        self.threshold = failures
        self.cooldown = cooldown_seconds
        self.clock = clock
        self.on_change = on_change
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.reason = ""
        self.opened_at = 0.0
        self.trial_running = False
        metrics.BACKEND_BREAKER_OPEN.labels(backend).set(0)

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    def allow(self) -> Permit:
        """Whether a task may try the backend now. In half-open, only the first caller gets the trial."""
        if self.state is BreakerState.CLOSED:
            return Permit.CALL
        if self.state is BreakerState.OPEN:
            if self.clock() - self.opened_at < self.cooldown:
                return Permit.SKIP
            self.trial_running = False
            self._set(BreakerState.HALF_OPEN)
            log.info("circuit breaker of backend %s is half-open: one trial task goes through", self.backend)
        if self.trial_running:
            return Permit.SKIP
        self.trial_running = True
        return Permit.TRIAL

    def success(self) -> None:
        self.failures = 0
        if self.state is not BreakerState.CLOSED:
            log.info("circuit breaker of backend %s closed: a task succeeded on it again", self.backend)
            self.reason = ""
            self.trial_running = False
            self._set(BreakerState.CLOSED)

    def failure(self, reason: str) -> None:
        """A transient failure of a call to the backend."""
        if not self.enabled:
            return
        self.failures += 1
        self.reason = " ".join(reason.removeprefix(f"backend {self.backend}: ").split())[:300]
        if self.state is BreakerState.HALF_OPEN:
            log.warning("circuit breaker of backend %s re-opened: the trial task failed (%s); skipping it for "
                        "%g s", self.backend, self.reason, self.cooldown)
            self._open()
        elif self.state is BreakerState.CLOSED and self.failures >= self.threshold:
            log.warning("circuit breaker of backend %s opened after %d transient failures in a row (last: %s); "
                        "skipping it for %g s", self.backend, self.failures, self.reason, self.cooldown)
            self._open()

    def release(self, permit: Permit) -> None:
        """The call `permit` allowed has ended; a trial that settled nothing frees the trial slot."""
        if permit is Permit.TRIAL and self.state is BreakerState.HALF_OPEN:
            self.trial_running = False

    def skip_reason(self) -> str:
        """Why a task skipped the backend, for its attempt log."""
        if self.state is BreakerState.OPEN:
            return (f"circuit breaker open after {self.failures} transient failures in a row (last: {self.reason}); "
                    f"one trial task goes through in {self.seconds_left():.0f} s")
        return "circuit breaker half-open: a trial task is running on it"

    def seconds_left(self) -> float:
        """Until an open breaker lets a trial through (0 when it would now)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.cooldown - (self.clock() - self.opened_at))

    def view(self) -> BreakerView:
        retry_at = None
        if self.state is BreakerState.OPEN:
            retry_at = int((time.time() + self.seconds_left()) * 1000)
        return BreakerView(self.state, self.failures, self.reason if self.state is not BreakerState.CLOSED else "",
                           retry_at)

    def _open(self) -> None:
        self.opened_at = self.clock()
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        changed = state is not self.state
        self.state = state
        metrics.BACKEND_BREAKER_OPEN.labels(self.backend).set(0 if state is BreakerState.CLOSED else 1)
        if self.on_change is not None and (changed or state is BreakerState.OPEN):
            self.on_change(self)
