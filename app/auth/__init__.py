"""OAuth 2.1 authorization server with real sign-in, and the bearer check for the MCP endpoints.

`app.auth.setup.setup_auth(app)` wires it into the service. This package file imports nothing, so a
module that needs one piece of auth (the store, its records) does not load the whole server with it.
"""
