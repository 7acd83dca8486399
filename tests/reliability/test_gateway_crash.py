"""The gateway SIGKILLed in the middle of metered calls, PARAMS.gateway_cycles times, then restarted.

Each cycle starts a real `tollgate run` (on one data directory for the whole test, so a restarted
gateway finds the spool its predecessor left), has several clients call metered tools — slow ones
included, so calls are in flight — and kills it at a random moment (PARAMS.seed). In about half the
cycles the ledger first becomes unreachable (a proxy, tests/reliability/faultproxy.py, refuses and
cuts the gateway's connections) so that tools finish while their completions cannot be written: those
are spooled, and the kill lands while they wait.

After the kill:
* every completion the dead gateway spooled is for a call `billing.unbilled_calls` lists (or one that
  committed unheard): unbilled completed calls are visible and found by reconciliation;
* the spool is replayed — by `tollgate ledger reconcile` while no gateway runs (odd cycles) or by
  the restarted gateway itself (even cycles) — and billed once;
* a call the kill cut short is still pending with its hold held; holds are short-lived here
  (billing.configure hold_ttl), so once it lapses `billing.reap_expired_holds` expires them, and
  `tollgate ledger reconcile --fail-stale-minutes 0` closes such calls as failed, not charged;
* a pending call that is neither spooled nor lost by the kill is unexplained: a violation.

At the end every call id is audited (tests/reliability/callaudit.py): charged exactly once (at its
price, if it was answered as billed or completed) or not charged with its hold closed, balances =
funding - charges, nothing pending or held, verify_ledger empty.
"""

from __future__ import annotations

import datetime as dt
import random
import signal
import threading
import time
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from api.gateway.spool import Spool
from api.ledger import db as apidb
from api.ledger import sync as ledger
from tests.gateway.server import Gateway, start_gateway
from tests.reliability.callaudit import Call, Caller, audit, fund_users
from tests.reliability.faultproxy import FaultProxy
from tests.reliability.params import PARAMS, report
from tests.reliability.test_connection_faults import reconcile, wait_until

CALLERS = 4
FUNDING = Decimal("100")
HOLD_TTL = dt.timedelta(seconds=3)


def start(proxy: FaultProxy, db_url: str, data_dir: Path) -> Gateway:
    return start_gateway(proxy.proxy_url(db_url), data_dir, TOLLGATE_POOL_TIMEOUT_SECONDS="1")


def pending_calls(owner: psycopg.Connection[Any]) -> set[str]:
    return {row.request_id for row in ledger.unbilled_calls(owner)}


