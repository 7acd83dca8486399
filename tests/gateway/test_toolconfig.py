"""The tool configuration file (api.tools.config): parsing, its errors, and building the registry.

No database. Building a registry with an upstream starts the real example server over stdio.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
import uuid
from decimal import Decimal
from pathlib import Path

import mcp_types as types
import pytest

from api.tools.config import ToolConfigError, build_registry, load_tool_config
from api.tools.registry import ToolContext
from api.tools.upstream import UpstreamError

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "examples" / "upstream_server.py"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # build_registry puts the config file's directory on sys.path; keep that to the test.
    monkeypatch.setattr(sys, "path", list(sys.path))


def write(tmp_path: Path, text: str, name: str = "tools.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def expect_error(tmp_path: Path, text: str, match: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ToolConfigError, match=match) as caught:
        load_tool_config(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_the_shipped_configuration() -> None:
    config = load_tool_config(ROOT / "tollgate.toml")
    assert config.python_modules == ("examples.python_tools",)
    [legal] = config.upstreams
    assert legal.name == "legal"
    assert legal.command == (sys.executable, "examples/upstream_server.py")
    assert legal.cwd == ROOT
    assert legal.tools == ("lookup_law", "count_words")
    assert legal.timeout_seconds == 60
    items = config.pricing.items()
    prices = {
        name: (p.base_price_usd, p.markup_percent, p.estimate_usd, p.variable_cost, p.max_price_usd,
               p.per_input_char_usd)
        for name, p in items
    }
    assert prices == {
        "lookup_law": (Decimal("0.02"), Decimal(0), None, False, None, None),
        "count_words": (Decimal("0.001"), Decimal(0), None, False, None, None),
        "echo": (Decimal("0.0003"), Decimal(0), None, False, None, None),
        # summarize's most expensive text (100000 characters) is priced 0.156: the declared maximum covers it
        "summarize": (Decimal(0), Decimal(20), None, True, Decimal("0.16"), Decimal("0.0000013")),
    }
    # the example shows the anonymous knob: a taste of echo, the rest by the default (priced: denied)
    assert {name: p.anonymous for name, p in items} == {
        "lookup_law": None, "count_words": None, "echo": "free:20/day", "summarize": None
    }


def test_declared_price_bounds(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [pricing.summarize]
        base_price_usd = "0.001"
        markup_percent = "20"
        max_price_usd = "0.16"
        per_input_char_usd = "0.000000037"
        """,
    )
    price = load_tool_config(path).pricing["summarize"]
    assert (price.max_price_usd, price.per_input_char_usd, price.estimate_usd) == (
        Decimal("0.16"), Decimal("0.000000037"), None)


@pytest.mark.parametrize("policy", ["deny", "free", "free:1/day", "free:999999999/day"])
def test_an_anonymous_policy(tmp_path: Path, policy: str) -> None:
    path = write(tmp_path, f'[pricing.echo]\nbase_price_usd = "0.02"\nanonymous = "{policy}"\n')
    assert load_tool_config(path).pricing["echo"].anonymous == policy


