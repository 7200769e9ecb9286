"""`Authorization: Bearer <key>` -> account id, or code 401 in kie's envelope."""

from __future__ import annotations

from fastapi import Request

from .envelope import KieError
from .runtime import Runtime


def runtime_of(request: Request) -> Runtime:
    return request.app.state.runtime


def bearer_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    return key.strip()


async def require_account(request: Request) -> int:
    key = bearer_key(request)
    if key is None:
        raise KieError(401, "You do not have access permissions: send Authorization: Bearer <API key>")
    account_id = await runtime_of(request).account_for_key(key)
    if account_id is None:
        raise KieError(401, "You do not have access permissions: the API key is not valid or was revoked")
    return account_id
