"""The tool registry: what the gateway can call, whatever the tool is behind it.

Two kinds of tool share one interface (``Tool``):

* Python tools (``PythonTool``), registered in code with ``ToolRegistry.add`` or by configuration
  (a module path whose ``register(registry)`` adds them). They may report metered costs during the
  call through ``ToolContext.report_cost`` (e.g. provider tokens x rate); the gateway prices the
  call from those costs with ``billing.tool_price``.
* Tools of upstream MCP servers (``api.tools.upstream``), listed and called through the SDK's client.

The registry knows nothing about billing: ``api.gateway.metering`` wraps every call in the metered flow.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import jsonschema
import mcp_types as types

from api.errors import TollgateError

TOOL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


class ToolError(Exception):
    """A tool refused or failed its call in a way the caller should see (an MCP ``isError`` result).

    The call counts as failed: its hold is released and nothing is charged.
    """


class InvalidArguments(ToolError, TollgateError):
    """The arguments do not satisfy the tool's input schema. Answered 422 over HTTP."""

    status = 422
    code = "invalid_arguments"


@dataclass
class CostItem:
    """One metered cost reported by a tool during a call (a line of ``cost_tracking.cost_breakdown``)."""

    provider: str
    cost_usd: Decimal
    units: Decimal | int | None = None
    unit: str | None = None

    def as_json(self) -> dict[str, Any]:
        item: dict[str, Any] = {"provider": self.provider, "cost_usd": self.cost_usd}
        if self.units is not None:
            item["units"] = self.units
        if self.unit is not None:
            item["unit"] = self.unit
        return item


@dataclass
class ToolContext:
    """What a tool sees of the call it serves: its request id, and a place to report metered costs."""

    request_id: str
    tool_name: str
    costs: list[CostItem] = field(default_factory=list)

    def report_cost(
        self, provider: str, cost_usd: Decimal, *, units: Decimal | int | None = None, unit: str | None = None
    ) -> None:
        """Add a metered cost of this call (USD, Decimal; never float)."""
        if isinstance(cost_usd, bool) or not isinstance(cost_usd, Decimal | int):
            raise TypeError(f"cost_usd must be a Decimal, not {type(cost_usd).__name__}")
        cost = Decimal(cost_usd)
        if not cost.is_finite() or cost < 0:
            raise ValueError(f"cost_usd must be a finite amount >= 0, got {cost}")
        if units is not None and (isinstance(units, bool) or not isinstance(units, Decimal | int)):
            raise TypeError(f"units must be a Decimal or int, not {type(units).__name__}")
        self.costs.append(CostItem(provider, cost, units, unit))

    @property
    def total_cost_usd(self) -> Decimal:
        return sum((item.cost_usd for item in self.costs), Decimal(0))


class Tool(Protocol):
    """A callable tool. ``call`` returns an MCP result; raising ``ToolError`` (or any exception) fails it."""

    @property
    def name(self) -> str: ...

    @property
    def definition(self) -> types.Tool: ...

    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> types.CallToolResult: ...


ToolFunction = Callable[[dict[str, Any], ToolContext], Awaitable[types.CallToolResult | str | dict[str, Any]]]


class PythonTool:
    """A tool implemented by an async Python function ``fn(arguments, ctx)``.

    The function may return a ``CallToolResult``, a string (one text block) or a dict (structured
    content, also rendered as JSON text). Arguments are validated against ``input_schema`` first.
    """

    def __init__(
        self,
        name: str,
        fn: ToolFunction,
        *,
        description: str,
        input_schema: Mapping[str, Any] | None = None,
    ) -> None:
        if not TOOL_NAME.match(name):
            raise ValueError(f"tool name {name!r} must be 1-128 characters of letters, digits, '_', '.', '-'")
        schema = dict(input_schema or {"type": "object", "properties": {}, "additionalProperties": False})
        jsonschema.Draft202012Validator.check_schema(schema)
        self._name = name
        self._fn = fn
        self._validator = jsonschema.Draft202012Validator(schema)
        self._definition = types.Tool(name=name, description=description, input_schema=schema)

    @property
    def name(self) -> str:
        return self._name

    @property
    def definition(self) -> types.Tool:
        return self._definition

    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> types.CallToolResult:
        validate_arguments(self._validator, arguments)
        result = await self._fn(arguments, ctx)
        return as_call_result(result)


def validate_arguments(validator: jsonschema.protocols.Validator, arguments: dict[str, Any]) -> None:
    """Raise ``InvalidArguments`` naming the first schema violation (path and reason)."""
    error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "(arguments)"
        raise InvalidArguments(f"invalid arguments at {where}: {error.message}")


def as_call_result(result: types.CallToolResult | str | dict[str, Any]) -> types.CallToolResult:
    if isinstance(result, types.CallToolResult):
        return result
    if isinstance(result, str):
        return types.CallToolResult(content=[types.TextContent(type="text", text=result)])
    from api.jsonio import dumps  # local: jsonio imports nothing from here, but keep the registry light

    return types.CallToolResult(content=[types.TextContent(type="text", text=dumps(result))], structured_content=result)


class ToolRegistry:
    """Tools by name. Names are unique across Python tools and all upstream servers."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        self._validators: dict[str, jsonschema.protocols.Validator] = {}

    def add(self, tool: Tool) -> None:
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        schema = dict(tool.definition.input_schema)
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.exceptions.SchemaError as exc:
            raise ValueError(f"tool {tool.name!r} has an invalid input schema: {exc.message}") from None
        self._tools[tool.name] = tool
        self._validators[tool.name] = jsonschema.Draft202012Validator(schema)

    def validate(self, name: str, arguments: dict[str, Any]) -> None:
        """Check arguments against the tool's input schema before anything is held or tracked."""
        validate_arguments(self._validators[name], arguments)

    def function(
        self, name: str, *, description: str, input_schema: Mapping[str, Any] | None = None
    ) -> Callable[[ToolFunction], ToolFunction]:
        """Decorator registering an async function as a ``PythonTool``."""

        def register(fn: ToolFunction) -> ToolFunction:
            self.add(PythonTool(name, fn, description=description, input_schema=input_schema))
            return fn

        return register

    def load_module(self, module_path: str) -> None:
        """Import ``module_path`` and call its ``register(registry)``."""
        module = importlib.import_module(module_path)
        register = getattr(module, "register", None)
        if not callable(register):
            raise ValueError(f"tool module {module_path!r} has no register(registry) function")
        register(self)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def definitions(self) -> list[types.Tool]:
        return [tool.definition for tool in self._tools.values()]

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)