def test_a_full_upstream_entry(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[upstream]]
        name = "web"
        url = "https://tools.example.com/mcp"
        headers = { Authorization = "Bearer abc" }
        prefix = "legal."
        timeout_seconds = 2.5
        connect_timeout_seconds = 5

        [[upstream]]
        name = "local_1"
        command = ["./bin/server", "--flag", "{python}"]
        env = { MODE = "test" }
        cwd = "sub"

        [pricing."legal.search"]
        base_price_usd = 1
        markup_percent = "12.5"
        description = "search"
        """,
    )
    config = load_tool_config(path)
    web, local = config.upstreams
    assert web.url == "https://tools.example.com/mcp" and web.command is None
    assert dict(web.headers) == {"Authorization": "Bearer abc"}
    assert web.prefix == "legal." and web.timeout_seconds == 2.5 and web.connect_timeout_seconds == 5
    assert local.command == (str(tmp_path / "bin/server"), "--flag", sys.executable)
    assert dict(local.env) == {"MODE": "test"} and local.cwd == tmp_path / "sub"
    price = config.pricing["legal.search"]
    assert (price.base_price_usd, price.markup_percent, price.description) == (Decimal(1), Decimal("12.5"), "search")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[pricing.echo]\nbase_price_usd = 0.02\n', r"pricing\.echo\.base_price_usd: TOML float 0\.02 refused"),
        ('[pricing.echo]\nbase_price_usd = "0.02"\nmarkup_percent = 1.5\n', r"markup_percent: TOML float"),
        ('[pricing.echo]\nbase_price_usd = "abc"\n', r"base_price_usd: 'abc' is not a decimal number"),
        ('[pricing.echo]\nbase_price_usd = "-1"\n', r"base_price_usd: '-1' must be a finite amount"),
        ('[pricing.echo]\nbase_price_usd = "0.000000001"\n', r"has more than 8 decimals"),
        ('[pricing.echo]\nmarkup_percent = "5"\n', r"pricing\.echo\.base_price_usd: required"),
        ('[pricing.echo]\nbase_price_usd = "1"\ncolour = "red"\n', r"pricing\.echo: unknown key 'colour'"),
        ('[pricing.echo]\nbase_price_usd = "1"\nvariable_cost = "yes"\n', r"variable_cost: must be true or false"),
        ('[pricing.echo]\nbase_price_usd = "1"\nmax_price_usd = "0.5"\n', r"max_price_usd: must be more than 0 and at"),
        ('[pricing.echo]\nbase_price_usd = "0"\nmax_price_usd = "0"\n', r"max_price_usd: must be more than 0"),
        ('[pricing.echo]\nbase_price_usd = "0"\nmax_price_usd = 0.5\n', r"max_price_usd: TOML float"),
        (
            '[pricing.echo]\nbase_price_usd = "0"\nmax_price_usd = "0.5"\nestimate_usd = "0.6"\n',
            r"estimate_usd: must not be above max_price_usd",
        ),
        ('[pricing.echo]\nbase_price_usd = "0"\nper_input_char_usd = "1e-13"\n', r"has more than 12 decimals"),
        ('[pricing.echo]\nbase_price_usd = "0"\nper_input_char_usd = "1000000"\n', r"must be below 1000000"),
        ('[pricing.echo]\nbase_price_usd = "0"\nper_input_char_usd = "-1"\n', r"must be a finite amount"),
        ('[pricing."a b"]\nbase_price_usd = "1"\n', r'pricing\."a b": \'a b\' is not a valid tool name'),
        ('[pricing.echo]\nbase_price_usd = "1"\nanonymous = "allow"\n', r"pricing\.echo\.anonymous: 'allow' is not"),
        ('[pricing.echo]\nbase_price_usd = "1"\nanonymous = "free:0/day"\n', r"pricing\.echo\.anonymous: 'free:0/day'"),
        ('[pricing.echo]\nbase_price_usd = "1"\nanonymous = true\n', r"pricing\.echo\.anonymous: must be a string"),
        ('python_module = ["x"]\n', r"unknown key 'python_module'"),
        ('python_modules = "x"\n', r"python_modules: must be an array of strings"),
        ('python_modules = ["x-y"]\n', r"python_modules\[0\]: 'x-y' is not a dotted module path"),
        ('[[upstream]]\nname = "a"\ncommand = ["x"]\nurl = "http://h/mcp"\n', r"upstream\[0\]: .*exactly one of"),
        ('[[upstream]]\nname = "a"\n', r"upstream\[0\]: upstream 'a' needs exactly one of command"),
        ('[[upstream]]\ncommand = ["x"]\n', r"upstream\[0\]\.name: required"),
        ('[[upstream]]\nname = "a b"\ncommand = ["x"]\n', r"upstream\[0\]\.name: required: 1-64 letters"),
        ('[[upstream]]\nname = "a"\ncommand = ["x"]\nport = 1\n', r"upstream\[0\]: unknown key 'port'"),
        ('[[upstream]]\nname = "a"\ncommand = []\n', r"upstream\[0\]\.command: must be a non-empty array"),
        ('[[upstream]]\nname = "a"\ncommand = ["x"]\nheaders = {A = "b"}\n', r"headers: applies to a url"),
        ('[[upstream]]\nname = "a"\nurl = "http://h/mcp"\nenv = {A = "b"}\n', r"upstream\[0\]\.env: applies to a"),
        ('[[upstream]]\nname = "a"\nurl = "ftp://h"\n', r"upstream\[0\]: .*url must be an http"),
        ('[[upstream]]\nname = "a"\nurl = "http://h/mcp"\nheaders = {A = 1}\n', r"headers: must be a table of str"),
        ('[[upstream]]\nname = "a"\ncommand = ["x"]\ntimeout_seconds = 0\n', r"timeout_seconds: must be a number"),
        ('[[upstream]]\nname = "a"\ncommand = ["x"]\ntimeout_seconds = "9"\n', r"timeout_seconds: must be a number"),
        ('[[upstream]]\nname = "a"\ncommand = ["x"]\nprefix = "a b"\n', r"prefix must be"),
        (
            '[[upstream]]\nname = "a"\ncommand = ["x"]\n[[upstream]]\nname = "a"\nurl = "http://h/mcp"\n',
            r"upstream: two upstreams are named 'a'",
        ),
        ("upstream = 1\n", r"upstream: must be an array of tables"),
        ("this is not toml\n", r"not valid TOML"),
    ],
)
def test_errors_name_the_file_and_key(tmp_path: Path, text: str, match: str) -> None:
    expect_error(tmp_path, text, match)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ToolConfigError, match="cannot read the tool configuration"):
        load_tool_config(tmp_path / "absent.toml")


@pytest.mark.anyio
async def test_build_registry_from_python_modules(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    config = load_tool_config(write(tmp_path, 'python_modules = ["examples.python_tools"]\n'))
    registry, close = await build_registry(config)
    try:
        assert [d.name for d in registry.definitions()] == ["echo", "summarize"]
        echo = registry.get("echo")
        assert echo is not None
        result = await echo.call({"text": "привіт"}, ToolContext("r1", "echo"))
        assert isinstance(result.content[0], types.TextContent) and result.content[0].text == "привіт"

        summarize = registry.get("summarize")
        assert summarize is not None
        ctx = ToolContext("r2", "summarize")
        text = "The court ruled. The appeal failed! Costs follow. Nothing else."
        summary = await summarize.call({"text": text}, ctx)
        # 10 words x 1.3 = 13 tokens x $0.000002
        assert summary.structured_content == {"summary": "The court ruled. The appeal failed!", "tokens": 13}
        [cost] = ctx.costs
        assert (cost.provider, cost.cost_usd, cost.units, cost.unit) == ("demo-llm", Decimal("0.000026"), 13, "tokens")
    finally:
        await close()


@pytest.mark.anyio
async def test_build_registry_with_the_shipped_configuration() -> None:
    registry, close = await build_registry(load_tool_config(ROOT / "tollgate.toml"))
    try:
        assert sorted(d.name for d in registry.definitions()) == ["count_words", "echo", "lookup_law", "summarize"]
        lookup = registry.get("lookup_law")
        assert lookup is not None
        result = await lookup.call({"query": "limitation period"}, ToolContext("r1", "lookup_law"))
        assert isinstance(result.content[0], types.TextContent)
        assert result.content[0].text == (
            "Civil Code of Ukraine, Article 257: the general limitation period is three years."
        )
    finally:
        await close()
    await close()  # idempotent


@pytest.mark.anyio
async def test_a_relative_command_runs_in_the_config_directory(tmp_path: Path) -> None:
    shutil.copy(SERVER, tmp_path / "server.py")
    path = write(
        tmp_path,
        """
        [[upstream]]
        name = "copy"
        command = ["{python}", "server.py"]
        prefix = "copy_"
        tools = ["count_words"]
        """,
    )
    registry, close = await build_registry(load_tool_config(path))
    try:
        assert [d.name for d in registry.definitions()] == ["copy_count_words"]
    finally:
        await close()


@pytest.mark.anyio
async def test_a_missing_module(tmp_path: Path) -> None:
    config = load_tool_config(write(tmp_path, 'python_modules = ["no_such_module_here"]\n'))
    with pytest.raises(ToolConfigError, match=r"tools\.toml: python_modules: cannot import 'no_such_module_here'"):
        await build_registry(config)


@pytest.mark.anyio
async def test_a_module_without_register(tmp_path: Path) -> None:
    module = f"tools_{uuid.uuid4().hex}"
    (tmp_path / f"{module}.py").write_text("X = 1\n")
    config = load_tool_config(write(tmp_path, f'python_modules = ["{module}"]\n'))
    with pytest.raises(ToolConfigError, match="has no register"):
        await build_registry(config)


@pytest.mark.anyio
async def test_a_python_tool_and_an_upstream_tool_with_one_name(tmp_path: Path) -> None:
    module = f"tools_{uuid.uuid4().hex}"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            """
            from api.tools.registry import ToolRegistry

            def register(registry: ToolRegistry) -> None:
                @registry.function("lookup_law", description="a clash")
                async def clash(arguments, ctx):
                    return "mine"
            """
        )
    )
    path = write(
        tmp_path,
        f"""
        python_modules = ["{module}"]
        [[upstream]]
        name = "legal"
        command = ["{{python}}", "{SERVER}"]
        """,
    )
    clash = rf"upstream 'legal' has a tool 'lookup_law', but python module '{module}' already registered"
    with pytest.raises(ToolConfigError, match=clash):
        await build_registry(load_tool_config(path))


@pytest.mark.anyio
async def test_two_upstreams_with_one_tool_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        [[upstream]]
        name = "one"
        command = ["{{python}}", "{SERVER}"]
        [[upstream]]
        name = "two"
        command = ["{{python}}", "{SERVER}"]
        tools = ["fail"]
        """,
    )
    with pytest.raises(ToolConfigError, match=r"upstream 'two' has a tool 'fail', but upstream 'one' already"):
        await build_registry(load_tool_config(path))


@pytest.mark.anyio
async def test_an_upstream_that_does_not_start(tmp_path: Path) -> None:
    path = write(tmp_path, '[[upstream]]\nname = "gone"\ncommand = ["/nonexistent/server"]\n')
    with pytest.raises(UpstreamError, match="upstream 'gone'"):
        await build_registry(load_tool_config(path))
