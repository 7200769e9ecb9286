"""Fixtures for the SDK tests: the fake kie.ai of tests/fake_kie.py in a thread, and a second one as a CDN.

`API_KEY`, `FakeKie` and `ServerThread` are re-exported for tests/test_packaging.py; tests import them
from `tests.fake_kie`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.fake_kie import API_KEY, FakeKie, ServerThread

__all__ = ["API_KEY", "FakeKie", "ServerThread"]

# Tiny retry settings, so the retry and backoff paths run in milliseconds.
FAST = {"retry_backoff": 0.01, "retry_max_backoff": 0.05, "retry_budget": 5.0}


@pytest.fixture(scope="session")
def _kie_servers() -> Iterator[tuple[FakeKie, FakeKie]]:
    with FakeKie() as main, FakeKie() as cdn:
        yield main, cdn


@pytest.fixture
def kie(_kie_servers: tuple[FakeKie, FakeKie], monkeypatch: pytest.MonkeyPatch) -> FakeKie:
    """The fake kie.ai, reset; the SDK's environment variables cleared so tests pass settings explicitly."""
    for name in ("SAFELIGHT_API_KEY", "SAFELIGHT_BASE_URL", "SAFELIGHT_UPLOAD_BASE_URL", "KIE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    fake = _kie_servers[0]
    fake.reset()
    return fake


@pytest.fixture
def cdn(_kie_servers: tuple[FakeKie, FakeKie]) -> FakeKie:
    """A second fake server on another port, standing in for a result CDN."""
    fake = _kie_servers[1]
    fake.reset()
    return fake


@pytest.fixture
def client_kwargs(kie: FakeKie) -> dict[str, Any]:
    return {"api_key": API_KEY, "base_url": kie.base_url, **FAST}
