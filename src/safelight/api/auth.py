"""Who is calling: `Authorization: Bearer <key>` -> a user key's grant (kie's code 401 otherwise), or an
admin key (the admin API: HTTP 401 without one, 403 for a user key)."""

from __future__ import annotations

from fastapi import Request

from safelight.admission import Admission
from safelight.kie import Code, KieError
from safelight.runtime import Runtime
from safelight.store import AdminKey, KeyGrant, Store
from safelight.store.accounts import ADMIN_KEY_PREFIX
from safelight.ttl_cache import TtlCache

# Revoking a key, or changing its limits or allowed addresses, takes effect within this many seconds.
KEY_CACHE_TTL_SECONDS = 2.0


class ApiKeys:
    """Key -> what it grants, cached briefly: the hot routes then cost no database read."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cache: TtlCache[str, KeyGrant] = TtlCache(KEY_CACHE_TTL_SECONDS)
        # Keys that are not valid, remembered as briefly, so a flood of bad keys costs no reads.
        # A separate cache: filling it with junk never evicts the valid keys.
        self.misses: TtlCache[str, bool] = TtlCache(KEY_CACHE_TTL_SECONDS)
        # A zero-lifetime cache: only its single-flight loading is used, so a lookup is never stale.
        self._lookups: TtlCache[str, KeyGrant | None] = TtlCache(0.0)
        self.admins: TtlCache[str, AdminKey | None] = TtlCache(KEY_CACHE_TTL_SECONDS)

    async def grant_for(self, key: str) -> KeyGrant | None:
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        if self.misses.get(key):
            return None
        # Concurrent requests with one key share one read (TtlCache.get_or_load).
        grant = await self._lookups.get_or_load(key, lambda: self.store.accounts.grant_for(key))
        if grant is None:
            self.misses.put(key, True)
        else:
            self.cache.put(key, grant)
        return grant

    async def admin_for(self, key: str) -> AdminKey | None:
        return await self.admins.get_or_load(key, lambda: self.store.accounts.admin_for(key))


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


def client_address(request: Request) -> str | None:
    """The caller's address as the server sees it (behind a proxy: uvicorn's --forwarded-allow-ips)."""
    return request.client.host if request.client else None


async def grant_of(request: Request) -> KeyGrant | None:
    """What the request's bearer key grants, or None without a valid user key. A key used from an
    address outside its allow-list is refused (code 401, naming the address)."""
    key = bearer_key(request)
    if key is None:
        return None
    keys: ApiKeys = request.app.state.api_keys
    grant = await keys.grant_for(key)
    if grant is not None and not grant.allows_address(client_address(request)):
        raise KieError(Code.UNAUTHORIZED, f"You do not have access permissions: this API key may not be used from "
                                          f"{client_address(request)} (its IP allow-list)")
    return grant


async def account_of(request: Request) -> int | None:
    """The account of the request's bearer key, or None without a valid one."""
    grant = await grant_of(request)
    return None if grant is None else grant.account_id


async def require_key(request: Request) -> KeyGrant:
    """The caller's user key, or kie's code 401 saying why there is none."""
    key = bearer_key(request)
    if key is None:
        raise KieError(Code.UNAUTHORIZED, "You do not have access permissions: send Authorization: Bearer <API key>")
    grant = await grant_of(request)
    if grant is None:
        if key.startswith(ADMIN_KEY_PREFIX):
            raise KieError(Code.UNAUTHORIZED, "You do not have access permissions: this is an admin key (sla_…); "
                                              "admin keys cannot create tasks or use the user API, only "
                                              "/api/admin and the console")
        raise KieError(Code.UNAUTHORIZED, "You do not have access permissions: the API key is not valid or "
                                          "was revoked")
    return grant


async def require_account(request: Request) -> int:
    return (await require_key(request)).account_id


async def require_admin(request: Request) -> AdminKey:
    """The caller's admin key; HTTP 401 without a valid one, 403 for a user key."""
    key = bearer_key(request)
    if key is None:
        raise KieError(Code.UNAUTHORIZED, "send Authorization: Bearer <admin key> (safelight keys create NAME "
                                          "--admin)", http_status=401)
    keys: ApiKeys = request.app.state.api_keys
    admin = await keys.admin_for(key)
    if admin is not None:
        return admin
    if await keys.grant_for(key) is not None:
        raise KieError(Code.FORBIDDEN, "this route needs an admin key; user keys cannot administer the server",
                       http_status=403)
    raise KieError(Code.UNAUTHORIZED, "the admin key is not valid or was revoked", http_status=401)
