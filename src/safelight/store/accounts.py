"""Accounts, API keys and the credit ledger."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, insert, select, true, update
from sqlalchemy.ext.asyncio import AsyncConnection

from safelight.kie import TaskState

from .audit import write_audit
from .db import Database, now_ms
from .tables import accounts, admin_keys, api_keys, tasks
from .tables import credit_ledger as ledger

KEY_PREFIX = "sl_"
# Admin keys look different, so a person (and the 401 on a user route) can tell them apart.
ADMIN_KEY_PREFIX = "sla_"
# An admin key's id in listings and on the admin API: "admin:<n>", beside user keys' plain integers.
ADMIN_KEY_ID = "admin:"
HOUR_MS, DAY_MS = 3_600_000, 86_400_000

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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


@dataclass(frozen=True)
class KeyLimits:
    """Credit caps of one user key (kie's sub-key limits); None = no cap."""

    hour: int | None = None
    day: int | None = None
    total: int | None = None

    def __bool__(self) -> bool:
        return self.hour is not None or self.day is not None or self.total is not None

    def as_dict(self) -> dict[str, int | None]:
        return {"hour": self.hour, "day": self.day, "total": self.total}


@dataclass(frozen=True)
class KeyGrant:
    """What a live user key grants: its account, and the caps and addresses it is held to."""

    account_id: int
    key_id: int
    limits: KeyLimits = KeyLimits()
    allowed_ips: tuple[IpNetwork, ...] | None = None

    def allows_address(self, address: str | None) -> bool:
        if self.allowed_ips is None:
            return True
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.allowed_ips)


@dataclass(frozen=True)
class AdminKey:
    key_id: int
    name: str
    prefix: str

    @property
    def actor(self) -> str:
        """How the audit log names this key."""
        return f"admin key {self.name} ({self.prefix})"


@dataclass(frozen=True)
class CreatedAdminKey:
    key_id: int
    name: str
    key: str  # shown once; only its hash is stored
    prefix: str


class KeyLimitExceeded(Exception):
    """A task would take a key past one of its credit caps; nothing was created or charged."""

    PERIODS = {"hour": "per hour", "day": "per day", "total": "in total"}

    def __init__(self, period: str, limit: int, spent: int, cost: int) -> None:
        super().__init__(f"Sub-key usage exceeds limit: this API key may spend at most {limit} credits "
                         f"{self.PERIODS[period]}; it has spent {spent} and this task costs {cost}")
        self.period, self.limit, self.spent, self.cost = period, limit, spent, cost


def parse_allowed_ips(entries: Sequence[str]) -> tuple[IpNetwork, ...]:
    """CIDRs or single addresses (IPv4 or IPv6); ValueError names the entry that is neither."""
    if not entries:
        raise ValueError("allowedIps must list at least one address or CIDR (null allows every address)")
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError:
            raise ValueError(f"allowedIps: {str(entry)[:60]!r} is not an IP address or CIDR "
                             "(such as 203.0.113.7 or 2001:db8::/32)") from None
    return tuple(networks)


def check_limit(name: str, value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"limits.{name} must be a whole number of credits >= 1, or null for no cap; got {value!r}")
    return value


