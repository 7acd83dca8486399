"""The tool configuration file (TOML): which tools the gateway serves, and their initial prices.

::

    python_modules = ["examples.python_tools"]   # each module's register(registry) adds tools

    [[upstream]]                                  # an upstream MCP server; repeat for more
    name = "legal"                                # unique: letters, digits, '_', '-'
    command = ["{python}", "examples/upstream_server.py"]   # stdio; or url = "http://…/mcp"
    # env = { KEY = "value" }                     # with command: extra environment variables
    # cwd = "."                                   # with command: default the config file's directory
    # headers = { Authorization = "Bearer …" }    # with url
    prefix = ""                                   # prepended to the upstream's tool names
    # tools = ["lookup_law"]                      # expose only these (default: all it lists)
    timeout_seconds = 60                          # per call
    # connect_timeout_seconds = 30                # connect, initialize and list the tools

    [pricing."lookup_law"]                        # applied only when the tool has no price yet
    base_price_usd = "0.02"                       # money: strings or integers, never TOML floats
    markup_percent = "0"
    estimate_usd = "0.02"                         # the hold, for a tool declaring no bound below
    variable_cost = false
    # max_price_usd = "0.16"                      # the most one call is charged; also its hold
    # per_input_char_usd = "0.0000013"            # hold = base + characters of the arguments' strings
    #                                             #   x this x (1 + markup), at most max_price_usd
    description = "…"
    anonymous = "free:20/day"                     # callers without credentials: "deny", "free" or
    #                                             #   "free:N/day" (N calls a day per client address);
    #                                             #   unset: deny when priced, free when free. Applied
    #                                             #   also to a priced tool whose policy was never set

``"{python}"`` in a command is this interpreter (``sys.executable``). Relative paths resolve
against the config file's directory: ``cwd``, a command's program when it contains a ``/``, and,
since that directory is the default working directory, relative arguments. The directory is
also put on ``sys.path`` for ``python_modules``. Unknown keys, wrong types and TOML floats for
money are errors naming the file and the key (``ToolConfigError``).
"""

from __future__ import annotations

import logging
import re
import sys
import tomllib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NoReturn

from api.tools.registry import TOOL_NAME, ToolRegistry
from api.tools.upstream import UPSTREAM_NAME, UpstreamConfig, close_upstreams, start_upstreams

log = logging.getLogger(__name__)

MODULE_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
MAX_TIMEOUT_SECONDS = 3600
USD_DECIMALS = 8
MARKUP_DECIMALS = 4
MAX_MARKUP_PERCENT = 100_000
PER_CHAR_DECIMALS = 12  # rates per input character are often below a micro-cent
MAX_PER_CHAR_USD = Decimal(1_000_000)

# [abuse] is read by api.abuse.config (through api.gateway.config), not here.
_TOP_KEYS = frozenset({"python_modules", "upstream", "pricing", "abuse"})
_UPSTREAM_KEYS = frozenset(
    {"name", "command", "url", "env", "cwd", "headers", "prefix", "tools", "timeout_seconds", "connect_timeout_seconds"}
)
_PRICING_KEYS = frozenset(
    {
        "base_price_usd",
        "markup_percent",
        "estimate_usd",
        "variable_cost",
        "description",
        "max_price_usd",
        "per_input_char_usd",
        "anonymous",
    }
)
# What callers without credentials get (billing.set_tool_pricing checks the same forms).
ANONYMOUS_POLICY = re.compile(r"^(deny|free|free:[1-9][0-9]{0,8}/day)$")


class ToolConfigError(ValueError):
    """The tool configuration is wrong; the message names the file and the key."""


@dataclass(frozen=True)
class ToolPricing:
    """An initial price (the arguments of ``billing.set_tool_pricing``), applied when none is set."""

    tool_name: str
    base_price_usd: Decimal
    markup_percent: Decimal = Decimal(0)
    estimate_usd: Decimal | None = None
    variable_cost: bool = False
    description: str | None = None
    max_price_usd: Decimal | None = None
    per_input_char_usd: Decimal | None = None
    # "deny", "free" or "free:N/day"; None: the default (deny when the tool can cost money, else free).
    anonymous: str | None = None


