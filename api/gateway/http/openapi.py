"""The OpenAPI 3.1 document, built from the endpoint table (and the MCP transports the SDK serves)."""

from __future__ import annotations

import re
from typing import Any

from api.gateway.http.access import Access
from api.gateway.http.endpoints import ENDPOINTS, Endpoint

ERROR_SCHEMA = {
    "type": "object",
    "required": ["success", "error"],
    "properties": {
        "success": {"const": False},
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}

SUCCESS_SCHEMA = {"type": "object", "properties": {"success": {"const": True}}}


def _mcp_operation(operation_id: str, summary: str, **extra: Any) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["mcp"],
        "security": [{"bearer": []}, {"apiKey": []}, {}],
        "responses": {"default": {"description": "per the MCP transport specification"}},
        **extra,
    }


_JSONRPC_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"type": "object", "description": "a JSON-RPC 2.0 message"}}},
}

# The MCP transports are served by the SDK; they are listed so that the document names every route.
MCP_PATHS: dict[str, Any] = {
    "/sse": {
        "get": _mcp_operation(
            "mcp_sse_stream",
            "MCP legacy SSE transport: an event stream; its first event names the message endpoint",
        )
    },
    "/messages/": {
        "post": _mcp_operation(
            "mcp_sse_message",
            "MCP legacy SSE transport: a client message for the session of `session_id` (202)",
            parameters=[{"name": "session_id", "in": "query", "required": True, "schema": {"type": "string"}}],
            requestBody=_JSONRPC_BODY,
        )
    },
    "/mcp": {
        "post": _mcp_operation(
            "mcp_streamable_post",
            "MCP streamable HTTP transport: client messages (initialize opens a session)",
            requestBody=_JSONRPC_BODY,
        ),
        "get": _mcp_operation("mcp_streamable_get", "MCP streamable HTTP transport: the session's event stream"),
        "delete": _mcp_operation("mcp_streamable_delete", "MCP streamable HTTP transport: end the session"),
    },
}


def build_openapi(version: str, endpoints: tuple[Endpoint, ...] = ENDPOINTS) -> dict[str, Any]:
    """The document of ``endpoints`` (those the main port serves: ``endpoints.served_endpoints``) and MCP."""
    paths: dict[str, Any] = {}
    for endpoint in endpoints:
        operation: dict[str, Any] = {
            "summary": endpoint.summary,
            "operationId": endpoint.handler.__name__,
            "tags": [endpoint.tag],
            "responses": {
                "200": {"description": "success", "content": {"application/json": {"schema": SUCCESS_SCHEMA}}},
                "default": {"description": "an error", "content": {"application/json": {"schema": ERROR_SCHEMA}}},
            },
        }
        for status, text in endpoint.responses.items():
            operation["responses"][str(status)] = {
                "description": text,
                "content": {"application/json": {"schema": ERROR_SCHEMA}},
            }
        if not endpoint.access.open:
            operation["security"] = (
                [{"bearer": []}, {"apiKey": []}] if endpoint.access is Access.CALLER else [{"bearer": []}]
            )
        parameters: list[dict[str, Any]] = []
        for name in re.findall(r"{(\w+)}", endpoint.path):
            schema: dict[str, Any] = {"type": "string"}
            if name in ("user_id", "intent_id"):
                schema = {"type": "string", "format": "uuid"}
            elif name == "transaction_id":
                schema = {"type": "integer", "minimum": 1}
            parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
        for name, schema in endpoint.query:
            parameters.append({"name": name, "in": "query", "required": False, "schema": schema})
        if endpoint.path == "/api/tools/{name}":
            parameters.append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "maxLength": 200},
                }
            )
        if parameters:
            operation["parameters"] = parameters
        if endpoint.body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": endpoint.body}}}
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation
    paths.update(MCP_PATHS)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tollgate",
            "version": version,
            "description": "Prepaid, usage-based billing gateway for MCP tools",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT or tg_ API key"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
        },
    }
