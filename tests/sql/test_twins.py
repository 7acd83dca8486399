"""The sync and async ledger wrappers are twins: one source (api/ledger/aio.py), one generated copy
(api/ledger/sync.py), one JSON configuration on every connection from api.ledger.db.

Issue 13: the sync ``complete_request`` rendered its cost breakdown with psycopg's default ``json.dumps``,
which raises on Decimal, while the async one passed ``api.jsonio.dumps``; the two modules had drifted in
their signatures too. These tests pin what the fix promises.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from api.ledger import aio as aledger
from api.ledger import db as apidb
from api.ledger import generate_sync
from api.ledger import sync as ledger
from tests import helpers as h

D = Decimal

# More digits than a float holds: any trip through float would change them.
EXACT = D("0.00000123456789012345678901")


def _breakdown() -> list[dict[str, Any]]:
    return [{"provider": "openai", "units": 1200, "cost_usd": EXACT}, {"provider": "search", "cost_usd": D("0.0040")}]


def _public_functions(module: ModuleType) -> dict[str, Callable[..., Any]]:
    return {
        name: value
        for name, value in vars(module).items()
        if inspect.isfunction(value) and value.__module__ == module.__name__ and not name.startswith("_")
    }


def test_a_decimal_cost_breakdown_is_stored_exactly_through_the_sync_complete_request(db):
    ledger.set_tool_pricing(db, "llm", D("0.001"), variable_cost=True, estimate_usd=D("0.01"))
    user_id = h.funded_user(db, 1)
    ledger.begin_request(db, "req-1", "llm", user_id)

    done = ledger.complete_request(db, "req-1", True, D("0.004"), cost_breakdown=_breakdown())

    assert (done.status, done.price_usd) == ("completed", D("0.005"))
    assert h.tracking_row(db, "req-1")["cost_breakdown"] == _breakdown()
    text = db.execute("SELECT cost_breakdown::text FROM billing.cost_tracking WHERE request_id = 'req-1'").fetchone()
    assert text is not None
    assert "0.00000123456789012345678901" in text[0]


def test_the_async_complete_request_stores_the_same_breakdown_on_a_connection_from_aconnect(db_url, db):
    ledger.set_tool_pricing(db, "llm", D("0.001"), variable_cost=True, estimate_usd=D("0.01"))
    user_id = h.funded_user(db, 1)

    async def run() -> None:
        async with await apidb.aconnect(db_url) as conn:
            await aledger.begin_request(conn, "req-1", "llm", user_id)
            await aledger.complete_request(conn, "req-1", True, D("0.004"), cost_breakdown=_breakdown())

    asyncio.run(run())
    assert h.tracking_row(db, "req-1")["cost_breakdown"] == _breakdown()


def test_a_raw_async_connection_from_aconnect_renders_decimal_in_jsonb_exactly(db_url):
    async def run() -> tuple[str, Any]:
        async with await apidb.aconnect(db_url) as conn:
            cur = await conn.execute("SELECT %(v)s::text, %(v)s::jsonb", {"v": Jsonb({"cost_usd": EXACT})})
            row = await cur.fetchone()
            assert row is not None
            return row[0], row[1]

    text, parsed = asyncio.run(run())
    assert text == '{"cost_usd": 0.00000123456789012345678901}'
    assert parsed == {"cost_usd": EXACT}
    assert isinstance(parsed["cost_usd"], Decimal)


def test_connections_from_both_pools_render_decimal_in_jsonb_exactly(db_url):
    value = Jsonb([EXACT])
    with apidb.make_pool(db_url, min_size=1, max_size=1) as pool, pool.connection() as conn:
        row = conn.execute("SELECT %s::text", [value]).fetchone()
        assert row == ("[0.00000123456789012345678901]",)

    async def run() -> Any:
        async with apidb.make_async_pool(db_url, min_size=1, max_size=1) as pool, pool.connection() as conn:
            cur = await conn.execute("SELECT %s::text", [value])
            return await cur.fetchone()

    assert asyncio.run(run()) == ("[0.00000123456789012345678901]",)


def test_a_float_in_a_cost_breakdown_is_refused_by_both_twins_and_nothing_is_written(db_url, db):
    ledger.set_tool_pricing(db, "llm", D("0.001"), variable_cost=True, estimate_usd=D("0.01"))
    user_id = h.funded_user(db, 1)
    ledger.begin_request(db, "req-1", "llm", user_id)
    floats = [{"provider": "openai", "cost_usd": 0.004}]

    with h.nothing_written(db), pytest.raises(TypeError, match="floats are not rendered"):
        ledger.complete_request(db, "req-1", True, D("0.004"), cost_breakdown=floats)

    async def run() -> None:
        async with await apidb.aconnect(db_url) as conn:
            await aledger.complete_request(conn, "req-1", True, D("0.004"), cost_breakdown=floats)

    with h.nothing_written(db), pytest.raises(TypeError, match="floats are not rendered"):
        asyncio.run(run())
    assert h.tracking_row(db, "req-1")["status"] == "pending"


def test_a_float_in_metadata_is_refused_by_the_sync_wrappers_too(db):
    user_id = h.funded_user(db, 1)
    with h.nothing_written(db), pytest.raises(TypeError, match="floats are not rendered"):
        ledger.charge(db, user_id, "req-1", D("0.01"), metadata={"ratio": 0.5})
    with h.nothing_written(db), pytest.raises(TypeError, match="floats are not rendered"):
        ledger.top_up(db, user_id, D(1), "test", f"pi-{uuid.uuid4().hex}", metadata={"ratio": 0.5})


def test_the_sync_module_is_what_the_generator_makes_of_the_async_one():
    assert generate_sync.main(["--check"]) == 0
    source = generate_sync.SOURCE.read_text(encoding="utf-8")
    generated = generate_sync.generate(source)
    assert generated == generate_sync.TARGET.read_text(encoding="utf-8")
    assert generated.startswith("# Generated from api/ledger/aio.py by `python -m api.ledger.generate_sync`")
    assert "do not edit" in generated.splitlines()[0]


def test_the_check_fails_with_a_message_when_the_sync_module_was_edited(tmp_path: Path, capsys):
    stale = tmp_path / "sync.py"
    stale.write_text(
        generate_sync.TARGET.read_text(encoding="utf-8").replace("limit: int = 50", "limit: int = 51"), encoding="utf-8"
    )
    assert generate_sync.main(["--check", "--target", str(stale)]) == 1
    assert "is stale" in capsys.readouterr().err
    assert generate_sync.main(["--check", "--target", str(tmp_path / "missing.py")]) == 1
    assert generate_sync.main(["--target", str(stale)]) == 0  # regenerating it makes it current again
    assert generate_sync.main(["--check", "--target", str(stale)]) == 0


def test_the_generator_refuses_async_code_it_cannot_rewrite():
    source = generate_sync.SOURCE.read_text(encoding="utf-8") + "\n\nPOOL = psycopg_pool.AsyncConnectionPool\n"
    with pytest.raises(generate_sync.GenerationError, match="still async"):
        generate_sync.generate(source)


def test_every_wrapper_has_a_twin_with_the_same_signature():
    sync_functions = _public_functions(ledger)
    async_functions = _public_functions(aledger)
    assert set(sync_functions) == set(async_functions)
    assert len(sync_functions) >= 40
    for name, async_function in async_functions.items():
        assert inspect.iscoroutinefunction(async_function), name
        assert not inspect.iscoroutinefunction(sync_functions[name]), name
        twin, original = inspect.signature(sync_functions[name]), inspect.signature(async_function)
        assert twin.return_annotation == original.return_annotation, name
        assert list(twin.parameters) == list(original.parameters), name
        for parameter_name, parameter in original.parameters.items():
            other = twin.parameters[parameter_name]
            assert (other.kind, other.default) == (parameter.kind, parameter.default), (name, parameter_name)
            expected = "Conn" if parameter.annotation == "AsyncConn" else parameter.annotation
            assert other.annotation == expected, (name, parameter_name)


def test_the_signatures_issue_13_found_apart_now_agree():
    for module in (ledger, aledger):
        begin = inspect.signature(module.begin_request).parameters
        assert begin["ttl"].default is None
        assert begin["user_id"].default is None
        pricing = inspect.signature(module.set_tool_pricing).parameters
        assert pricing["base_price_usd"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert all(
            pricing[name].kind is inspect.Parameter.KEYWORD_ONLY
            for name in ("markup_percent", "estimate_usd", "variable_cost", "description", "max_price_usd")
        )


def test_the_row_types_are_the_same_objects_in_both_twins():
    assert ledger.RequestStart is aledger.RequestStart
    assert ledger.PaymentFacts is aledger.PaymentFacts
    assert ledger.Money is aledger.Money


def test_an_async_begin_request_passes_its_ttl_to_the_hold(db_url, db):
    ledger.set_tool_pricing(db, "search", D("0.01"), estimate_usd=D("0.02"))
    user_id = h.funded_user(db, 1)

    async def run() -> None:
        async with await apidb.aconnect(db_url) as conn:
            await aledger.begin_request(conn, "req-1", "search", user_id, ttl=dt.timedelta(minutes=2))

    asyncio.run(run())
    hold = h.reservation_row(db, "req-1")
    assert hold["expires_at"] - hold["created_at"] == dt.timedelta(minutes=2)  # not the configured default
