"""Accounts, API keys and the credit ledger."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, true, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .db import Database, now_ms
from .tables import accounts, api_keys
from .tables import credit_ledger as ledger

KEY_PREFIX = "sl_"


class InsufficientCredits(Exception):
    def __init__(self, needed: int, balance: int) -> None:
        super().__init__(f"insufficient credits: this task costs {needed}, the balance is {balance}")
        self.needed, self.balance = needed, balance


class NotFound(LookupError):
    pass


@dataclass(frozen=True)
class CreatedKey:
    account_id: int
    account_name: str
    key_id: int
    key: str  # shown once; only its hash is stored
    account_existed: bool = False  # the key was added to an account that already existed
    balance: int = 0  # the account's balance after any credits granted with the key


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_webhook_key() -> str:
    # Standard Webhooks format, so its libraries verify our callbacks as they are.
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


async def add_ledger_entry(conn: AsyncConnection, account_id: int, amount: int, kind: str, *,
                           task_id: str | None = None, note: str = "", at: int | None = None,
                           require_funds: bool = False) -> int | None:
    """Move `amount` credits (negative = debit) and record it. Returns the new balance.

    With require_funds, the debit happens only if the balance covers it (one conditional UPDATE,
    so concurrent reservations can never overdraw); None means it did not.
    """
    guard = accounts.c.balance >= -amount if require_funds else true()
    new_balance: int | None = (
        await conn.execute(
            update(accounts)
            .where(accounts.c.id == account_id, guard)
            .values(balance=accounts.c.balance + amount)
            .returning(accounts.c.balance)
        )
    ).scalar_one_or_none()
    if new_balance is None:
        return None
    await conn.execute(insert(ledger).values(account_id=account_id, task_id=task_id, kind=kind, amount=amount,
                                             balance_after=new_balance, note=note, created_at=at or now_ms()))
    return new_balance


class AccountStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create_key(self, name: str, *, account: str | None = None, credits: int = 0) -> CreatedKey:
        """A new key, on the named account (created if missing, with `credits` granted)."""
        account_name = account or name
        key = KEY_PREFIX + secrets.token_urlsafe(30)
        at = now_ms()
        async with self.db.write() as conn:
            account_id = (await conn.execute(select(accounts.c.id).where(accounts.c.name == account_name))
                          ).scalar_one_or_none()
            existed = account_id is not None
            if account_id is None:
                account_id = (await conn.execute(
                    insert(accounts).values(name=account_name, balance=0, webhook_key=new_webhook_key(),
                                            created_at=at).returning(accounts.c.id))).scalar_one()
            if credits:
                await add_ledger_entry(conn, account_id, credits, "grant", note="granted with a new key", at=at)
            key_id = (await conn.execute(
                insert(api_keys).values(account_id=account_id, name=name, key_hash=hash_key(key),
                                        prefix=key[: len(KEY_PREFIX) + 6], created_at=at).returning(api_keys.c.id)
            )).scalar_one()
            balance = await self.balance(account_id, conn=conn)
        return CreatedKey(account_id=account_id, account_name=account_name, key_id=key_id, key=key,
                          account_existed=existed, balance=balance)

    async def authenticate(self, key: str) -> int | None:
        """The account id of a live key, or None."""
        async with self.db.read() as conn:
            account_id: int | None = (await conn.execute(
                select(api_keys.c.account_id).where(api_keys.c.key_hash == hash_key(key),
                                                    api_keys.c.revoked_at.is_(None))
            )).scalar_one_or_none()
            return account_id

    async def list_keys(self) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(api_keys.c.id, api_keys.c.name, api_keys.c.prefix, api_keys.c.created_at,
                       api_keys.c.revoked_at, accounts.c.name.label("account"), accounts.c.balance)
                .join(accounts, accounts.c.id == api_keys.c.account_id).order_by(api_keys.c.id))
            return [dict(row._mapping) for row in rows]

    async def count_keys(self) -> int:
        async with self.db.read() as conn:
            count: int = (await conn.execute(select(func.count()).select_from(api_keys))).scalar_one()
            return count

    async def revoke_key(self, key_id_or_prefix: str) -> int:
        """Revoke by numeric id or by the displayed prefix; returns how many keys were revoked."""
        condition = (api_keys.c.id == int(key_id_or_prefix) if key_id_or_prefix.isdigit()
                     else api_keys.c.prefix == key_id_or_prefix)
        async with self.db.write() as conn:
            result = await conn.execute(update(api_keys).where(condition, api_keys.c.revoked_at.is_(None))
                                        .values(revoked_at=now_ms()))
            return int(result.rowcount)

    async def resolve_account(self, conn: AsyncConnection, account: str) -> int:
        condition = accounts.c.name == account
        if account.isdigit():
            condition = condition | (accounts.c.id == int(account))
        account_id: int | None = (await conn.execute(select(accounts.c.id).where(condition))).scalars().first()
        if account_id is None:
            raise NotFound(f"no account named {account!r}")
        return account_id

    async def add_credits(self, account: str, amount: int, note: str = "granted by operator") -> int:
        async with self.db.write() as conn:
            account_id = await self.resolve_account(conn, account)
            balance = await add_ledger_entry(conn, account_id, amount, "grant" if amount >= 0 else "adjust",
                                             note=note, require_funds=amount < 0)
            if balance is None:
                raise InsufficientCredits(-amount, await self.balance(account_id, conn=conn))
            return balance

    async def balance(self, account_id: int, conn: AsyncConnection | None = None) -> int:
        query = select(accounts.c.balance).where(accounts.c.id == account_id)
        if conn is not None:
            return int((await conn.execute(query)).scalar_one())
        async with self.db.read() as read_conn:
            return int((await read_conn.execute(query)).scalar_one())

    async def ledger_sum(self, account_id: int) -> int:
        async with self.db.read() as conn:
            return int((await conn.execute(select(func.coalesce(func.sum(ledger.c.amount), 0))
                                           .where(ledger.c.account_id == account_id))).scalar_one())

    async def balance_and_webhook_key(self, account_id: int) -> tuple[int, str]:
        """What a callback needs from the account, in one read."""
        async with self.db.read() as conn:
            row = (await conn.execute(select(accounts.c.balance, accounts.c.webhook_key)
                                      .where(accounts.c.id == account_id))).one()
            return int(row.balance), str(row.webhook_key)

    async def webhook_key(self, account: str, *, rotate: bool = False) -> str:
        async with self.db.write() as conn:
            account_id = await self.resolve_account(conn, account)
            if rotate:
                await conn.execute(update(accounts).where(accounts.c.id == account_id)
                                   .values(webhook_key=new_webhook_key()))
            return str((await conn.execute(select(accounts.c.webhook_key).where(accounts.c.id == account_id))
                        ).scalar_one())
