"""Example tools for the quick start: Python tools and a small upstream MCP server (see tollgate.toml)."""
