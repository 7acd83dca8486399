"""Local HTTP test doubles of two payment providers' APIs: Stripe (Checkout Sessions) and Fondy (protocol 1.0).

Each fake is a real HTTP/1.1 server on 127.0.0.1 (a random port), run by `http.server.ThreadingHTTPServer`
in a daemon thread, so the real clients (the `stripe` SDK, httpx) can be pointed at it:

    with FakeStripe() as stripe_fake:
        client = stripe.StripeClient("sk_test_x", base_addresses={"api": stripe_fake.url},
                                     http_client=stripe.HTTPXClient(), max_network_retries=0)
        ...
        stripe_fake.pay(session_id)                       # the customer pays (test control, no HTTP)
        body, headers = stripe_fake.delivery(stripe_fake.event("checkout.session.completed", session), secret)

Common to both fakes:

    .url                 "http://127.0.0.1:PORT" (after start(); a `with` block starts and stops the server)
    .requests            every HTTP request received, as RecordedRequest (method, path, query, headers with
                         lowercase keys, parsed body), in arrival order, faulted ones included
    .fail_next(n, mode)  the next n API calls fail: "500" answers HTTP 500 with the provider's error body,
                         "close" closes the connection without answering (the request is not processed),
                         "close_after" processes the request (its effects land) and then closes without
                         answering: the client cannot know whether it took effect
    .errors              exceptions raised by the fake itself while serving (a bug in the fake); leaving the
                         `with` block raises AssertionError when there are any

State is guarded by one lock; requests are served one at a time under it, and the test-control methods
(pay, approve, ...) take it too, so they may be called while a client is talking to the fake.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import hmac
import json
import re
import secrets
import socket
import socketserver
import string
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Literal, Self, cast
from urllib.parse import parse_qsl, urlencode, urlsplit

FaultMode = Literal["500", "close", "close_after"]
FAULT_MODES: tuple[FaultMode, ...] = ("500", "close", "close_after")

JSONDict = dict[str, Any]


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request as the fake received it.

    query: the query string parsed with Stripe's bracket nesting (`expand[0]=a` -> {"expand": ["a"]}).
    headers: lowercase names; repeated headers are joined with ", ".
    body: JSON bodies parsed; application/x-www-form-urlencoded parsed with bracket nesting (values stay
        strings, as on the wire); other or unparseable bodies as text; None when empty.
    """

    method: str
    path: str
    query: JSONDict
    headers: dict[str, str]
    body: Any
    raw_body: bytes = b""


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering


def _json_reply(status: int, obj: Any, headers: Mapping[str, str] | None = None) -> _Reply:
    return _Reply(status, json.dumps(obj, indent=2).encode(), {"Content-Type": "application/json", **(headers or {})})


def _text_reply(status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> _Reply:
    return _Reply(status, text.encode(), {"Content-Type": content_type})


_ALNUM = string.ascii_letters + string.digits


def _random_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(length))


# --- form bodies with Stripe's bracket nesting -------------------------------------------------------------------

_KEY_HEAD = re.compile(r"^([^\[\]]*)((?:\[[^\[\]]*\])*)$")
_KEY_PART = re.compile(r"\[([^\[\]]*)\]")


def parse_nested_form(pairs: str | Iterable[tuple[str, str]]) -> JSONDict:
    """Parse form fields with bracket nesting, as Stripe's API reads them.

    `line_items[0][price_data][currency]=usd&metadata[k]=v&expand[]=x` ->
    {"line_items": [{"price_data": {"currency": "usd"}}], "metadata": {"k": "v"}, "expand": ["x"]}.
    A dict whose keys are exactly "0".."n-1" becomes a list. Values stay strings. A key used both as a
    scalar and as a container raises ValueError.
    """
    items = parse_qsl(pairs, keep_blank_values=True, strict_parsing=False) if isinstance(pairs, str) else pairs
    root: JSONDict = {}
    for key, value in items:
        match = _KEY_HEAD.match(key)
        parts = [match.group(1), *_KEY_PART.findall(match.group(2))] if match and match.group(1) else [key]
        node: JSONDict = root
        for i, raw_part in enumerate(parts):
            part = str(len(node)) if raw_part == "" else raw_part
            if i == len(parts) - 1:
                if isinstance(node.get(part), dict):
                    raise ValueError(f"{key!r} is given both as a value and as an object")
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise ValueError(f"{key!r} is given both as a value and as an object")
                node = child
    return {k: _listify(v) for k, v in root.items()}


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {k: _listify(v) for k, v in node.items()}
    if converted and all(k.isdigit() for k in converted) and sorted(map(int, converted)) == list(range(len(converted))):
        return [converted[str(i)] for i in range(len(converted))]
    return converted


