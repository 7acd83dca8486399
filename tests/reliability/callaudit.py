"""Metered calls through a real gateway under faults, and the per-call audit of what the ledger made of them.

Shared by test_connection_faults.py and test_gateway_crash.py: `Caller` threads post tool calls over
HTTP with an Idempotency-Key and retry the same key while the gateway says the ledger is unavailable;
each `Call` records every answer it got. `audit()` then holds every call id to the contract:

* at most one charge per request id, ever;
* no tracking row left pending, no hold left held;
* a call the gateway answered as run and billed (200 charged / pending) ends charged exactly once, at
  the tool's price less what was written off for it (billing.write_offs: a price the hold, the balance
  and the limits did not cover; the write-off and the charge add up to the price), at the transaction
  the answer named, and a "charged" answer reports the same written_off_usd; one answered as a tool
  error, or only ever refused / unavailable before running, is not charged and its hold is closed;
* a call whose answer was lost (the gateway was killed) may end either way, but consistently:
  completed = charged once at its price, failed = not charged;
* per user: balance = funding - the charges, never below zero, no open holds; `billing.verify_ledger()`
  is empty.

Every violation is returned as a line of text, so a test asserts the list is empty and shows them all.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import jwt
import psycopg
from psycopg.rows import dict_row

from api.gateway.http.envelope import scoped_request_id
from api.jsonio import loads
from api.ledger import sync as ledger

CENT = Decimal("0.00000001")

# The test gateway's tools (tests/gateway/tools.toml) a caller picks from: name -> (arguments, price, succeeds).
def metered_price(tokens: int) -> Decimal:
    return (Decimal(tokens) * Decimal("0.000002") * Decimal("1.5")).quantize(CENT)


def pick_tool(rng: random.Random, *, slow_seconds: float = 0.0) -> tuple[str, dict[str, Any], Decimal, bool]:
    """A tool call: (name, arguments, price when it succeeds, whether it succeeds)."""
    roll = rng.random()
    if slow_seconds and roll < 0.3:
        return "slow", {"seconds": round(rng.uniform(0.05, slow_seconds), 3)}, Decimal("0.01"), True
    if roll < 0.55:
        return "priced", {"text": uuid.uuid4().hex[:8]}, Decimal("0.02"), True
    if roll < 0.7:
        return "micro", {}, Decimal("0.0003"), True
    if roll < 0.9:
        tokens = rng.randrange(1, 5000)
        return "metered", {"tokens": tokens}, metered_price(tokens), True
    return "broken", {}, Decimal(0), False


@dataclass
class Call:
    key: str  # the Idempotency-Key
    user_id: uuid.UUID
    tool: str
    price: Decimal  # what a successful run costs
    succeeds: bool
    answers: list[str] = field(default_factory=list)  # one per attempt, see Caller.attempt
    transaction_id: int | None = None  # named by a "charged" answer
    written_off_usd: Decimal | None = None  # reported by a "charged" answer (0 when it reports none)
    # Who sent the key (Identity.label): the gateway's request id is the key scoped to it. None: the
    # key is the request id itself (calls made through the SQL API).
    principal: str | None = None

    @property
    def request_id(self) -> str:
        return self.key if self.principal is None else scoped_request_id(self.principal, self.key)

    @property
    def ran(self) -> bool:
        """The gateway answered that the tool ran (its result came back)."""
        return any(answer in ("charged", "pending", "not_charged", "tool_error") for answer in self.answers)

    @property
    def lost(self) -> bool:
        """An attempt got no HTTP answer (the gateway died under it): the outcome is unknown to the caller."""
        return any(answer.startswith("lost") for answer in self.answers)


class Caller(threading.Thread):
    """One client: calls tools until `stop` is set, retrying a key while the ledger is unavailable."""

    def __init__(
        self,
        base_url: str,
        token: str,
        user_id: uuid.UUID,
        rng: random.Random,
        stop: threading.Event,
        *,
        prefix: str,
        slow_seconds: float = 0.0,
        max_attempts: int = 30,
        replay_ratio: float = 0.15,
    ) -> None:
        super().__init__(daemon=True, name=f"caller-{prefix}")
        self.base_url = base_url
        self.token = token
        self.principal = "user:" + jwt.decode(token, options={"verify_signature": False})["sub"]
        self.user_id = user_id
        self.rng = rng
        self.stop = stop
        self.prefix = prefix
        self.slow_seconds = slow_seconds
        self.max_attempts = max_attempts
        self.replay_ratio = replay_ratio
        self.calls: list[Call] = []
        self.replays_refused = 0  # a key replayed after its answer: must be refused with 409
        self.unexpected: list[str] = []

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=30) as client:
            while not self.stop.is_set():
                tool, arguments, price, succeeds = pick_tool(self.rng, slow_seconds=self.slow_seconds)
                key = f"{self.prefix}-{uuid.uuid4().hex[:16]}"
                call = Call(key, self.user_id, tool, price, succeeds, principal=self.principal)
                self.calls.append(call)
                if self.settle(client, call, arguments).startswith("lost"):
                    return  # the gateway is gone; this caller's run is over
                if call.ran and self.rng.random() < self.replay_ratio and not self.stop.is_set():
                    # The client cannot know its answer arrived intact: it retries a finished call.
                    answer = self.settle(client, call, arguments)
                    if answer.startswith("lost"):
                        return
                    if answer != "already":
                        self.unexpected.append(f"{call.key}: a replay of a finished call answered {answer}")
                    else:
                        self.replays_refused += 1

    def settle(self, client: httpx.Client, call: Call, arguments: dict[str, Any]) -> str:
        """Attempts with the call's key until the gateway gives an answer other than "unavailable"."""
        answer = "unavailable"
        for attempt in range(self.max_attempts):
            answer = self.attempt(client, call, arguments)
            if answer != "unavailable":
                break
            time.sleep(min(0.05 * (attempt + 1), 0.5))
        return answer

    def attempt(self, client: httpx.Client, call: Call, arguments: dict[str, Any]) -> str:
        try:
            reply = client.post(f"/api/tools/{call.tool}", json=arguments, headers={"Idempotency-Key": call.key})
        except httpx.TransportError as exc:
            answer = f"lost:{type(exc).__name__}"
            call.answers.append(answer)
            return answer
        body = loads(reply.content) if reply.content else {}
        if reply.status_code == 200:
            answer = str(body["billing"]["status"])
            if answer == "charged":
                call.transaction_id = body["billing"]["transaction_id"]
                call.written_off_usd = body["billing"].get("written_off_usd", Decimal(0))
        elif reply.status_code == 502 and body.get("error", {}).get("code") == "tool_error":
            answer = "tool_error"
        elif reply.status_code == 503:
            answer = "unavailable"
        elif reply.status_code == 409 and body.get("error", {}).get("code") == "already_completed":
            answer = "already"
        elif reply.status_code in (402, 429):
            answer = "refused"
        else:
            answer = f"http{reply.status_code}"
            self.unexpected.append(f"{call.key}: HTTP {reply.status_code} {reply.text[:300]}")
        call.answers.append(answer)
        return answer


