# Two commands matter: `make run` and `make test`. Each sets up everything first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
export OPSCENTER_DATA_DIR ?= $(CURDIR)/var

# borgbackup 1.4.5 builds from source; mount needs FUSE 3; database sources need their dump
# and restore tools. Tests use sshd (remote repositories), curl (the integration guide's
# walk-through), PostgreSQL, MariaDB and Redis servers (started by the tests on loopback), and
# the browser tests drive Debian's chromium; acl's setfacl/getfacl check that restores keep ACLs.
BUILD_PACKAGES := pkg-config build-essential libssl-dev liblz4-dev libzstd-dev libxxhash-dev \
	libacl1-dev libfuse3-dev fuse3 python3-venv python3-dev \
	postgresql-client mariadb-client sqlite3
TEST_PACKAGES := openssh-server openssh-client curl chromium fonts-dejavu-core \
	postgresql mariadb-server redis-server acl

.PHONY: run test lint format install install-dev setup image clean

$(BIN)/.runtime: requirements.txt
	bin/ensure-system-packages $(BUILD_PACKAGES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(BIN)/.dev: $(BIN)/.runtime requirements-dev.txt
	bin/ensure-system-packages $(TEST_PACKAGES)
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

install: $(BIN)/.runtime
install-dev: $(BIN)/.dev

setup: install
	$(BIN)/python manage.py migrate --noinput -v0
	$(BIN)/python manage.py ensure_admin
	$(BIN)/python manage.py collectstatic --noinput -v0

run: setup
	PORT=$(PORT) bin/serve

# The whole suite on SQLite with the ORM broker, then the job, lease, scheduling and API tests
# again on PostgreSQL with Redis as the broker (servers of its own: tests/backends.py).
test: install-dev
	OPSCENTER_DATA_DIR=$$(mktemp -d /tmp/opscenter-test.XXXXXX) $(BIN)/pytest
	OPSCENTER_DATA_DIR=$$(mktemp -d /tmp/opscenter-test.XXXXXX) $(BIN)/python -m tests.backends

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache  # the layers in pyproject.toml: every import points down

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

image:
	bin/build-image

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
