# lakeferry — developer entry points. Every target installs what it needs first.
#   make install   create .venv with lakeferry, its plugins and the dev tools (idempotent)
#   make run       run the daemon on etc/lakeferry.toml (embedded bus, local sink)
#   make test      run the test suite
#   make demo      the whole job in one command: origin, daemon, ~1,000 events, summary, audit
#   make lint      ruff + mypy (strict on daemon/)
#   make kafka-up  Apache Kafka (single-node KRaft) on 127.0.0.1:$(KAFKA_PORT), data in var/kafka
#   make kafka-down   stop it;  make kafka-dist   fetch Kafka from Maven Central (needs Java 17+
#                  and Maven; `make test` does this first, since the tests run a real broker)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= etc/lakeferry.toml
BUS    ?= embedded
PYTEST_ARGS ?=
KAFKA_PORT ?= 9092
KAFKA_DIR  ?= var/kafka
KAFKA      := tools/kafka/kafka.py

.PHONY: install run test lint fmt demo clean distclean kafka-dist kafka-up kafka-down

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/lakeferry run -c $(CONFIG)

test: $(STAMP) kafka-dist
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Checks Java every time (fails naming what to install), fetches only when the pom changed.
kafka-dist:
	@$(PYTHON) $(KAFKA) dist >/dev/null

kafka-up: $(STAMP) kafka-dist
	$(BIN)/python $(KAFKA) up --port $(KAFKA_PORT) --dir $(KAFKA_DIR)

kafka-down:
	$(PYTHON) $(KAFKA) down --dir $(KAFKA_DIR)

lint: $(STAMP)
	$(BIN)/ruff check daemon plugins tests tools
	$(BIN)/ruff format --check daemon plugins tests tools
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format daemon plugins tests tools
	$(BIN)/ruff check --fix daemon plugins tests tools

demo: $(STAMP)
	$(BIN)/python tools/demo.py --bus $(BUS) $(DEMO_ARGS)

clean: kafka-down
	rm -rf var/ .pytest_cache .mypy_cache .ruff_cache

distclean: clean
	rm -rf $(VENV) *.egg-info tools/kafka/dist
