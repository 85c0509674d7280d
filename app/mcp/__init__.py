"""MCP protocol logic (JSON-RPC, lifecycle, tools). No aiohttp imports outside transports/."""