def fund_users(conn: psycopg.Connection[Any], count: int, amount: Decimal, prefix: str) -> list[tuple[str, uuid.UUID]]:
    """`count` users (subject, id), each topped up with `amount` and limits far above what a run spends."""
    users = []
    for _ in range(count):
        subject = f"{prefix}-{uuid.uuid4().hex[:10]}"
        user_id = ledger.ensure_account(conn, subject)
        ledger.top_up(conn, user_id, amount, "test", uuid.uuid4().hex)
        ledger.update_settings(conn, user_id, daily_limit_usd=Decimal(10**6), monthly_limit_usd=Decimal(10**6))
        users.append((subject, user_id))
    return users


@dataclass
class AuditReport:
    violations: list[str]
    outcomes: Counter[str]  # charged / not_charged (tool failed or never ran) / absent (never reached the ledger)
    charged_usd: Decimal


def audit(conn: psycopg.Connection[Any], calls: list[Call], funding: dict[uuid.UUID, Decimal]) -> AuditReport:
    """Every call id and every user held to the contract (module docstring); `conn` is an owner connection."""
    violations: list[str] = []
    outcomes: Counter[str] = Counter()
    keys = [call.request_id for call in calls]
    with conn.cursor(row_factory=dict_row) as cur:
        tracking = {
            row["request_id"]: row
            for row in cur.execute(
                "SELECT request_id, status, price_usd, transaction_id, user_id FROM billing.cost_tracking"
                " WHERE request_id = ANY(%s)",
                (keys,),
            )
        }
        holds = {
            row["request_id"]: row
            for row in cur.execute(
                "SELECT request_id, status, user_id FROM billing.reservations WHERE request_id = ANY(%s)", (keys,)
            )
        }
        written_off = {
            row["request_id"]: row
            for row in cur.execute(
                "SELECT request_id, user_id, price_usd, charged_usd, written_off_usd, transaction_id"
                " FROM billing.write_offs WHERE request_id = ANY(%s)",
                (keys,),
            )
        }
        charges: dict[str, list[dict[str, Any]]] = {}
        for row in cur.execute(
            "SELECT id, request_id, amount_usd, user_id FROM billing.billing_transactions"
            " WHERE type = 'charge' AND request_id = ANY(%s)",
            (keys,),
        ):
            charges.setdefault(row["request_id"], []).append(row)
    charged_by_user: dict[uuid.UUID, Decimal] = {}
    for call in calls:
        where = f"{call.key} ({call.tool}, answers {call.answers})"
        track = tracking.get(call.request_id)
        hold = holds.get(call.request_id)
        rows = charges.get(call.request_id, [])
        write_off = written_off.get(call.request_id)
        lost_usd = Decimal(0) if write_off is None else write_off["written_off_usd"]
        if len(rows) > 1:
            violations.append(f"{where}: charged {len(rows)} times")
        if hold is not None and hold["status"] == "held":
            violations.append(f"{where}: its hold is still held")
        if track is None:
            outcomes["absent"] += 1
            if rows or hold is not None:
                violations.append(f"{where}: money moved for a call that was never tracked")
            if call.ran:
                violations.append(f"{where}: answered as run, but the ledger never tracked it")
            continue
        if track["status"] == "pending":
            violations.append(f"{where}: its tracking row is still pending")
            continue
        completed = track["status"] == "completed"
        charged = bool(rows)
        if write_off is not None and (
            not completed
            or write_off["user_id"] != call.user_id
            or write_off["price_usd"] != call.price
            or write_off["transaction_id"] != (rows[0]["id"] if rows else None)
        ):
            violations.append(f"{where}: written off {write_off}, but the call is {track['status']} at {call.price}")
        if completed:
            if not call.succeeds:
                violations.append(f"{where}: a failing tool's call was completed as a success")
            if call.price - lost_usd > 0 and len(rows) != 1:
                violations.append(f"{where}: completed at {call.price} but charged {len(rows)} times")
            for row in rows:
                if row["amount_usd"] != lost_usd - call.price:
                    violations.append(
                        f"{where}: charged {row['amount_usd']}, expected {lost_usd - call.price}"
                        f" (price {call.price}, written off {lost_usd})"
                    )
                if track["transaction_id"] != row["id"]:
                    violations.append(f"{where}: tracking points at {track['transaction_id']}, charge is {row['id']}")
                if row["user_id"] != call.user_id:
                    violations.append(f"{where}: charged user {row['user_id']}, caller is {call.user_id}")
            if hold is not None and hold["status"] != "settled" and call.price > 0:
                violations.append(f"{where}: completed, but its hold is {hold['status']}")
        elif charged:
            violations.append(f"{where}: {track['status']} but charged")
        # What the caller was told must agree with the ledger.
        said_billed = any(answer in ("charged", "pending") for answer in call.answers)
        said_failed = "tool_error" in call.answers
        if said_billed and not completed:
            violations.append(f"{where}: answered as run and billed, but the ledger has it {track['status']}")
        if said_failed and completed:
            violations.append(f"{where}: answered as a tool error, but the ledger completed it")
        if not call.ran and not call.lost and completed:
            violations.append(f"{where}: never answered as run (refused or unavailable), yet completed")
        if call.transaction_id is not None and (not rows or rows[0]["id"] != call.transaction_id):
            violations.append(f"{where}: answered with transaction {call.transaction_id}, ledger has {rows}")
        if call.written_off_usd is not None and call.written_off_usd != lost_usd:
            violations.append(f"{where}: answered with {call.written_off_usd} written off, ledger has {lost_usd}")
        outcomes["charged" if charged else "not_charged"] += 1
        for row in rows:
            charged_by_user[call.user_id] = charged_by_user.get(call.user_id, Decimal(0)) - row["amount_usd"]
    for user_id, funded in funding.items():
        summary = ledger.summary(conn, user_id)
        expected = funded - charged_by_user.get(user_id, Decimal(0))
        if summary["balance_usd"] != expected:
            violations.append(f"user {user_id}: balance {summary['balance_usd']}, funding - charges = {expected}")
        if summary["balance_usd"] < 0:
            violations.append(f"user {user_id}: balance {summary['balance_usd']} below zero")
        if summary["held_usd"] != 0:
            violations.append(f"user {user_id}: {summary['held_usd']} still held")
    # Nothing else moved these users' money: every charge row of theirs belongs to one of our calls.
    with conn.cursor() as cur:
        stray = cur.execute(
            "SELECT count(*) FROM billing.billing_transactions WHERE user_id = ANY(%s) AND type <> 'topup'"
            " AND NOT (coalesce(request_id, '') = ANY(%s))",
            (list(funding), keys),
        ).fetchone()
    if stray is not None and stray[0]:
        violations.append(f"{stray[0]} ledger row(s) of these users belong to no call of the run")
    for v in ledger.verify_ledger(conn):
        violations.append(f"verify_ledger: {v.invariant} user {v.user_id} tx {v.transaction_id}: {v.detail}")
    return AuditReport(violations, outcomes, sum(charged_by_user.values(), Decimal(0)))
