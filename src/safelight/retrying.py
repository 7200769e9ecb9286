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


def retry_context(*, retries: int, backoff_seconds: float, max_wait_seconds: float,
                  timeout_seconds: float | None = None) -> Attempts:
    """A stamina retry context (use with `for` or `async for`) that retries `TryAgain`.

    - `retries`: attempts after the first; 0 means one attempt only.
    - `backoff_seconds`: the first wait, drawn between half of it and all of it; it doubles with
      each attempt. A `TryAgain` with a `retry_after` waits that long instead.
    - `max_wait_seconds`: no single wait is longer, the server's Retry-After included.
    - `timeout_seconds`: give up once this much time has passed since the first attempt (None: no
      limit besides the attempts).
    """
    if retries < 0:
        raise ValueError("retries must be 0 or more")

    def hook(exc: Exception) -> bool | float:
        if not isinstance(exc, TryAgain):
            return False
        if exc.retry_after is None:
            return True  # stamina's exponential backoff
        return min(max(exc.retry_after, 0.0), max_wait_seconds)

    half = max(backoff_seconds, 0.0) / 2
    return stamina.retry_context(on=hook, attempts=retries + 1, timeout=timeout_seconds, wait_initial=half,
                                 wait_max=max(max_wait_seconds, 0.0), wait_jitter=half)
