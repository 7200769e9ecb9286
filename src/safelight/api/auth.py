"""`Authorization: Bearer <key>` -> account id, or code 401 in kie's envelope."""

from __future__ import annotations

from fastapi import Request

from safelight.admission import Admission
from safelight.kie import Code, KieError
from safelight.runtime import Runtime
from safelight.store import Store
from safelight.ttl_cache import TtlCache

# Revoking a key takes effect within this many seconds.
KEY_CACHE_TTL_SECONDS = 2.0


class ApiKeys:
    """Key -> account id, cached briefly: the hot routes then cost no database read."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cache: TtlCache[str, int] = TtlCache(KEY_CACHE_TTL_SECONDS)
        # Keys that are not valid, remembered as briefly, so a flood of bad keys costs no reads.
        # A separate cache: filling it with junk never evicts the valid keys.
        self.misses: TtlCache[str, bool] = TtlCache(KEY_CACHE_TTL_SECONDS)
        # A zero-lifetime cache: only its single-flight loading is used, so a lookup is never stale.
        self._lookups: TtlCache[str, int | None] = TtlCache(0.0)

    async def account_for(self, key: str) -> int | None:
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        if self.misses.get(key):
            return None
        # Concurrent requests with one key share one read (TtlCache.get_or_load).
        account_id = await self._lookups.get_or_load(key, lambda: self.store.accounts.authenticate(key))
        if account_id is None:
            self.misses.put(key, True)
        else:
            self.cache.put(key, account_id)
        return account_id


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def admission_of(request: Request) -> Admission:
    admission: Admission = request.app.state.admission
    return admission


def bearer_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    return key.strip()


async def account_of(request: Request) -> int | None:
    """The account of the request's bearer key, or None without a valid one."""
    key = bearer_key(request)
    if key is None:
        return None
    keys: ApiKeys = request.app.state.api_keys
    return await keys.account_for(key)


async def require_account(request: Request) -> int:
    key = bearer_key(request)
    if key is None:
        raise KieError(Code.UNAUTHORIZED, "You do not have access permissions: send Authorization: Bearer <API key>")
    account_id = await account_of(request)
    if account_id is None:
        raise KieError(Code.UNAUTHORIZED, "You do not have access permissions: the API key is not valid or "
                                          "was revoked")
    return account_id
