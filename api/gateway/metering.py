"""The metered call flow, the same for MCP and HTTP callers (docs/design.md §6).

    begin_request (start_request + price estimate + reserve, one transaction)
    -> run the tool
    -> complete_request with the actual cost (settles the hold, frees the rest; or releases it on failure)

* A refused reservation raises ``CallRefused`` carrying the database's refusal (which limit, the
  figures, when it resets, how to top up); nothing was written for the call.
* The tool and the completion run shielded from cancellation: a client that disconnects mid-call
  does not stop work that is already paid for from being finished and charged, exactly once
  (``complete_request`` is idempotent on the request id).
* A billing fault after the tool ran (the database unreachable for the completion) never fails the
  caller: the completion is spooled (``api.gateway.spool``) and retried; meanwhile the call is listed by
  ``billing.unbilled_calls``.
* Metering off (``TOLLGATE_METERING=false``): tools run with no tracking and no charge.
* Anonymous callers (no credentials) take their own path (``Meter._anonymous``): the tool's anonymous
  policy is applied by ``billing.begin_anonymous_call`` (refused: deny, or past its daily calls per client
  network; else counted in the daily aggregate ``billing.anonymous_usage``), then the tool runs; a failure
  is marked on the aggregate (``billing.record_anonymous_failure``). No tracking row, no hold, no charge.
  A refusal says how to sign in (``sign_in_advice``): over HTTP 401 with ``WWW-Authenticate`` or 429 with
  ``Retry-After``, over MCP a graceful tool error.

Prices: the database prices every call (``billing.tool_price`` inside ``complete_request``) from the
costs a tool reports through its ``ToolContext``. The hold is ``billing.estimate_price``: the tool's
declared bound (its ``max_price_usd``, or its per-character estimate from the size of the arguments,
``input_characters``), else its configured estimate, or for variable-cost tools the 95th percentile of
recent billed prices if higher. The charge never goes past the hold unless the balance and the limits
cover the excess when the call completes; what they do not cover is written off (never charged) and
reported as ``written_off_usd`` in the call's billing answer.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import anyio
import mcp_types as types
import psycopg
import psycopg_pool
from psycopg_pool import AsyncConnectionPool

from api.abuse.clientip import IPAddress
from api.errors import TollgateError
from api.gateway.auth import Accounts, Identity
from api.gateway.metrics import Metrics
from api.gateway.spool import PendingCompletion, Spool
from api.ledger import aio as aledger
from api.ledger.errors import BillingError
from api.ledger.types import RequestStart
from api.tools.registry import InvalidArguments, ToolContext, ToolError, ToolRegistry

log = logging.getLogger("tollgate.metering")

# Refusals that are the caller's situation (funds, limits, account state), answered gracefully.
REFUSALS = frozenset({"BL001", "BL002", "BL003", "BL004"})
# The anonymous policy's refusals (billing.begin_anonymous_call): sign in, or wait for the daily quota.
ANONYMOUS_REFUSALS = frozenset({"BL040", "BL041"})
# How many times begin_request is sent when its connection breaks (see Meter._begin).
BEGIN_ATTEMPTS = 3
# How many abandoned request ids (503 with begin_request in doubt) a process remembers.
ABANDONED_MAX = 10_000


class UnknownTool(TollgateError):
    status = 404
    code = "unknown_tool"

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown tool {name!r}: list the tools with tools/list or GET /openapi.json")
        self.name = name


class CallRefused(TollgateError):
    """The reservation (or an anonymous call) was refused: ``error`` is the database's reason, with its
    figures. Answered with the refusal's status and code; a spend limit's or a daily quota's answer says
    when to retry (Retry-After); a 401 (sign in) carries the ``WWW-Authenticate`` challenge. ``advice`` is
    what the gateway adds to the database's hint (how to sign in here). An account paused by a velocity
    flag (BL004 with ``paused`` in its detail) is told how to reach the operator (``contact``,
    ``[abuse.velocity] review_contact``) when one is configured."""

    def __init__(self, error: BillingError, advice: str | None = None, contact: str = "") -> None:
        hint = error.hint or ("Top up your balance to continue." if error.sqlstate == "BL001" else None)
        if contact and error.detail.get("paused") is True:
            hint = f"{hint} Operator: {contact}." if hint else f"Contact the operator: {contact}."
        text = " ".join(part for part in (error.message, hint, advice) if part)
        headers = _retry_after(error)
        if error.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="tollgate"'
        super().__init__(text, status=error.status, code=error.code, headers=headers, details=error.detail)
        self.error = error

    @property
    def text(self) -> str:
        """One paragraph a person (or a model) can act on."""
        return self.message


def _retry_after(error: BillingError) -> dict[str, str]:
    """Retry-After for a spend limit that resets at ``detail["resets_at"]``."""
    resets_at = error.detail.get("resets_at")
    if error.status != 429 or not isinstance(resets_at, str):
        return {}
    try:
        seconds = (dt.datetime.fromisoformat(resets_at) - dt.datetime.now(dt.UTC)).total_seconds()
    except ValueError:
        return {}
    return {"Retry-After": str(max(1, int(seconds) + 1))}


def sign_in_advice(sign_in_url: str | None = None) -> str:
    """How a caller signs in to this gateway, added to every anonymous refusal (docs/gateway.md, Callers)."""
    advice = (
        "Send it with each request (MCP: when connecting to /mcp or /sse): an API key as 'X-API-Key: tg_...' "
        "or 'Authorization: Bearer tg_...' (the operator of this gateway issues keys), or a user's JWT as "
        "'Authorization: Bearer <token>'."
    )
    return f"{advice} Get credentials at {sign_in_url}" if sign_in_url else advice


class LedgerUnavailable(TollgateError):
    """The ledger could not be reached before the tool ran: nothing ran, nothing was charged."""

    status = 503
    code = "ledger_unavailable"

    def __init__(self, cause: Exception) -> None:
        super().__init__(
            "billing is temporarily unavailable, so the call was not run and nothing was charged; retry shortly",
            headers={"Retry-After": "5"},
        )
        self.cause = cause


class AlreadyCompleted(TollgateError):
    """A replayed request id (Idempotency-Key): the call ran or is running; it is not run or charged again."""

    status = 409
    code = "already_completed"

    def __init__(self, request_id: str, call_status: str) -> None:
        state = "is still running" if call_status == "pending" else f"has already run (status {call_status})"
        super().__init__(f"request {request_id!r} {state}; it is not run or charged again", request_id=request_id)
        self.request_id = request_id
        self.call_status = call_status


@dataclass(frozen=True)
class CallOutcome:
    request_id: str | None
    result: types.CallToolResult
    # charged | not_charged (no user, price 0, billing disabled, the call failed, or nothing of the price
    # could be covered) | unmetered | pending (billing fault: spooled for reconciliation)
    billing_status: str
    price_usd: Decimal | None = None  # the call's price as computed
    transaction_id: int | None = None
    written_off_usd: Decimal = Decimal(0)  # the part of the price not charged (see billing.written_off_calls)

    def billing_json(self) -> dict[str, Any]:
        """The ``billing`` object of the HTTP answer and of ``_meta["tollgate/billing"]``.

        ``written_off_usd`` appears only when part of the price was written off: the caller was then
        charged ``price_usd - written_off_usd``.
        """
        billing: dict[str, Any] = {
            "request_id": self.request_id,
            "status": self.billing_status,
            "price_usd": self.price_usd,
            "transaction_id": self.transaction_id,
        }
        if self.written_off_usd:
            billing["written_off_usd"] = self.written_off_usd
        return billing


# Past 2**31 - 1 characters (billing.begin_request takes an integer) the size is only a bound anyway.
MAX_INPUT_CHARACTERS = 2**31 - 1


def input_characters(value: Any) -> int:
    """The size of a call's arguments as tools priced per input character are estimated from.

    The characters (Unicode code points) of every string value, at any depth: object values and array
    items are walked; object keys, numbers, booleans and nulls count 0. Capped at ``MAX_INPUT_CHARACTERS``.
    """
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return min(total, MAX_INPUT_CHARACTERS)


def _is_transient(exc: Exception) -> bool:
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | TimeoutError | OSError)


def permanent_failure(exc: Exception) -> bool:
    """A spooled completion the ledger refuses for good (e.g. a conflict) is set aside, not retried."""
    return not _is_transient(exc)


class Meter:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        registry: ToolRegistry,
        accounts: Accounts,
        metrics: Metrics,
        spool: Spool,
        *,
        metering: bool,
        tool_timeout_seconds: float,
        sign_in: str | None = None,
        review_contact: str = "",
    ) -> None:
        self.pool = pool
        self.registry = registry
        self.accounts = accounts
        self.metrics = metrics
        self.spool = spool
        self.metering = metering
        self.tool_timeout_seconds = tool_timeout_seconds
        self.sign_in = sign_in if sign_in is not None else sign_in_advice()
        self.review_contact = review_contact  # told to the caller of an account a velocity flag paused
        # Request ids this process is running, and those it answered 503 with their begin in doubt.
        self._running: set[str] = set()
        self._abandoned: dict[str, None] = {}  # an ordered set: the oldest are evicted first

    async def call(
        self,
        identity: Identity,
        tool_name: str,
        arguments: dict[str, Any],
        *,
        transport: str,
        request_id: str | None = None,
        client_ip: IPAddress | None = None,
    ) -> CallOutcome:
        """Run one call of ``tool_name`` for ``identity``. ``client_ip`` is the caller's address at the edge
        (api.abuse.clientip; None when unknown): an anonymous caller's daily quota counts by it."""
        tool = self.registry.get(tool_name)
        if tool is None:
            self.metrics.tool_calls.labels("(unknown)", transport, "unknown_tool").inc()
            raise UnknownTool(tool_name)
        self.registry.validate(tool_name, arguments)  # InvalidArguments: nothing tracked, held or charged
        started = time.perf_counter()
        try:
            if not self.metering:
                ctx = ToolContext(request_id=request_id or uuid.uuid4().hex, tool_name=tool_name)
                result = await self._run(tool_name, arguments, ctx)
                self.metrics.tool_calls.labels(tool_name, transport, "unmetered").inc()
                return CallOutcome(None, result, "unmetered")
            if identity.kind == "anonymous":
                return await self._anonymous(tool_name, arguments, transport, request_id or uuid.uuid4().hex, client_ip)
            return await self._metered(
                identity, tool_name, arguments, transport, request_id or uuid.uuid4().hex, client_ip
            )
        finally:
            self.metrics.tool_latency.labels(tool_name).observe(time.perf_counter() - started)

    async def _run(self, tool_name: str, arguments: dict[str, Any], ctx: ToolContext) -> types.CallToolResult:
        tool = self.registry.get(tool_name)
        assert tool is not None
        with anyio.fail_after(self.tool_timeout_seconds):
            result = await tool.call(arguments, ctx)
        return result

    async def _metered(
        self,
        identity: Identity,
        tool_name: str,
        arguments: dict[str, Any],
        transport: str,
        request_id: str,
        client_ip: IPAddress | None = None,
    ) -> CallOutcome:
        try:
            user_id = await self.accounts.user_id(identity)
        except (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout) as exc:
            raise LedgerUnavailable(exc) from exc
        # Shielded from the caller's cancellation from the first write on: a disconnect while
        # begin_request runs could otherwise leave a hold whose outcome nobody waits for, and one
        # after it must not stop paid-for work from being finished and charged.
        with anyio.CancelScope(shield=True):
            try:
                start, in_doubt = await self._begin(
                    request_id, tool_name, user_id, identity.client_key, input_characters(arguments), client_ip
                )
            except (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout) as exc:
                log.error("ledger unreachable before %s ran: %s", tool_name, exc, extra={"request_id": request_id})
                self.metrics.tool_calls.labels(tool_name, transport, "ledger_unavailable").inc()
                raise LedgerUnavailable(exc) from exc
            except BillingError as error:
                if error.sqlstate in REFUSALS:
                    self.metrics.refusals.labels(error.code).inc()
                    self.metrics.tool_calls.labels(tool_name, transport, "refused").inc()
                    raise CallRefused(error, contact=self.review_contact) from None
                raise
            # The same request id again: never run (or charge) a call twice. The replays that are ours:
            # the answer to our own resend of a begin_request whose answer was lost, and the caller's
            # retry of a call this process answered 503 while its begin_request was in doubt. Either
            # way the call is still pending and no task of this process is running it -- unless its
            # completion is in our spool: then the tool ran and only its billing waits, and running it
            # again would run paid-for work twice.
            ours = in_doubt or self._take_abandoned(request_id)
            if start.replayed and not (
                start.status == "pending"
                and request_id not in self._running
                and ours
                and not await self._spooled(request_id)
            ):
                raise AlreadyCompleted(request_id, start.status)
            self._running.add(request_id)
            try:
                outcome = await self._run_and_complete(tool_name, arguments, transport, request_id)
            finally:
                self._running.discard(request_id)
        return outcome

    async def _spooled(self, request_id: str) -> bool:
        """Whether the spool holds the completion of `request_id` (read only on this rare path)."""
        pending = await anyio.to_thread.run_sync(self.spool.pending)
        return any(entry.request_id == request_id for entry in pending)

    def _take_abandoned(self, request_id: str) -> bool:
        """True (once) when this process answered 503 for `request_id` with its begin_request in doubt."""
        if request_id not in self._abandoned:
            return False
        del self._abandoned[request_id]
        return True

    def _abandon(self, request_id: str) -> None:
        # Bounded: the oldest entries go first; a retry that comes after them finds its hold expired
        # and its call closed by reconcile, as it would on another gateway process.
        self._abandoned[request_id] = None
        while len(self._abandoned) > ABANDONED_MAX:
            self._abandoned.pop(next(iter(self._abandoned)))

    async def _begin(
        self,
        request_id: str,
        tool_name: str,
        user_id: uuid.UUID | None,
        client_key: str | None,
        input_chars: int,
        client_ip: IPAddress | None = None,
    ) -> tuple[RequestStart, bool]:
        """`billing.begin_request`, retried on a lost connection. Returns (its answer, in doubt).

        A connection that breaks after the statement was sent leaves its outcome unknown: the commit
        may have landed. begin_request is idempotent on the request id, so it is sent again (on a new
        connection) up to BEGIN_ATTEMPTS times; when an earlier attempt was in doubt, a replayed answer
        still `pending` is our own first attempt, and the call goes on, rather than telling the caller
        to retry into a 409 "still running" until the hold expires.
        Without an answer after the last attempt the caller gets 503 and the request id is remembered
        (`_abandon`): the caller's retry with the same key, on this process, takes the call over. A
        retry that reaches another gateway process gets 409 "still running"; that call's hold is
        released at expiry (`reap_expired_holds`) or by `tollgate ledger reconcile
        --fail-stale-minutes`, and it is never charged. Two processes running one request id at
        once (a duplicate racing a resend) run the tool twice but charge it once.
        """
        in_doubt = False
        for attempt in range(1, BEGIN_ATTEMPTS + 1):
            try:
                async with self.pool.connection() as conn:
                    start = await aledger.begin_request(
                        conn, request_id, tool_name, user_id, client_key, input_chars=input_chars, client_ip=client_ip
                    )
                    return start, in_doubt
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                in_doubt = True
                if attempt == BEGIN_ATTEMPTS:
                    self._abandon(request_id)
                    raise
                log.warning(
                    "begin_request for %s lost its connection (attempt %d of %d), sending it again: %s",
                    tool_name, attempt, BEGIN_ATTEMPTS, exc, extra={"request_id": request_id},
                )
                await anyio.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    async def _run_and_complete(
        self, tool_name: str, arguments: dict[str, Any], transport: str, request_id: str
    ) -> CallOutcome:
        ctx = ToolContext(request_id=request_id, tool_name=tool_name)
        started = time.perf_counter()
        result, error = await self._run_safely(tool_name, arguments, ctx)
        completion = PendingCompletion(
            request_id=request_id,
            success=error is None,
            total_cost_usd=ctx.total_cost_usd,
            cost_breakdown=[item.as_json() for item in ctx.costs],
            execution_time_ms=int((time.perf_counter() - started) * 1000),
            error=None if error is None else storable_text(error[:4000]),
            description=f"{tool_name} call",
        )
        try:
            done = await self.complete(completion)
        except Exception as exc:
            if not _is_transient(exc):
                raise
            log.error(
                "billing fault after %s ran; completion spooled for reconciliation: %s",
                tool_name,
                exc,
                extra={"request_id": request_id},
            )
            await anyio.to_thread.run_sync(self.spool.add, completion)  # fsync: off the event loop
            self.metrics.billing_faults.inc()
            self.metrics.tool_calls.labels(tool_name, transport, "unbilled").inc()
            return CallOutcome(request_id, result, "pending")
        outcome = "ok" if error is None else "tool_error"
        self.metrics.tool_calls.labels(tool_name, transport, outcome).inc()
        if done.billed:
            self.metrics.charges.inc()
            self.metrics.charged_usd.inc(float(done.charged_usd))
        if done.written_off_usd:
            self.metrics.written_off_usd.labels(tool_name).inc(float(done.written_off_usd))
        status = "charged" if done.billed else "not_charged"
        return CallOutcome(request_id, result, status, done.price_usd, done.transaction_id, done.written_off_usd)

    async def _run_safely(
        self, tool_name: str, arguments: dict[str, Any], ctx: ToolContext
    ) -> tuple[types.CallToolResult, str | None]:
        """Run the tool: (its result, None), or (an error result, why it failed). Never raises for the tool:
        a bug or crash in a tool must not leave its hold (or its count) behind."""
        error: str | None = None
        result: types.CallToolResult
        try:
            result = _without_upstream_meta(await self._run(tool_name, arguments, ctx))
            if result.is_error:
                error = _result_text(result) or "the tool returned an error result"
        except InvalidArguments as exc:
            error = str(exc)
            result = _error_result(error)
        except ToolError as exc:
            error = str(exc)
            result = _error_result(error)
        except TimeoutError:
            error = f"the tool did not answer within {self.tool_timeout_seconds:g} seconds"
            result = _error_result(error)
        except Exception as exc:
            log.exception("tool %s crashed", tool_name, extra={"request_id": ctx.request_id})
            error = f"the tool failed: {type(exc).__name__}"
            result = _error_result(error)
        return result, error

    async def _anonymous(
        self, tool_name: str, arguments: dict[str, Any], transport: str, request_id: str, client_ip: IPAddress | None
    ) -> CallOutcome:
        """A call without credentials: the tool's anonymous policy (billing.begin_anonymous_call), then the
        tool. Never tracked per call, held or charged; counted in the daily aggregate, and marked there when
        it fails (one more statement, only then)."""
        try:
            async with self.pool.connection() as conn:
                counted = await aledger.begin_anonymous_call(conn, tool_name, client_ip)
        except (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout) as exc:
            log.error("ledger unreachable before %s ran: %s", tool_name, exc, extra={"request_id": request_id})
            self.metrics.tool_calls.labels(tool_name, transport, "ledger_unavailable").inc()
            raise LedgerUnavailable(exc) from exc
        except BillingError as error:
            if error.sqlstate not in ANONYMOUS_REFUSALS:
                raise
            self.metrics.refusals.labels(error.code).inc()
            self.metrics.tool_calls.labels(tool_name, transport, "refused").inc()
            raise CallRefused(error, self.sign_in) from None
        ctx = ToolContext(request_id=request_id, tool_name=tool_name)
        result, error_text = await self._run_safely(tool_name, arguments, ctx)
        if error_text is not None:
            try:
                async with self.pool.connection() as conn:
                    await aledger.record_anonymous_failure(conn, counted.usage_day, tool_name, counted.client_network)
            except Exception as exc:  # a statistic: never worth failing the caller's answer for
                log.warning("could not mark an anonymous call of %s failed: %s", tool_name, exc)
        self.metrics.tool_calls.labels(tool_name, transport, "ok" if error_text is None else "tool_error").inc()
        return CallOutcome(request_id, result, "not_charged")

    async def complete(self, completion: PendingCompletion) -> Any:
        async with self.pool.connection() as conn:
            return await aledger.complete_request(
                conn,
                completion.request_id,
                completion.success,
                completion.total_cost_usd,
                cost_breakdown=completion.cost_breakdown,
                execution_time_ms=completion.execution_time_ms,
                error=completion.error,
                description=completion.description,
            )

    async def replay_spool(self) -> None:
        report = await self.spool.replay(self.complete, permanent_failure)
        if report.written or report.rejected:
            log.info(
                "spool replayed: %d billed, %d kept, %d rejected",
                report.written,
                report.remaining,
                len(report.rejected),
            )


