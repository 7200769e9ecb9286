"""One way to retry a call: a bounded budget of attempts with exponential backoff, honouring Retry-After.

Built on `stamina` (which wraps tenacity). The code inside the retry block raises `TryAgain` for a
failure worth another attempt, carrying the server's Retry-After if it sent one; every other
exception ends the block at once. When the budget is spent, the last `TryAgain` propagates, and
the caller turns it into its own error::

    try:
        async for attempt in retry_context(retries=3, backoff_seconds=1.0, max_wait_seconds=30.0):
            with attempt:
                response = await send()
                if response.status_code == 503:
                    raise TryAgain("HTTP 503", retry_after_seconds(response.headers.get("retry-after")))
                return response
    except TryAgain as exc:
        ...  # gave up

This module uses the standard library and stamina only, so the SDK (which installs without the
server) can use it too. Tests may call `stamina.set_testing(True, attempts=...)` to skip the waits.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import AsyncIterator, Iterator
from email.utils import parsedate_to_datetime
from typing import Protocol

import stamina

__all__ = ["Attempts", "TryAgain", "retry_after_seconds", "retry_context"]


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds a Retry-After header value asks for: delta-seconds or an HTTP date (RFC 9110 §10.2.3).

    None when the value is absent or unreadable; a date in the past is 0.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" dates parse naive; HTTP dates are always UTC
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - dt.datetime.now(dt.UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class TryAgain(Exception):
    """A failure worth another attempt (overload, a 5xx, a dropped connection), raised inside a
    `retry_context` block. `retry_after` is the wait the server asked for, in seconds, if any."""

    def __init__(self, problem: str, retry_after: float | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.retry_after = retry_after


class Attempts(Protocol):
    """What `retry_context` returns: stamina's attempts, each a context manager around one try."""

    def __iter__(self) -> Iterator[stamina.Attempt]: ...

    def __aiter__(self) -> AsyncIterator[stamina.Attempt]: ...


def backoff_delay(attempt: int, backoff_seconds: float, max_backoff_seconds: float) -> float:
    """The wait before retry number `attempt` (0-based): "equal jitter", between half and all of
    `backoff_seconds * 2**attempt`, capped. Never 0, and clients that failed together spread out."""
    ceiling = min(max_backoff_seconds, max(backoff_seconds, 0.0) * 2.0 ** min(attempt, 40))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def retry_context(*, retries: int, backoff_seconds: float, max_wait_seconds: float,
                  max_backoff_seconds: float | None = None, budget_seconds: float | None = None,
                  timeout_seconds: float | None = None) -> Attempts:
    """A stamina retry context (use with `for` or `async for`) that retries `TryAgain`.

    - `retries`: attempts after the first; 0 means one attempt only.
    - `backoff_seconds`: the first wait, between half of it and all of it; it doubles with each
      attempt (`backoff_delay`). A `TryAgain` with a `retry_after` waits that long instead.
    - `max_backoff_seconds`: the cap of that doubling (default: `max_wait_seconds`).
    - `max_wait_seconds`: no single wait is longer, the server's Retry-After included.
    - `budget_seconds`: give up rather than wait so long that the waits of this call add up to more.
    - `timeout_seconds`: give up once this much time has passed since the first attempt.
    """
    if retries < 0:
        raise ValueError("retries must be 0 or more")
    cap = max_wait_seconds if max_backoff_seconds is None else min(max_backoff_seconds, max_wait_seconds)
    waited = 0.0
    retry = 0

    def hook(exc: Exception) -> bool | float:
        nonlocal waited, retry
        if not isinstance(exc, TryAgain):
            return False
        if exc.retry_after is not None:
            delay = min(max(exc.retry_after, 0.0), max_wait_seconds)
        else:
            delay = backoff_delay(retry, backoff_seconds, cap)
        if budget_seconds is not None and waited + delay > budget_seconds:
            return False  # the budget is spent: the TryAgain propagates
        waited += delay
        retry += 1
        return delay

    return stamina.retry_context(on=hook, attempts=retries + 1, timeout=timeout_seconds)