async def key_usage_in(conn: AsyncConnection, key_ids: Sequence[int], at: int) -> dict[int, dict[str, int]]:
    """Credits charged to each key's tasks in the last hour, day and in all."""
    since_hour, since_day = at - HOUR_MS, at - DAY_MS
    charge = case((tasks.c.state == TaskState.FAIL, 0), else_=tasks.c.credits_reserved)
    rows = await conn.execute(
        select(tasks.c.api_key_id,
               func.coalesce(func.sum(case((tasks.c.create_time >= since_hour, charge), else_=0)), 0),
               func.coalesce(func.sum(case((tasks.c.create_time >= since_day, charge), else_=0)), 0),
               func.coalesce(func.sum(charge), 0))
        .where(tasks.c.api_key_id.in_(list(key_ids))).group_by(tasks.c.api_key_id))
    usage = {key_id: {"hour": 0, "day": 0, "total": 0} for key_id in key_ids}
    for key_id, hour, day, total in rows:
        usage[int(key_id)] = {"hour": int(hour), "day": int(day), "total": int(total)}
    return usage


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

    async def create_key(self, name: str, *, account: str | None = None, credits: int = 0,
                         actor: str | None = None) -> CreatedKey:
        """A new key, on the named account (created if missing, with `credits` granted). With an
        `actor`, the audit log records who made it."""
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
            if actor is not None:
                await write_audit(conn, actor=actor, action="key.create", target=f"key {key_id}",
                                  detail={"name": name, "account": account_name, "credits": credits,
                                          "prefix": key[: len(KEY_PREFIX) + 6]})
        return CreatedKey(account_id=account_id, account_name=account_name, key_id=key_id, key=key,
                          account_existed=existed, balance=balance)

    async def create_admin_key(self, name: str, *, actor: str | None = None) -> CreatedAdminKey:
        """A new admin key (console and admin API); it has no account and cannot create tasks."""
        key = ADMIN_KEY_PREFIX + secrets.token_urlsafe(30)
        prefix = key[: len(ADMIN_KEY_PREFIX) + 6]
        async with self.db.write() as conn:
            key_id = (await conn.execute(insert(admin_keys).values(
                name=name, key_hash=hash_key(key), prefix=prefix, created_at=now_ms()).returning(admin_keys.c.id)
            )).scalar_one()
            if actor is not None:
                await write_audit(conn, actor=actor, action="key.create", target=f"{ADMIN_KEY_ID}{key_id}",
                                  detail={"name": name, "admin": True, "prefix": prefix})
        return CreatedAdminKey(key_id=key_id, name=name, key=key, prefix=prefix)

    async def grant_for(self, key: str) -> KeyGrant | None:
        """What a live user key grants (its account, caps and allowed addresses), or None."""
        async with self.db.read() as conn:
            row = (await conn.execute(
                select(api_keys.c.id, api_keys.c.account_id, api_keys.c.limit_hour, api_keys.c.limit_day,
                       api_keys.c.limit_total, api_keys.c.allowed_ips)
                .where(api_keys.c.key_hash == hash_key(key), api_keys.c.revoked_at.is_(None))
            )).one_or_none()
        if row is None:
            return None
        allowed = None if row.allowed_ips is None else parse_allowed_ips(json.loads(row.allowed_ips))
        return KeyGrant(account_id=row.account_id, key_id=row.id,
                        limits=KeyLimits(row.limit_hour, row.limit_day, row.limit_total), allowed_ips=allowed)

    async def admin_for(self, key: str) -> AdminKey | None:
        """The live admin key `key` is, or None."""
        async with self.db.read() as conn:
            row = (await conn.execute(select(admin_keys.c.id, admin_keys.c.name, admin_keys.c.prefix).where(
                admin_keys.c.key_hash == hash_key(key), admin_keys.c.revoked_at.is_(None)))).one_or_none()
        return None if row is None else AdminKey(key_id=row.id, name=row.name, prefix=row.prefix)

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
                       api_keys.c.revoked_at, api_keys.c.account_id, accounts.c.name.label("account"),
                       accounts.c.balance, api_keys.c.limit_hour, api_keys.c.limit_day, api_keys.c.limit_total,
                       api_keys.c.allowed_ips)
                .join(accounts, accounts.c.id == api_keys.c.account_id).order_by(api_keys.c.id))
            keys = []
            for row in rows:
                key = dict(row._mapping)
                key["limits"] = {"hour": key.pop("limit_hour"), "day": key.pop("limit_day"),
                                 "total": key.pop("limit_total")}
                allowed = key.pop("allowed_ips")
                key["allowed_ips"] = None if allowed is None else json.loads(allowed)
                keys.append(key)
            return keys

    async def list_admin_keys(self) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            rows = await conn.execute(select(admin_keys.c.id, admin_keys.c.name, admin_keys.c.prefix,
                                             admin_keys.c.created_at, admin_keys.c.revoked_at)
                                      .order_by(admin_keys.c.id))
            return [dict(row._mapping) for row in rows]

    async def key_usage(self, key_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """Credits charged to each user key's tasks in the last hour, day, and in all."""
        async with self.db.read() as conn:
            return await key_usage_in(conn, key_ids, now_ms())

    async def set_key_limits(self, key_id: int, limits: KeyLimits, allowed_ips: Sequence[str] | None, *,
                             actor: str | None = None) -> None:
        """Set a user key's credit caps and IP allow-list (None: no cap, any address). ValueError names a
        bad value; NotFound an unknown key."""
        for name, value in limits.as_dict().items():
            check_limit(name, value)
        networks = None if allowed_ips is None else [str(net) for net in parse_allowed_ips(allowed_ips)]
        async with self.db.write() as conn:
            updated = await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(
                limit_hour=limits.hour, limit_day=limits.day, limit_total=limits.total,
                allowed_ips=None if networks is None else json.dumps(networks)))
            if updated.rowcount == 0:
                raise NotFound(f"no API key with id {key_id}")
            if actor is not None:
                await write_audit(conn, actor=actor, action="key.limits", target=f"key {key_id}",
                                  detail={**limits.as_dict(), "allowedIps": networks})

    async def count_keys(self) -> int:
        async with self.db.read() as conn:
            count: int = (await conn.execute(select(func.count()).select_from(api_keys))).scalar_one()
            return count

    async def revoke_key(self, key_id_or_prefix: str, *, actor: str | None = None) -> int:
        """Revoke by id (a user key's number, or `admin:<n>`) or by the displayed prefix (`sl_…`, `sla_…`);
        returns how many keys were revoked (0: unknown or already revoked)."""
        table, ident = api_keys, key_id_or_prefix.strip()
        if ident.startswith(ADMIN_KEY_ID) or ident.startswith(ADMIN_KEY_PREFIX):
            table, ident = admin_keys, ident.removeprefix(ADMIN_KEY_ID)
        condition = table.c.id == int(ident) if ident.isdigit() else table.c.prefix == ident
        async with self.db.write() as conn:
            revoked = (await conn.execute(update(table).where(condition, table.c.revoked_at.is_(None))
                                          .values(revoked_at=now_ms()).returning(table.c.id))).scalars().all()
            if actor is not None:
                for key_id in revoked:
                    target = f"{ADMIN_KEY_ID}{key_id}" if table is admin_keys else f"key {key_id}"
                    await write_audit(conn, actor=actor, action="key.revoke", target=target, detail={})
            return len(revoked)

    async def resolve_account(self, conn: AsyncConnection, account: str) -> int:
        condition = accounts.c.name == account
        if account.isdigit():
            condition = condition | (accounts.c.id == int(account))
        account_id: int | None = (await conn.execute(select(accounts.c.id).where(condition))).scalars().first()
        if account_id is None:
            raise NotFound(f"no account named {account!r}")
        return account_id

    async def add_credits(self, account: str, amount: int, note: str = "granted by operator", *,
                          actor: str | None = None) -> int:
        async with self.db.write() as conn:
            account_id = await self.resolve_account(conn, account)
            balance = await add_ledger_entry(conn, account_id, amount, "grant" if amount >= 0 else "adjust",
                                             note=note, require_funds=amount < 0)
            if balance is None:
                raise InsufficientCredits(-amount, await self.balance(account_id, conn=conn))
            if actor is not None:
                await write_audit(conn, actor=actor, action="credits.add", target=f"account {account}",
                                  detail={"amount": amount, "note": note, "balance": balance})
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

    async def webhook_key(self, account: str, *, rotate: bool = False, actor: str | None = None) -> str:
        async with self.db.write() as conn:
            account_id = await self.resolve_account(conn, account)
            if rotate:
                await conn.execute(update(accounts).where(accounts.c.id == account_id)
                                   .values(webhook_key=new_webhook_key()))
                if actor is not None:  # the secret itself is never logged
                    await write_audit(conn, actor=actor, action="webhook_secret.rotate",
                                      target=f"account {account}", detail={})
            return str((await conn.execute(select(accounts.c.webhook_key).where(accounts.c.id == account_id))
                        ).scalar_one())
