"""Server-side tools for hybrid turns: the calls and results (``calls.py``, pure) and the MCP servers that
execute them (``mcp_toolbox.py``, the official ``mcp`` SDK)."""