# --- the HTTP server ---------------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its connections, so stop() can end keep-alive handler threads and join them."""

    daemon_threads = True

    def __init__(self, fake: _FakeServer) -> None:
        self.fake = fake
        self._conn_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._workers: set[threading.Thread] = set()
        super().__init__(("127.0.0.1", fake.port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup: skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        worker = threading.Thread(
            target=self._work, args=(request, client_address), name="fake-payments-conn", daemon=True
        )
        with self._conn_lock:
            self._connections.add(request)
            self._workers.add(worker)
        worker.start()

    def _work(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._conn_lock:
                self._workers.discard(threading.current_thread())

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._connections.discard(request)
            super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if exc is not None and not isinstance(exc, ConnectionError | TimeoutError):
            self.fake.errors.append(exc)

    def close_connections(self, timeout: float = 5.0) -> None:
        """Wake every handler blocked on a keep-alive connection (it reads EOF and returns), then join them."""
        with self._conn_lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            workers = list(self._workers)
        for worker in workers:
            worker.join(timeout)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline(65537).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        raw = self._read_body()
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            lname = name.lower()
            headers[lname] = f"{headers[lname]}, {value}" if lname in headers else value
        fake = self.server.fake
        try:
            reply = fake._serve(self.command, self.path, headers, raw)
        except Exception as exc:  # a bug in the fake: make it visible to the test
            fake.errors.append(exc)
            reply = _text_reply(500, f"fake {type(fake).__name__} crashed: {exc!r}")
        if reply.drop:
            self.close_connection = True
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)


class _FakeServer:
    """What both fakes share: the server's life cycle, request recording and fault injection."""

    api_prefix: ClassVar[str] = "/"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.port = 0  # 0: a free port, chosen at start()
        self.requests: list[RecordedRequest] = []
        self.errors: list[BaseException] = []
        self._faults: list[FaultMode] = []
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._url

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} is already started")
        server = _HTTPServer(self)
        self._server = server
        self._url = f"http://127.0.0.1:{server.server_port}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"fake-{type(self).__name__}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join()
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        if exc_type is None and self.errors:
            raise AssertionError(f"{type(self).__name__} failed while serving: {self.errors!r}") from self.errors[0]

    def fail_next(self, n: int = 1, mode: FaultMode = "500") -> None:
        """Make the next n API calls fail with `mode` (see the module docstring); adds to faults already armed."""
        if mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {FAULT_MODES}, not {mode!r}")
        if n < 0:
            raise ValueError("n must be >= 0")
        with self._lock:
            self._faults.extend([mode] * n)

    def _serve(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> _Reply:
        split = urlsplit(target)
        parse_error: str | None = None
        try:
            query = parse_nested_form(split.query)
        except ValueError as exc:
            query, parse_error = {}, str(exc)
        body: Any = None
        if raw:
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            try:
                if content_type == "application/json" or content_type.endswith("+json"):
                    body = json.loads(raw)
                elif content_type == "application/x-www-form-urlencoded":
                    body = parse_nested_form(raw.decode())
                else:
                    body = raw.decode(errors="replace")
            except (ValueError, UnicodeDecodeError) as exc:
                body, parse_error = raw.decode(errors="replace"), str(exc)
        request = RecordedRequest(method, split.path, query, headers, body, raw)
        with self._lock:
            self.requests.append(request)
            fault = self._faults.pop(0) if self._faults and split.path.startswith(self.api_prefix) else None
            if fault == "close":
                return _Reply(0, drop=True)
            if fault == "500":
                return self._fault_reply()
            reply = self._route(request, parse_error)
        return _Reply(0, drop=True) if fault == "close_after" else reply

    def _route(self, request: RecordedRequest, parse_error: str | None) -> _Reply:
        raise NotImplementedError

    def _fault_reply(self) -> _Reply:
        raise NotImplementedError


# --- Stripe ------------------------------------------------------------------------------------------------------

STRIPE_EVENT_API_VERSION = "2025-01-27.acacia"


def sign_stripe(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header Stripe sends with `payload`.

    `t=<ts>,v1=<hex HMAC-SHA256(secret, "<ts>.<payload>")>`, as `stripe.WebhookSignature` verifies it.
    """
    ts = int(time.time()) if timestamp is None else int(timestamp)
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256)
    return f"t={ts},v1={mac.hexdigest()}"


class StripeAPIError(Exception):
    """An error answer of the fake Stripe API (also raised by nothing outside this module)."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.type, self.code = message, param, status, type, code

    def reply(self) -> _Reply:
        error: JSONDict = {"type": self.type, "message": self.message}
        if self.param is not None:
            error["param"] = self.param
        if self.code is not None:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        return _json_reply(self.status, {"error": error})


@dataclass
class _StripeSession:
    obj: JSONDict  # the Checkout Session, its "payment_intent" kept as the id (or None)
    pi_metadata: dict[str, str]


@dataclass
class _IdempotentResult:
    endpoint: str
    params: Any
    reply: _Reply
    request_id: str


def _stripe_int(value: Any, param: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not re.fullmatch(r"-?\d+", str(value)):
        raise StripeAPIError(f"Invalid integer: {value}", param)
    number = int(value)
    if minimum is not None and number < minimum:
        raise StripeAPIError(f"This value must be greater than or equal to {minimum}.", param)
    return number


def _stripe_metadata(value: Any, param: str) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise StripeAPIError("Invalid object", param)
    return {str(k): str(v) for k, v in value.items() if v != ""}


class FakeStripe(_FakeServer):
    """The Stripe API's Checkout Sessions, as the `stripe` SDK (v16, StripeClient) calls them.

    HTTP: POST /v1/checkout/sessions, GET /v1/checkout/sessions/{id} (expand payment_intent[.latest_charge]),
    POST /v1/checkout/sessions/{id}/expire, GET /v1/disputes?payment_intent=… (a list); GET /pay/{id} is the
    "hosted page" (a stub, not an API call).
    Authorization: `Bearer sk_...` (exactly `api_key` when given). Idempotency-Key is honoured as Stripe does:
    a successful answer is saved under its key and replayed (header Idempotent-Replayed: true) for the same
    endpoint and parameters; other parameters or endpoint -> 400 idempotency_error. Error answers are not
    saved, nor are injected faults ("close_after" saves: the request was executed).
    Sessions do not expire by themselves at expires_at: call expire(). Not modelled: expires_at's
    30 min .. 24 h window, unknown-parameter rejection, prices by id, line_items expansion, other modes
    than "payment".
    """

    api_prefix: ClassVar[str] = "/v1/"
    EXPANDABLE_NULL: ClassVar[frozenset[str]] = frozenset(
        {"customer", "invoice", "subscription", "setup_intent", "payment_link", "payment_method_configuration_details"}
    )

    def __init__(self, api_key: str | None = None) -> None:
        super().__init__()
        self.api_key = api_key
        self._sessions: dict[str, _StripeSession] = {}
        self._payment_intents: dict[str, JSONDict] = {}
        self._charges: dict[str, JSONDict] = {}
        self._disputes: dict[str, JSONDict] = {}
        self._idempotency: dict[str, _IdempotentResult] = {}

    # HTTP

    def _fault_reply(self) -> _Reply:
        return StripeAPIError(
            "Sorry, something went wrong. We've already been notified of the problem (fake fault).",
            status=500,
            type="api_error",
        ).reply()

    def _route(self, request: RecordedRequest, parse_error: str | None) -> _Reply:
        if not request.path.startswith(self.api_prefix):
            match = re.fullmatch(r"/pay/([A-Za-z0-9_]+)", request.path)
            if request.method == "GET" and match and match.group(1) in self._sessions:
                return _text_reply(200, f"<html><body>Fake Stripe Checkout {match.group(1)}</body></html>", "text/html")
            return _text_reply(404, "Not Found")
        request_id = _random_id("req_", 14)
        headers = {"Request-Id": request_id, "Stripe-Version": request.headers.get("stripe-version", "")}
        try:
            self._authenticate(request)
            if parse_error is not None:
                raise StripeAPIError(f"Invalid request body: {parse_error}")
            if request.method == "POST":
                key = request.headers.get("idempotency-key")
                if key:
                    headers["Idempotency-Key"] = key
                reply = self._post(request, key, request_id)
            else:
                reply = self._get(request)
        except StripeAPIError as exc:
            reply = exc.reply()
        reply.headers = {**headers, **reply.headers}
        return reply

    def _authenticate(self, request: RecordedRequest) -> None:
        auth = request.headers.get("authorization", "")
        if not auth:
            raise StripeAPIError(
                "You did not provide an API key. You need to provide your API key in the Authorization header, "
                "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
                status=401,
            )
        scheme, _, key = auth.partition(" ")
        valid = key == self.api_key if self.api_key is not None else key.startswith(("sk_test_", "sk_live_", "rk_"))
        if scheme.lower() != "bearer" or not valid:
            raise StripeAPIError(f"Invalid API Key provided: {key[:8]}****{key[-4:]}", status=401)

    def _post(self, request: RecordedRequest, key: str | None, request_id: str) -> _Reply:
        params: JSONDict = request.body if isinstance(request.body, dict) else {}
        endpoint = f"{request.method} {request.path}"
        if key:
            saved = self._idempotency.get(key)
            if saved is not None:
                if saved.endpoint != endpoint:
                    raise StripeAPIError(
                        "Keys for idempotent requests can only be used for the same endpoint they were first used "
                        f"for ('{saved.endpoint}' vs '{endpoint}'). Try using a key other than '{key}' if you meant "
                        "to execute a different request.",
                        type="idempotency_error",
                    )
                if saved.params != params:
                    raise StripeAPIError(
                        "Keys for idempotent requests can only be used with the same parameters they were first "
                        f"used with. Try using a key other than '{key}' if you meant to execute a different request.",
                        type="idempotency_error",
                    )
                headers = {**saved.reply.headers, "Idempotent-Replayed": "true", "Original-Request": saved.request_id}
                return _Reply(saved.reply.status, saved.reply.body, headers)
        expand = self._expand_param(params)
        if request.path == "/v1/checkout/sessions":
            reply = _json_reply(200, self._render_session(self._create_session(params), expand))
        elif match := re.fullmatch(r"/v1/checkout/sessions/([^/]+)/expire", request.path):
            reply = _json_reply(200, self._render_session(self._expire(match.group(1)), expand))
        else:
            raise StripeAPIError(self._unrecognized(request), status=404)
        if key:
            self._idempotency[key] = _IdempotentResult(endpoint, params, reply, request_id)
        return reply

    def _get(self, request: RecordedRequest) -> _Reply:
        expand = self._expand_param(request.query)
        if match := re.fullmatch(r"/v1/checkout/sessions/([^/]+)", request.path):
            return _json_reply(200, self._render_session(self._find(match.group(1)), expand))
        if request.path == "/v1/disputes":
            # List filtered by payment_intent (or charge), newest first, as Stripe answers it.
            wanted = {k: request.query.get(k) for k in ("payment_intent", "charge") if request.query.get(k)}
            data = [
                copy.deepcopy(d)
                for d in sorted(self._disputes.values(), key=lambda d: d["created"], reverse=True)
                if all(d.get(k) == v for k, v in wanted.items())
            ]
            return _json_reply(200, {"object": "list", "data": data, "has_more": False, "url": "/v1/disputes"})
        raise StripeAPIError(self._unrecognized(request), status=404)

    @staticmethod
    def _unrecognized(request: RecordedRequest) -> str:
        return (
            f"Unrecognized request URL ({request.method}: {request.path}). Please see https://stripe.com/docs "
            "or we can help at https://support.stripe.com/."
        )

    @staticmethod
    def _expand_param(params: Mapping[str, Any]) -> list[str]:
        expand = params.get("expand")
        if expand is None:
            return []
        if isinstance(expand, str):
            return [expand]
        if not isinstance(expand, list) or not all(isinstance(e, str) for e in expand):
            raise StripeAPIError("Invalid array", "expand")
        return cast(list[str], expand)

    def _find(self, session_id: str) -> _StripeSession:
        session = self._sessions.get(session_id)
        if session is None:
            raise StripeAPIError(
                f"No such checkout.session: '{session_id}'", "session", status=404, code="resource_missing"
            )
        return session

    def _create_session(self, params: JSONDict) -> _StripeSession:
        mode = params.get("mode")
        if mode in (None, ""):
            raise StripeAPIError("Missing required param: mode.", "mode")
        if mode not in ("payment", "setup", "subscription"):
            raise StripeAPIError("Invalid mode: must be one of payment, setup, or subscription", "mode")
        if mode != "payment":
            raise StripeAPIError(f"FakeStripe implements only mode=payment, not {mode}", "mode")
        items = params.get("line_items")
        if items in (None, "", []):
            raise StripeAPIError("Missing required param: line_items.", "line_items")
        if not isinstance(items, list):
            raise StripeAPIError("Invalid array", "line_items")
        total, currency = 0, None
        for i, item in enumerate(items):
            p = f"line_items[{i}]"
            if not isinstance(item, dict):
                raise StripeAPIError("Invalid object", p)
            if "price" in item:
                raise StripeAPIError(f"No such price: '{item['price']}'", f"{p}[price]", code="resource_missing")
            price_data = item.get("price_data")
            if not isinstance(price_data, dict):
                raise StripeAPIError(f"You must specify either `price` or `price_data` in `{p}`.", p)
            item_currency = price_data.get("currency")
            if item_currency in (None, ""):
                raise StripeAPIError(
                    f"Missing required param: {p}[price_data][currency].", f"{p}[price_data][currency]"
                )
            item_currency = str(item_currency).lower()
            if not re.fullmatch(r"[a-z]{3}", item_currency):
                raise StripeAPIError(f"Invalid currency: {item_currency}.", f"{p}[price_data][currency]")
            if currency is not None and item_currency != currency:
                raise StripeAPIError("All line items must use the same currency.", f"{p}[price_data][currency]")
            currency = item_currency
            product_data = price_data.get("product_data")
            if "product" not in price_data:
                if not isinstance(product_data, dict):
                    raise StripeAPIError(
                        "You must specify either `product` or `product_data` when creating a price.",
                        f"{p}[price_data][product_data]",
                    )
                if product_data.get("name") in (None, ""):
                    raise StripeAPIError(
                        f"Missing required param: {p}[price_data][product_data][name].",
                        f"{p}[price_data][product_data][name]",
                    )
            if price_data.get("unit_amount") in (None, ""):
                raise StripeAPIError(
                    f"Missing required param: {p}[price_data][unit_amount].", f"{p}[price_data][unit_amount]"
                )
            unit_amount = _stripe_int(price_data["unit_amount"], f"{p}[price_data][unit_amount]", 1)
            if item.get("quantity") in (None, ""):
                raise StripeAPIError(f"Quantity is required. Add `quantity` to `{p}`", f"{p}[quantity]")
            total += unit_amount * _stripe_int(item["quantity"], f"{p}[quantity]", 1)
        now = int(time.time())
        expires_at = now + 24 * 3600
        if params.get("expires_at") not in (None, ""):
            expires_at = _stripe_int(params["expires_at"], "expires_at")
        metadata = _stripe_metadata(params.get("metadata"), "metadata")
        pi_data = params.get("payment_intent_data") or {}
        if not isinstance(pi_data, dict):
            raise StripeAPIError("Invalid object", "payment_intent_data")
        pi_metadata = _stripe_metadata(pi_data.get("metadata"), "payment_intent_data[metadata]")
        session_id = _random_id("cs_test_", 58)
        obj: JSONDict = {
            "id": session_id,
            "object": "checkout.session",
            "mode": "payment",
            "status": "open",
            "payment_status": "unpaid",
            "amount_subtotal": total,
            "amount_total": total,
            "currency": currency,
            "client_reference_id": params.get("client_reference_id") or None,
            "customer": None,
            "customer_email": params.get("customer_email") or None,
            "metadata": metadata,
            "payment_intent": None,
            "url": f"{self.url}/pay/{session_id}",
            "expires_at": expires_at,
            "created": now,
            "livemode": False,
            "success_url": params.get("success_url") or None,
            "cancel_url": params.get("cancel_url") or None,
        }
        session = _StripeSession(obj, pi_metadata)
        self._sessions[session_id] = session
        return session

    def _expire(self, session_id: str) -> _StripeSession:
        session = self._find(session_id)
        if session.obj["status"] != "open":
            raise StripeAPIError('Only Checkout Sessions with a status in ["open"] can be expired.')
        session.obj["status"] = "expired"
        session.obj["url"] = None
        return session

    def _render_session(self, session: _StripeSession, expand: Sequence[str] = ()) -> JSONDict:
        obj = copy.deepcopy(session.obj)
        expand_pi = expand_charge = False
        for path in expand:
            head, _, rest = path.partition(".")
            if head == "payment_intent" and rest in ("", "latest_charge"):
                expand_pi = True
                expand_charge = expand_charge or rest == "latest_charge"
            elif head not in self.EXPANDABLE_NULL or rest:
                raise StripeAPIError(f"This property cannot be expanded ({path}).", "expand")
        pi_id = obj["payment_intent"]
        if expand_pi and pi_id is not None:
            obj["payment_intent"] = self._render_payment_intent(pi_id, expand_charge)
        return obj

    def _render_payment_intent(self, pi_id: str, expand_charge: bool) -> JSONDict:
        pi = copy.deepcopy(self._payment_intents[pi_id])
        if expand_charge and pi["latest_charge"] is not None:
            pi["latest_charge"] = copy.deepcopy(self._charges[pi["latest_charge"]])
        return pi

    # test control

    def _control_session(self, session_id: str) -> _StripeSession:
        session = self._sessions.get(session_id)
        if session is None:
            raise KeyError(f"no checkout session {session_id!r}")
        return session

    def _charge_of(self, session: _StripeSession) -> JSONDict:
        pi_id = session.obj["payment_intent"]
        if pi_id is None:
            raise ValueError(f"checkout session {session.obj['id']} has no payment")
        charge: JSONDict = self._charges[self._payment_intents[pi_id]["latest_charge"]]
        return charge

    def _payment_objects(self, session: _StripeSession, amount: int, currency: str) -> tuple[JSONDict, JSONDict]:
        """The session's PaymentIntent and Charge, created on first use."""
        pi_id = session.obj["payment_intent"]
        if pi_id is not None:
            pi = self._payment_intents[pi_id]
            return pi, self._charges[pi["latest_charge"]]
        now = int(time.time())
        pi_id, charge_id = _random_id("pi_"), _random_id("ch_")
        new_pi: JSONDict = {
            "id": pi_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_received": 0,
            "currency": currency,
            "status": "processing",
            "metadata": dict(session.pi_metadata),
            "latest_charge": charge_id,
            "created": now,
            "livemode": False,
        }
        charge: JSONDict = {
            "id": charge_id,
            "object": "charge",
            "amount": amount,
            "amount_captured": 0,
            "amount_refunded": 0,
            "refunded": False,
            "captured": False,
            "paid": False,
            "currency": currency,
            "payment_intent": pi_id,
            "disputed": False,
            "status": "pending",
            "metadata": {},
            "created": now,
            "livemode": False,
        }
        self._payment_intents[pi_id] = new_pi
        self._charges[charge_id] = charge
        session.obj["payment_intent"] = pi_id
        return new_pi, charge

    def pay(self, session_id: str, amount_total: int | None = None, currency: str | None = None) -> JSONDict:
        """The customer pays: status "complete", payment_status "paid", a succeeded PaymentIntent and Charge.

        amount_total/currency default to the session's; others simulate a mismatch (the session then carries
        them too, as a session's totals reflect what was charged). Also completes a pay_async_pending() session.
        Returns the session (payment_intent as the id).
        """
        with self._lock:
            session = self._control_session(session_id)
            obj = session.obj
            if obj["payment_status"] == "paid" or obj["status"] == "expired":
                raise ValueError(f"checkout session {session_id} is {obj['status']}/{obj['payment_status']}")
            amount = obj["amount_total"] if amount_total is None else amount_total
            cur = (currency or obj["currency"]).lower()
            pi, charge = self._payment_objects(session, amount, cur)
            pi.update(amount=amount, amount_received=amount, currency=cur, status="succeeded")
            charge.update(
                amount=amount, amount_captured=amount, currency=cur, status="succeeded", paid=True, captured=True
            )
            obj.update(
                status="complete", payment_status="paid", amount_subtotal=amount, amount_total=amount, currency=cur
            )
            return self._render_session(session)

    def pay_async_pending(self, session_id: str) -> JSONDict:
        """The customer completes checkout with a delayed method: status "complete", payment_status "unpaid",
        a "processing" PaymentIntent with a "pending" Charge. pay() later settles it."""
        with self._lock:
            session = self._control_session(session_id)
            if session.obj["status"] != "open":
                raise ValueError(f"checkout session {session_id} is {session.obj['status']}")
            self._payment_objects(session, session.obj["amount_total"], session.obj["currency"])
            session.obj["status"] = "complete"
            return self._render_session(session)

    def refund(self, session_id: str, amount: int) -> JSONDict:
        """Refund `amount` of the session's charge (cumulative amount_refunded); returns the Charge."""
        with self._lock:
            charge = self._charge_of(self._control_session(session_id))
            if charge["status"] != "succeeded":
                raise ValueError(f"charge {charge['id']} is {charge['status']}")
            if amount < 1 or charge["amount_refunded"] + amount > charge["amount_captured"]:
                raise ValueError(
                    f"cannot refund {amount} of {charge['amount_captured']} ({charge['amount_refunded']} refunded)"
                )
            charge["amount_refunded"] += amount
            charge["refunded"] = charge["amount_refunded"] == charge["amount_captured"]
            return copy.deepcopy(charge)

    def dispute(self, session_id: str, amount: int | None = None) -> JSONDict:
        """Open a dispute (status "needs_response", reason "fraudulent") on the session's charge; returns it."""
        with self._lock:
            charge = self._charge_of(self._control_session(session_id))
            if charge["status"] != "succeeded":
                raise ValueError(f"charge {charge['id']} is {charge['status']}")
            charge["disputed"] = True
            dispute: JSONDict = {
                "id": _random_id("dp_"),
                "object": "dispute",
                "amount": charge["amount"] if amount is None else amount,
                "currency": charge["currency"],
                "charge": charge["id"],
                "payment_intent": charge["payment_intent"],
                "status": "needs_response",
                "reason": "fraudulent",
                "created": int(time.time()),
                "livemode": False,
                "metadata": {},
            }
            self._disputes[dispute["id"]] = dispute
            return copy.deepcopy(dispute)

    def close_dispute(self, dispute_id: str, won: bool) -> JSONDict:
        """Close a dispute as "won" or "lost"; returns it."""
        with self._lock:
            dispute = self._disputes[dispute_id]
            if dispute["status"] in ("won", "lost"):
                raise ValueError(f"dispute {dispute_id} is already {dispute['status']}")
            dispute["status"] = "won" if won else "lost"
            return copy.deepcopy(dispute)

    def expire(self, session_id: str) -> JSONDict:
        """The session expires (status "expired"); returns it."""
        with self._lock:
            self._control_session(session_id)
            try:
                return self._render_session(self._expire(session_id))
            except StripeAPIError as exc:
                raise ValueError(exc.message) from None

    # inspection

    def session(self, session_id: str, expand: Sequence[str] = ()) -> JSONDict:
        """The session as GET /v1/checkout/sessions/{id} answers it (KeyError when unknown)."""
        with self._lock:
            return self._render_session(self._control_session(session_id), expand)

    def sessions(self) -> list[JSONDict]:
        """Every session created, oldest first."""
        with self._lock:
            return [self._render_session(s) for s in self._sessions.values()]

    def payment_intent(self, session_id: str, expand_charge: bool = False) -> JSONDict:
        with self._lock:
            session = self._control_session(session_id)
            if session.obj["payment_intent"] is None:
                raise ValueError(f"checkout session {session_id} has no payment")
            return self._render_payment_intent(session.obj["payment_intent"], expand_charge)

    def charge(self, session_id: str) -> JSONDict:
        with self._lock:
            return copy.deepcopy(self._charge_of(self._control_session(session_id)))

    # webhooks

    @staticmethod
    def event(
        type: str, obj: Mapping[str, Any], *, created: int | None = None, event_id: str | None = None
    ) -> JSONDict:
        """A Stripe Event (API version STRIPE_EVENT_API_VERSION) of `type` carrying `obj`."""
        return {
            "id": event_id or _random_id("evt_"),
            "object": "event",
            "api_version": STRIPE_EVENT_API_VERSION,
            "created": int(time.time()) if created is None else created,
            "type": type,
            "livemode": False,
            "data": {"object": copy.deepcopy(dict(obj))},
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
        }

    @staticmethod
    def delivery(event: Mapping[str, Any], secret: str, timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
        """The body and headers of the webhook POST Stripe sends for `event`, signed with `secret`."""
        body = json.dumps(event, indent=2).encode()
        return body, {"Content-Type": "application/json", "Stripe-Signature": sign_stripe(body, secret, timestamp)}


# --- Fondy -------------------------------------------------------------------------------------------------------

# Fondy answers HTTP 200 with response_status "failure" and one of these error codes. 1013, 1014 and 1018 are
# Fondy's documented codes; the others are this fake's choice: assert on response_status, not on them.
FONDY_INTERNAL_ERROR = 1000
FONDY_MERCHANT_ERROR = 1002
FONDY_PARAMETER_ERROR = 1011
FONDY_DUPLICATE_ORDER = 1013
FONDY_INVALID_SIGNATURE = 1014
FONDY_ORDER_NOT_FOUND = 1018

FONDY_CURRENCIES = frozenset({"UAH", "USD", "EUR", "GBP", "PLN", "CZK"})
FONDY_ORDER_STATUSES = ("created", "processing", "declined", "approved", "expired", "reversed")


def fondy_signature(password: str, params: Mapping[str, Any]) -> str:
    """Fondy's protocol 1.0 signature: SHA-1 (hex) of the password and the non-empty values by key, "|"-joined."""
    values = [
        str(params[k])
        for k in sorted(params)
        if k not in ("signature", "response_signature_string") and params[k] not in ("", None)
    ]
    return hashlib.sha1("|".join([password, *values]).encode()).hexdigest()  # noqa: S324 - Fondy's algorithm


class FondyAPIError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class _FondyOrder:
    order_id: str
    request: JSONDict  # the checkout request's fields but the signature
    amount: int
    currency: str
    payment_id: int
    checkout_url: str
    created: float
    lifetime: int
    status: str = "created"
    actual_amount: int | None = None
    actual_currency: str = ""
    reversal_amount: int = 0
    card: dict[str, Any] = field(default_factory=dict)


class FakeFondy(_FakeServer):
    """Fondy's checkout API (protocol 1.0, JSON): POST /api/checkout/url/ and POST /api/status/order_id.

    `merchant_id`/`password` default to Fondy's public test merchant. Requests are `{"request": {...}}` signed
    with fondy_signature over every field but the signature; answers are HTTP 200 `{"response": {...}}`, with
    response_status "failure" and an error_code on errors (see the FONDY_* codes). Orders in "created" expire
    by themselves after their `lifetime` (default 36000 s). GET /merchant/checkout?token=... is the payment
    page (a stub, not an API call).
    """

    api_prefix: ClassVar[str] = "/api/"
    REQUIRED_CHECKOUT_FIELDS: ClassVar[tuple[str, ...]] = (
        "order_id",
        "order_desc",
        "amount",
        "currency",
        "server_callback_url",
    )

    def __init__(self, merchant_id: int = 1396424, password: str = "test") -> None:  # noqa: S107 - Fondy's test merchant
        super().__init__()
        self.merchant_id = merchant_id
        self.password = password
        self._orders: dict[str, _FondyOrder] = {}
        self._tokens: dict[str, str] = {}
        self._next_payment_id = 800_000_000 + secrets.randbelow(100_000_000)

    # HTTP

    def _fault_reply(self) -> _Reply:
        return _json_reply(
            500,
            {"response": {"response_status": "failure", "error_message": "Internal error (fake fault)",
                          "error_code": FONDY_INTERNAL_ERROR, "request_id": secrets.token_hex(8)}},
        )  # fmt: skip

    def _route(self, request: RecordedRequest, parse_error: str | None) -> _Reply:
        path = request.path.rstrip("/")
        if request.method == "GET" and path == "/merchant/checkout":
            order_id = self._tokens.get(str(request.query.get("token", "")))
            if order_id is None:
                return _text_reply(404, "Not Found")
            return _text_reply(200, f"<html><body>Fake Fondy checkout, order {order_id}</body></html>", "text/html")
        handlers = {"/api/checkout/url": self._checkout_url, "/api/status/order_id": self._status}
        handler = handlers.get(path) if request.method == "POST" else None
        if handler is None:
            return _json_reply(404, self._failure(FondyAPIError(FONDY_PARAMETER_ERROR, "Unknown API method")))
        try:
            body = request.body
            if parse_error is not None or not isinstance(body, dict) or not isinstance(body.get("request"), dict):
                raise FondyAPIError(FONDY_PARAMETER_ERROR, 'Request is empty or is not a JSON {"request": {...}}')
            fields: JSONDict = body["request"]
            self._authenticate(fields)
            return _json_reply(200, {"response": handler(fields)})
        except FondyAPIError as exc:
            return _json_reply(200, self._failure(exc))

    @staticmethod
    def _failure(exc: FondyAPIError) -> JSONDict:
        return {"response": {"response_status": "failure", "error_message": exc.message, "error_code": exc.code,
                             "request_id": secrets.token_hex(8)}}  # fmt: skip

    def _authenticate(self, fields: JSONDict) -> None:
        merchant_id = fields.get("merchant_id")
        if merchant_id in (None, ""):
            raise FondyAPIError(FONDY_PARAMETER_ERROR, "Parameter `merchant_id` is missing")
        if str(merchant_id) != str(self.merchant_id):
            raise FondyAPIError(FONDY_MERCHANT_ERROR, f"Merchant not found: {merchant_id}")
        expected = fondy_signature(self.password, fields)
        given = fields.get("signature")
        if not isinstance(given, str) or not hmac.compare_digest(given.lower(), expected):
            shown = "|".join(
                ["**********", *(str(fields[k]) for k in sorted(fields)
                                 if k not in ("signature", "response_signature_string")
                                 and fields[k] not in ("", None))]
            )  # fmt: skip
            raise FondyAPIError(
                FONDY_INVALID_SIGNATURE, f"Invalid signature signature: {given}; response_signature_string: {shown}"
            )

    def _checkout_url(self, fields: JSONDict) -> JSONDict:
        for name in self.REQUIRED_CHECKOUT_FIELDS:
            if fields.get(name) in (None, ""):
                raise FondyAPIError(FONDY_PARAMETER_ERROR, f"Parameter `{name}` is missing")
        amount = fields["amount"]
        if isinstance(amount, bool) or not re.fullmatch(r"\d+", str(amount)) or int(amount) < 1:
            raise FondyAPIError(FONDY_PARAMETER_ERROR, f"Parameter `amount` is incorrect: {amount!r}")
        currency = str(fields["currency"])
        if currency not in FONDY_CURRENCIES:
            raise FondyAPIError(FONDY_PARAMETER_ERROR, f"Parameter `currency` is incorrect: {currency!r}")
        lifetime = fields.get("lifetime", 36000)
        if isinstance(lifetime, bool) or not re.fullmatch(r"\d+", str(lifetime)):
            raise FondyAPIError(FONDY_PARAMETER_ERROR, f"Parameter `lifetime` is incorrect: {lifetime!r}")
        order_id = str(fields["order_id"])
        request = {k: v for k, v in fields.items() if k != "signature"}
        existing = self._orders.get(order_id)
        if existing is not None:
            self._refresh(existing)
            if existing.amount != int(amount) or existing.currency != currency or existing.status != "created":
                raise FondyAPIError(FONDY_DUPLICATE_ORDER, "Duplicate order_id for merchant")
            return self._checkout_answer(existing)
        token = secrets.token_hex(20)
        self._next_payment_id += 1
        order = _FondyOrder(
            order_id=order_id,
            request=request,
            amount=int(amount),
            currency=currency,
            payment_id=self._next_payment_id,
            checkout_url=f"{self.url}/merchant/checkout?token={token}",
            created=time.time(),
            lifetime=int(lifetime),
        )
        self._orders[order_id] = order
        self._tokens[token] = order_id
        return self._checkout_answer(order)

    @staticmethod
    def _checkout_answer(order: _FondyOrder) -> JSONDict:
        return {"response_status": "success", "checkout_url": order.checkout_url, "payment_id": order.payment_id}

    def _status(self, fields: JSONDict) -> JSONDict:
        if fields.get("order_id") in (None, ""):
            raise FondyAPIError(FONDY_PARAMETER_ERROR, "Parameter `order_id` is missing")
        order = self._orders.get(str(fields["order_id"]))
        if order is None:
            raise FondyAPIError(FONDY_ORDER_NOT_FOUND, "Order not found")
        return self._signed(order)

    # order state

    @staticmethod
    def _refresh(order: _FondyOrder) -> None:
        if order.status == "created" and time.time() > order.created + order.lifetime:
            order.status = "expired"

    def _signed(self, order: _FondyOrder) -> JSONDict:
        """The order's current state, as a callback and the status answer carry it, signed."""
        self._refresh(order)
        paid = order.actual_amount is not None
        card = order.card
        fields: JSONDict = {
            "order_id": order.order_id,
            "merchant_id": self.merchant_id,
            "amount": str(order.amount),
            "currency": order.currency,
            "order_status": order.status,
            "response_status": "success",
            "payment_id": order.payment_id,
            "actual_amount": str(order.actual_amount) if paid else "",
            "actual_currency": order.actual_currency,
            "reversal_amount": str(order.reversal_amount),
            "settlement_amount": "0",
            "settlement_currency": "",
            "settlement_date": "",
            "sender_email": str(order.request.get("sender_email") or card.get("sender_email", "")),
            "sender_cell_phone": "",
            "sender_account": "",
            "order_time": time.strftime("%d.%m.%Y %H:%M:%S", time.localtime(order.created)),
            "tran_type": "purchase",
            "masked_card": card.get("masked_card", ""),
            "card_bin": card.get("card_bin", ""),
            "card_type": card.get("card_type", ""),
            "rrn": card.get("rrn", ""),
            "approval_code": card.get("approval_code", ""),
            "response_code": card.get("response_code", ""),
            "response_description": card.get("response_description", ""),
            "payment_system": "card" if card else "",
            "eci": "",
            "fee": "",
            "rectoken": "",
            "rectoken_lifetime": "",
            "verification_status": "",
            "parent_order_id": "",
            "product_id": str(order.request.get("product_id", "")),
            "merchant_data": str(order.request.get("merchant_data", "")),
        }
        fields["signature"] = fondy_signature(self.password, fields)
        return fields

    def _control_order(self, order_id: str) -> _FondyOrder:
        order = self._orders.get(order_id)
        if order is None:
            raise KeyError(f"no Fondy order {order_id!r}")
        self._refresh(order)
        return order

    def _card_data(self, approved: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "masked_card": "444455XXXXXX6666",
            "card_bin": 444455,
            "card_type": "VISA",
            "sender_email": "payer@example.com",
        }
        if approved:
            data["rrn"] = "".join(secrets.choice(string.digits) for _ in range(12))
            data["approval_code"] = "".join(secrets.choice(string.digits) for _ in range(6))
        else:
            data["response_code"] = 1005
            data["response_description"] = "Declined by the issuer (fake)"
        return data

    # test control

    def approve(self, order_id: str, amount: int | None = None, currency: str | None = None) -> JSONDict:
        """The order is paid: order_status "approved", actual_amount/actual_currency the order's unless given
        (to simulate a mismatch). Returns the signed state."""
        with self._lock:
            order = self._control_order(order_id)
            if order.status not in ("created", "processing"):
                raise ValueError(f"Fondy order {order_id} is {order.status}")
            order.status = "approved"
            order.actual_amount = order.amount if amount is None else amount
            order.actual_currency = order.currency if currency is None else currency
            order.card = self._card_data(approved=True)
            return self._signed(order)

    def processing(self, order_id: str) -> JSONDict:
        """The payer is paying (order_status "processing"). Returns the signed state."""
        with self._lock:
            order = self._control_order(order_id)
            if order.status != "created":
                raise ValueError(f"Fondy order {order_id} is {order.status}")
            order.status = "processing"
            return self._signed(order)

    def decline(self, order_id: str) -> JSONDict:
        """The payment is declined (order_status "declined"). Returns the signed state."""
        with self._lock:
            order = self._control_order(order_id)
            if order.status not in ("created", "processing"):
                raise ValueError(f"Fondy order {order_id} is {order.status}")
            order.status = "declined"
            order.card = self._card_data(approved=False)
            return self._signed(order)

    def expire(self, order_id: str) -> JSONDict:
        """The order expires unpaid (order_status "expired"). Returns the signed state."""
        with self._lock:
            order = self._control_order(order_id)
            if order.status not in ("created", "processing"):
                raise ValueError(f"Fondy order {order_id} is {order.status}")
            order.status = "expired"
            return self._signed(order)

    def reverse(self, order_id: str, amount: int) -> JSONDict:
        """Reverse (refund) `amount` of an approved order: reversal_amount grows; order_status becomes
        "reversed" once all of actual_amount is reversed. Returns the signed state."""
        with self._lock:
            order = self._control_order(order_id)
            if order.status != "approved" or order.actual_amount is None:
                raise ValueError(f"Fondy order {order_id} is {order.status}")
            if amount < 1 or order.reversal_amount + amount > order.actual_amount:
                raise ValueError(f"cannot reverse {amount} of {order.actual_amount} ({order.reversal_amount} reversed)")
            order.reversal_amount += amount
            if order.reversal_amount == order.actual_amount:
                order.status = "reversed"
            return self._signed(order)

    # inspection and callbacks

    def order(self, order_id: str) -> JSONDict:
        """The order's signed state, as POST /api/status/order_id answers it (KeyError when unknown)."""
        with self._lock:
            return self._signed(self._control_order(order_id))

    def orders(self) -> list[JSONDict]:
        with self._lock:
            return [self._signed(o) for o in self._orders.values()]

    def callback(self, order_id: str) -> tuple[bytes, dict[str, str]]:
        """The body and headers of Fondy's server callback (protocol 1.0 JSON: a flat signed object) for the
        order's current state."""
        return json.dumps(self.order(order_id)).encode(), {"Content-Type": "application/json"}

    def callback_form(self, order_id: str) -> tuple[bytes, dict[str, str]]:
        """The same callback as application/x-www-form-urlencoded."""
        return urlencode(self.order(order_id)).encode(), {"Content-Type": "application/x-www-form-urlencoded"}