@dataclass(frozen=True)
class ToolConfig:
    path: Path
    python_modules: tuple[str, ...] = ()
    upstreams: tuple[UpstreamConfig, ...] = ()
    pricing: Mapping[str, ToolPricing] = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return self.path.parent


def load_tool_config(path: str | Path) -> ToolConfig:
    """Read and check the configuration file. Raises ``ToolConfigError``."""
    path = Path(path).expanduser().resolve()
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ToolConfigError(f"{path}: cannot read the tool configuration: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ToolConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_tool_config(data, path)


def parse_tool_config(data: Mapping[str, Any], path: Path) -> ToolConfig:
    """Check already-parsed TOML ``data`` read from ``path`` (which anchors relative paths)."""
    where = _Where(path)
    where.no_unknown_keys(data, _TOP_KEYS, "")
    modules = tuple(where.string_list(data, "python_modules", "python_modules") or ())
    for index, module in enumerate(modules):
        if not MODULE_PATH.match(module):
            where.fail(f"python_modules[{index}]", f"{module!r} is not a dotted module path")
    if len(set(modules)) != len(modules):
        where.fail("python_modules", "lists a module more than once")

    raw_upstreams = data.get("upstream", [])
    if not isinstance(raw_upstreams, list):
        where.fail("upstream", "must be an array of tables ([[upstream]])")
    upstreams: list[UpstreamConfig] = []
    for index, raw in enumerate(raw_upstreams):
        upstreams.append(_upstream(where, raw, f"upstream[{index}]", path.parent))
    names = [upstream.name for upstream in upstreams]
    for name in sorted({name for name in names if names.count(name) > 1}):
        where.fail("upstream", f"two upstreams are named {name!r}; names must be unique")

    raw_pricing = data.get("pricing", {})
    if not isinstance(raw_pricing, dict):
        where.fail("pricing", 'must be a table of tables ([pricing."tool name"])')
    pricing = {name: _pricing(where, name, raw) for name, raw in raw_pricing.items()}
    return ToolConfig(path=path, python_modules=modules, upstreams=tuple(upstreams), pricing=pricing)


async def build_registry(config: ToolConfig) -> tuple[ToolRegistry, Callable[[], Awaitable[None]]]:
    """Load the Python tool modules, start the upstreams and register every tool.

    Returns the registry and an async ``close()`` stopping the upstreams (call it at shutdown;
    any task may). Raises ``ToolConfigError`` (bad module, duplicate tool name) or
    ``UpstreamError`` (an upstream did not start); nothing is left running then.
    """
    where = _Where(config.path)
    registry = ToolRegistry()
    sources: dict[str, str] = {}
    directory = str(config.directory)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    for module in config.python_modules:
        before = set(sources)
        try:
            registry.load_module(module)
        except ImportError as exc:
            where.fail("python_modules", f"cannot import {module!r}: {exc}")
        except ValueError as exc:
            where.fail("python_modules", f"{module!r}: {exc}")
        for definition in registry.definitions():
            if definition.name not in before:
                sources[definition.name] = f"python module {module!r}"

    servers = await start_upstreams(config.upstreams)
    try:
        for server in servers:
            for tool in server.tools():
                if tool.name in sources:
                    raise ToolConfigError(
                        f"{config.path}: upstream {server.name!r} has a tool {tool.name!r}, but {sources[tool.name]} "
                        "already registered that name (set a prefix for the upstream, or expose fewer tools)"
                    )
                registry.add(tool)
                sources[tool.name] = f"upstream {server.name!r}"
    except BaseException:
        await close_upstreams(servers)
        raise
    for name in config.pricing:
        if name not in registry:
            log.warning("pricing for a tool that is not served", extra={"tool": name, "config": str(config.path)})

    async def close() -> None:
        await close_upstreams(servers)

    return registry, close


@dataclass(frozen=True)
class _Where:
    """Error reporting: every message starts with the file and the key."""

    path: Path

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ToolConfigError(f"{self.path}: {key}: {problem}" if key else f"{self.path}: {problem}")

    def no_unknown_keys(self, table: Mapping[str, Any], known: frozenset[str], key: str) -> None:
        unknown = sorted(set(table) - known)
        if unknown:
            self.fail(key, f"unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")

    def string(self, table: Mapping[str, Any], name: str, key: str) -> str | None:
        value = table.get(name)
        if value is not None and not isinstance(value, str):
            self.fail(key, f"must be a string, not {_toml_type(value)}")
        return value

    def string_list(self, table: Mapping[str, Any], name: str, key: str) -> list[str] | None:
        value = table.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.fail(key, "must be an array of strings")
        return list(value)

    def string_table(self, table: Mapping[str, Any], name: str, key: str) -> dict[str, str]:
        value = table.get(name, {})
        if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
            self.fail(key, 'must be a table of strings ({ KEY = "value" })')
        return dict(value)

    def seconds(self, table: Mapping[str, Any], name: str, key: str, default: float) -> float:
        value = table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_TIMEOUT_SECONDS:
            self.fail(key, f"must be a number of seconds, more than 0 and at most {MAX_TIMEOUT_SECONDS}")
        return float(value)

    def money(self, table: Mapping[str, Any], name: str, key: str, decimals: int) -> Decimal | None:
        value = table.get(name)
        if value is None:
            return None
        if isinstance(value, float):
            self.fail(
                key,
                f'TOML float {value!r} refused: write the amount as a string ("{value}") so it is exact '
                "(a binary float cannot hold most decimal amounts)",
            )
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.fail(key, f'must be a decimal string such as "0.02" (or an integer), not {_toml_type(value)}')
        try:
            amount = Decimal(value.strip() if isinstance(value, str) else value)
        except InvalidOperation:
            self.fail(key, f"{value!r} is not a decimal number")
        if not amount.is_finite() or amount < 0:
            self.fail(key, f"{value!r} must be a finite amount, 0 or more")
        exponent = amount.as_tuple().exponent
        if isinstance(exponent, int) and -exponent > decimals:
            self.fail(key, f"{value!r} has more than {decimals} decimals")
        return amount


def _upstream(where: _Where, raw: Any, key: str, directory: Path) -> UpstreamConfig:
    if not isinstance(raw, dict):
        where.fail(key, "must be a table")
    where.no_unknown_keys(raw, _UPSTREAM_KEYS, key)
    name = where.string(raw, "name", f"{key}.name")
    if name is None or not UPSTREAM_NAME.match(name):
        where.fail(f"{key}.name", "required: 1-64 letters, digits, '_' or '-'")
    command = where.string_list(raw, "command", f"{key}.command")
    url = where.string(raw, "url", f"{key}.url")
    if (command is None) == (url is None):
        where.fail(key, f"upstream {name!r} needs exactly one of command (stdio) and url (streamable HTTP)")
    if command is not None:
        if not command or not all(command):
            where.fail(f"{key}.command", "must be a non-empty array of non-empty strings")
        command = [part.replace("{python}", sys.executable) for part in command]
        if "/" in command[0] and not Path(command[0]).is_absolute():
            command[0] = str(directory / command[0])
        for label in ("headers",):
            if label in raw:
                where.fail(f"{key}.{label}", "applies to a url, not to a command")
    else:
        for label in ("env", "cwd"):
            if label in raw:
                where.fail(f"{key}.{label}", "applies to a command, not to a url")
    raw_cwd = where.string(raw, "cwd", f"{key}.cwd")
    cwd = (directory / raw_cwd).resolve() if raw_cwd is not None else directory
    prefix = where.string(raw, "prefix", f"{key}.prefix") or ""
    tools = where.string_list(raw, "tools", f"{key}.tools")
    for index, tool in enumerate(tools or []):
        if not TOOL_NAME.match(prefix + tool):
            where.fail(f"{key}.tools[{index}]", f"{prefix + tool!r} is not a valid tool name")
    try:
        return UpstreamConfig(
            name=name,
            command=tuple(command) if command is not None else None,
            url=url,
            env=where.string_table(raw, "env", f"{key}.env"),
            cwd=cwd if command is not None else None,
            headers=where.string_table(raw, "headers", f"{key}.headers"),
            prefix=prefix,
            tools=tuple(tools) if tools is not None else None,
            timeout_seconds=where.seconds(raw, "timeout_seconds", f"{key}.timeout_seconds", 60),
            connect_timeout_seconds=where.seconds(
                raw, "connect_timeout_seconds", f"{key}.connect_timeout_seconds", 30
            ),
        )
    except ValueError as exc:
        where.fail(key, str(exc))


def _pricing(where: _Where, name: str, raw: Any) -> ToolPricing:
    key = f"pricing.{_toml_key(name)}"
    if not TOOL_NAME.match(name):
        where.fail(key, f"{name!r} is not a valid tool name")
    if not isinstance(raw, dict):
        where.fail(key, "must be a table")
    where.no_unknown_keys(raw, _PRICING_KEYS, key)
    base = where.money(raw, "base_price_usd", f"{key}.base_price_usd", USD_DECIMALS)
    if base is None:
        where.fail(f"{key}.base_price_usd", 'required (e.g. "0.02"; "0" for a purely metered tool)')
    markup = where.money(raw, "markup_percent", f"{key}.markup_percent", MARKUP_DECIMALS)
    if markup is not None and markup > MAX_MARKUP_PERCENT:
        where.fail(f"{key}.markup_percent", f"must be at most {MAX_MARKUP_PERCENT}")
    variable_cost = raw.get("variable_cost", False)
    if not isinstance(variable_cost, bool):
        where.fail(f"{key}.variable_cost", f"must be true or false, not {_toml_type(variable_cost)}")
    description = where.string(raw, "description", f"{key}.description")
    if description is not None and not 0 < len(description) <= 1000:
        where.fail(f"{key}.description", "must be 1 to 1000 characters")
    estimate = where.money(raw, "estimate_usd", f"{key}.estimate_usd", USD_DECIMALS)
    max_price = where.money(raw, "max_price_usd", f"{key}.max_price_usd", USD_DECIMALS)
    if max_price is not None:
        if max_price == 0 or max_price < base:
            where.fail(f"{key}.max_price_usd", f"must be more than 0 and at least base_price_usd ({base})")
        if estimate is not None and estimate > max_price:
            where.fail(f"{key}.estimate_usd", f"must not be above max_price_usd ({max_price})")
    per_char = where.money(raw, "per_input_char_usd", f"{key}.per_input_char_usd", PER_CHAR_DECIMALS)
    if per_char is not None and per_char >= MAX_PER_CHAR_USD:
        where.fail(f"{key}.per_input_char_usd", f"must be below {MAX_PER_CHAR_USD}")
    anonymous = where.string(raw, "anonymous", f"{key}.anonymous")
    if anonymous is not None and not ANONYMOUS_POLICY.match(anonymous):
        where.fail(
            f"{key}.anonymous",
            f'{anonymous!r} is not "deny", "free" or "free:N/day" (N from 1 to 999999999 calls a day per client)',
        )
    return ToolPricing(
        tool_name=name,
        base_price_usd=base,
        markup_percent=markup if markup is not None else Decimal(0),
        estimate_usd=estimate,
        variable_cost=variable_cost,
        description=description,
        max_price_usd=max_price,
        per_input_char_usd=per_char,
        anonymous=anonymous,
    )


def _toml_key(name: str) -> str:
    return name if re.match(r"^[A-Za-z0-9_-]+$", name) else f'"{name}"'


def _toml_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array"}
    return names.get(type(value), "a table" if isinstance(value, dict) else type(value).__name__)

