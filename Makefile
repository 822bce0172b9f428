# lakeferry — developer entry points. Every target installs what it needs first.
#   make install   create .venv with lakeferry, its plugins and the dev tools (idempotent)
#   make run       run the daemon on etc/lakeferry.toml (embedded bus, local sink)
#   make test      run the test suite, all of it (~11 min on 2 cores; CI runs make lint, then this)
#   make test-fast the tests not marked slow (no processes started, none takes seconds): under
#                  a minute, for the edit-test loop; `make test` before pushing
#   make demo      the whole job in one command: origin, daemon, ~1,000 events, summary, audit
#   make lint      ruff + mypy (strict on daemon/, plugins/, tests/, tools/ and bench/)
#   make chaos     the pipeline on Kafka under kills, a broker restart and a sink storm
#   make screenshots  the console's screenshots in docs/images, taken by its browser test
#   make kafka-up  Apache Kafka (single-node KRaft) on 127.0.0.1:$(KAFKA_PORT), data in var/kafka
#   make kafka-down   stop it;  make kafka-dist   fetch Kafka from Maven Central (needs Java 17+
#                  and Maven; `make test` does this first, since the tests run a real broker)
#   make system-deps  Debian packages the tests need (promtool, systemd-analyze, strace), only
#                  when missing; `make test` runs it first (root, apt-get)
#   make systemd-check   verify the units in systemd/ and rate their sandbox (exposure <= 2.0)
#   make install-systemd   install lakeferry as a systemd service (root; see README "Operations";
#                  INSTALL_ARGS="--bus kafka --prefix /opt/lakeferry")

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= etc/lakeferry.toml
BUS    ?= embedded
PYTEST_ARGS ?=
# make test runs the suite in this many worker processes (pytest-xdist; each has its own Kafka
# broker, origin and emulators). Most of a test's time is waiting for a daemon, so two workers
# on two cores take ~7 min where one took ~12.
TEST_WORKERS ?= 2
KAFKA_PORT ?= 9092
KAFKA_DIR  ?= var/kafka
KAFKA      := tools/kafka/kafka.py

.PHONY: install run test test-fast lint fmt demo chaos screenshots bench clean distclean kafka-dist kafka-up kafka-down \
	system-deps systemd-check install-systemd

install: $(STAMP)

# setuptools warns on every editable install that a folder named like a package in the working
# directory could shadow it; there is none here (the packages live in daemon/ and plugins/).
QUIET_PIP := PYTHONWARNINGS="ignore:Editable installation"

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(QUIET_PIP) $(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/lakeferry run -c $(CONFIG)

test: $(STAMP) kafka-dist system-deps
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# Starts no Kafka, daemon or other process (tests/helpers/markers.py fails a test that does
# without the slow marker), so it needs neither kafka-dist nor system-deps.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

system-deps:
	@sh tools/system_deps.sh

systemd-check:
	@sh tools/systemd-check.sh

INSTALL_ARGS ?=
install-systemd:
	sh tools/install-systemd.sh $(INSTALL_ARGS)

# Checks Java every time (fails naming what to install), fetches only when the pom changed.
kafka-dist:
	@$(PYTHON) $(KAFKA) dist >/dev/null

kafka-up: $(STAMP) kafka-dist
	$(BIN)/python $(KAFKA) up --port $(KAFKA_PORT) --dir $(KAFKA_DIR)

kafka-down:
	$(PYTHON) $(KAFKA) down --dir $(KAFKA_DIR)

lint: $(STAMP)
	$(BIN)/ruff check daemon plugins tests tools bench
	$(BIN)/ruff format --check daemon plugins tests tools bench
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format daemon plugins tests tools
	$(BIN)/ruff check --fix daemon plugins tests tools

# make bench [QUICK=1]: nginx origin, lakeferry on both buses, aria2c/curl/old-design peers.
# Its own venv: matplotlib brings numpy, which the daemon's venv keeps out (pyarrow would load it
# and its NUMA calls are outside the systemd units' system-call filter).
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
$(BENCH_STAMP): pyproject.toml constraints.txt
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(QUIET_PIP) $(BENCH_VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

bench: kafka-dist system-deps $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python bench/bench.py $(if $(filter 1 yes true,$(QUICK)),--quick) $(BENCH_ARGS)

screenshots: $(STAMP) system-deps
	LAKEFERRY_SCREENSHOTS=docs/images $(BIN)/python -m pytest tests/test_console.py -k operator -q

chaos: $(STAMP) kafka-dist
	$(BIN)/python tools/chaos.py $(CHAOS_ARGS)

demo: $(STAMP)
	$(BIN)/python tools/demo.py --bus $(BUS) $(if $(filter 1 yes true,$(AZURE)),--azure) $(if $(NODES),--nodes $(NODES)) $(if $(filter 1 yes true,$(MIGRATE)),--migrate) $(DEMO_ARGS)

clean: kafka-down
	rm -rf var/ .pytest_cache .mypy_cache .ruff_cache

distclean: clean
	rm -rf $(VENV) *.egg-info tools/kafka/dist