def storable_text(text: str) -> str:
    """A tool's error text as the ledger can store it. Tools echo their input, which may hold U+0000
    (PostgreSQL text cannot) or lone surrogates (not UTF-8): stored as sent, the completion would fail
    and leave the call pending with its hold. Each such character becomes U+FFFD; this is diagnostic
    text, never an identity or an amount."""
    return "".join("\ufffd" if char == "\x00" or "\ud800" <= char <= "\udfff" else char for char in text)


def _without_upstream_meta(result: types.CallToolResult) -> types.CallToolResult:
    """Drop the protocol-reserved ``_meta`` an upstream stamps (its server identity): callers see the gateway."""
    if result.meta and any(key.startswith("io.modelcontextprotocol/") for key in result.meta):
        kept = {k: v for k, v in result.meta.items() if not k.startswith("io.modelcontextprotocol/")}
        result = result.model_copy(update={"meta": kept or None})
    return result


def _error_result(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)], is_error=True)


def _result_text(result: types.CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, types.TextContent))[:4000]


def refusal_result(refused: CallRefused) -> types.CallToolResult:
    """The graceful MCP answer to a refused call: an ``isError`` result with the reason and figures."""
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=refused.text)],
        structured_content={
            "error": {"code": refused.error.code, "message": refused.text, **refused.error.detail}
        },
        is_error=True,
    )
