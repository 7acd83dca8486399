"""The tool registry: what a tool is, where tools come from, and how they are called.

    registry.py  the ``Tool`` protocol, ``ToolRegistry``, ``ToolContext``, argument validation
    config.py    the tool configuration file (``tollgate.toml``): prices, limits, upstream servers
    upstream.py  tools of upstream MCP servers (stdio, streamable HTTP), through the MCP SDK's client

Knows nothing about billing (``api.gateway.metering`` wraps every call). May import the leaves
(``api.errors``, ``api.jsonio``, ``api.logs``) and the MCP SDK; never ledger, payments, gateway or ops.
"""
