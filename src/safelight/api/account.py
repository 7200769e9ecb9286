"""Account routes: the credit balance."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from .auth import require_account, runtime_of
from .envelope import EnvelopeResponse, envelope

router = APIRouter(tags=["account"])


@router.get("/api/v1/chat/credit", summary="Remaining credits")
async def credit(request: Request, account_id: int = Depends(require_account)) -> EnvelopeResponse:
    return envelope(await runtime_of(request).store.accounts.balance(account_id))
