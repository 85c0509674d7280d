"""MSSQL MCP Server: SQL Server for ChatGPT and Claude over MCP, behind OAuth 2.1."""

__version__ = "1.0.0"
