"""Tools over plain HTTP: the list (public) and the metered call (a JWT user or an API key)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from api.abuse.clientip import TrustedProxies
from api.gateway.auth import Identity
from api.gateway.http.envelope import ApiError, error_body, json_response, ok, scoped_request_id
from api.gateway.http.parsing import idempotency_key, read_json

if TYPE_CHECKING:
    from api.gateway.context import Gateway


async def list_tools(gateway: Gateway, request: Request, caller: Identity) -> Response:
    tools = [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in gateway.registry.definitions()]
    return ok(tools=tools)


async def call_tool(gateway: Gateway, request: Request, caller: Identity) -> Response:
    name = request.path_params["name"]
    arguments = await read_json(request)
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ApiError(422, "invalid_arguments", "the body must be the tool's arguments as a JSON object")
    key = idempotency_key(request)
    request_id = None if key is None else scoped_request_id(caller.label, key)
    client_ip = TrustedProxies(gateway.settings.abuse.trusted_proxies).client_ip(request.scope)
    outcome = await gateway.call_tool(
        caller, name, arguments, transport="http", request_id=request_id, client_ip=client_ip
    )
    result = outcome.result.model_dump(mode="json", by_alias=True, exclude_none=True)
    result.pop("resultType", None)
    if outcome.result.is_error:
        message = " ".join(b.get("text", "") for b in result.get("content", []) if isinstance(b, dict))
        return json_response(
            {
                **error_body("tool_error", message or "the tool failed"),
                "result": result,
                "billing": outcome.billing_json(),
            },
            status=502,
        )
    return ok(result=result, billing=outcome.billing_json())