def test_gateway_killed_mid_call_loses_and_doubles_nothing(db_url: str, pg_server_url: str, tmp_path: Path) -> None:
    rng = random.Random(PARAMS.seed)
    data_dir = tmp_path / "gateway"
    spool = Spool(data_dir / "spool")
    calls: list[Call] = []
    funding: dict[uuid.UUID, Decimal] = {}
    violations: list[str] = []
    figures: Counter[str] = Counter()
    with FaultProxy(pg_server_url) as proxy, apidb.connect(db_url) as owner:
        ledger.configure(owner, hold_ttl=HOLD_TTL)
        for cycle in range(PARAMS.gateway_cycles):
            users = fund_users(owner, CALLERS, FUNDING, f"crash{cycle}")
            funding.update((user_id, FUNDING) for _, user_id in users)
            server = start(proxy, db_url, data_dir)
            stop = threading.Event()
            callers = [
                Caller(
                    server.base_url,
                    server.token(subject),
                    user_id,
                    random.Random(rng.random()),
                    stop,
                    prefix=f"k{cycle}u{n}",
                    slow_seconds=0.8,
                    replay_ratio=0.05,
                )
                for n, (subject, user_id) in enumerate(users)
            ]
            for caller in callers:
                caller.start()
            ledger_down = rng.random() < 0.5
            try:
                time.sleep(rng.uniform(0.3, PARAMS.duration))
                if ledger_down:
                    # The ledger goes away: running tools finish, their completions are spooled.
                    proxy.refuse(True)
                    proxy.cut_all()
                    time.sleep(rng.uniform(0.5, 1.5))
                server.process.send_signal(signal.SIGKILL)
                server.process.wait(30)
                killed_at = time.monotonic()
            finally:
                proxy.refuse(False)
                stop.set()
                for caller in callers:
                    caller.join(60)
                server.stop(signal.SIGKILL)
            assert not any(caller.is_alive() for caller in callers), "a caller hung"
            cycle_calls = [call for caller in callers for call in caller.calls]
            calls.extend(cycle_calls)
            violations.extend(line for caller in callers for line in caller.unexpected)
            figures["lost_answers"] += sum(call.lost for call in cycle_calls)

            # What the dead gateway left: spooled completions must be visible as unbilled calls.
            spooled = {entry.request_id for entry in spool.pending()}
            unbilled = pending_calls(owner)
            completed = {
                row[0]
                for row in owner.execute(
                    "SELECT request_id FROM billing.cost_tracking WHERE request_id = ANY(%s) AND status <> 'pending'",
                    (list(spooled),),
                )
            }
            for request_id in spooled - unbilled - completed:
                violations.append(f"cycle {cycle}: spooled {request_id} is neither unbilled nor completed")
            figures["spooled"] += len(spooled)
            figures["found_unbilled"] += len(spooled & unbilled)

            if cycle % 2 == 1:
                reconcile(db_url, data_dir, fail_stale=False)  # no gateway running: the operator bills the spool
            server = start(proxy, db_url, data_dir)  # the restarted gateway replays whatever is left
            try:
                wait_until(lambda: not spool.pending(), 60, "the restarted gateway to replay its spool")
                billed = {
                    row[0]
                    for row in owner.execute(
                        "SELECT request_id FROM billing.cost_tracking"
                        " WHERE request_id = ANY(%s) AND status = 'completed'",
                        (list(spooled & unbilled),),
                    )
                }
                figures["reconciled"] += len(billed)
                for request_id in (spooled & unbilled) - billed:
                    violations.append(f"cycle {cycle}: spooled {request_id} was not billed by the replay")
                # The restarted gateway serves and bills: one call after the crash.
                survivor = Call(
                    f"k{cycle}-after", users[0][1], "priced", Decimal("0.02"), True, principal=f"user:{users[0][0]}"
                )
                with server.client(server.token(users[0][0])) as client:
                    reply = client.post(
                        "/api/tools/priced", json={"text": "after"}, headers={"Idempotency-Key": survivor.key}
                    )
                survivor.answers.append(str(reply.json().get("billing", {}).get("status", reply.status_code)))
                calls.append(survivor)
                if survivor.answers != ["charged"]:
                    violations.append(f"cycle {cycle}: the restarted gateway answered {reply.status_code} {reply.text}")
            finally:
                assert server.stop() == 0, server.logs()

            # Calls the kill cut short: pending with a hold. Each must be one whose answer was lost.
            pending = pending_calls(owner)
            lost = {call.request_id for call in cycle_calls if call.lost}
            for request_id in pending - lost:
                violations.append(f"cycle {cycle}: {request_id} is pending with no lost answer to explain it")
            figures["killed_in_flight"] += len(pending)
            time.sleep(max(0.0, killed_at + HOLD_TTL.total_seconds() + 0.2 - time.monotonic()))
            figures["reaped"] += ledger.reap_expired_holds(owner)
            output = reconcile(db_url, data_dir)
            if f"closed {len(pending)} stale call(s) as failed" not in output:
                violations.append(f"cycle {cycle}: reconcile closed other than the {len(pending)} pending: {output}")
            figures["ledger_down_cycles"] += ledger_down

        result = audit(owner, calls, funding)
        leftovers = owner.execute(
            "SELECT (SELECT count(*) FROM billing.cost_tracking WHERE status = 'pending'),"
            " (SELECT count(*) FROM billing.reservations WHERE status = 'held')"
        ).fetchone()
        holds = Counter(
            status
            for (status,) in owner.execute(
                "SELECT status FROM billing.reservations WHERE request_id = ANY(%s)", ([c.request_id for c in calls],)
            )
        )
    violations.extend(result.violations)
    report(
        "gateway_crash",
        cycles=PARAMS.gateway_cycles,
        calls=len(calls),
        charged=result.outcomes["charged"],
        released=result.outcomes["not_charged"],
        never_tracked=result.outcomes["absent"],
        holds=dict(holds),
        charged_usd=result.charged_usd,
        **dict(figures),
        violations=len(violations),
    )
    assert violations == [], "\n".join(violations[:50])
    assert leftovers == (0, 0)
    assert result.outcomes["charged"] > 0
    # The kills did what they are for: calls cut short mid-flight (a slow tool runs most of the time).
    assert figures["killed_in_flight"] > 0 or PARAMS.gateway_cycles == 0, "no kill ever cut a call short"
