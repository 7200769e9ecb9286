"""Account routes: the credit balance."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from .auth import require_account, runtime_of
from .envelope import EnvelopeResponse, envelope
from .shapes import CreditReply

router = APIRouter(tags=["account"])


@router.get("/api/v1/chat/credit", summary="Remaining credits", responses={200: {"model": CreditReply}})
async def credit(request: Request, account_id: int = Depends(require_account)) -> EnvelopeResponse:
    return envelope(await runtime_of(request).store.accounts.balance(account_id))
