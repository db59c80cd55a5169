# The dev loop of aioray. `make help` lists the targets.
PYTHON ?= python
.DEFAULT_GOAL := help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install:  ## editable install with the dev extras (builds the Rust extension)
	$(PYTHON) -m pip install -e '.[dev]'

build:  ## rebuild the Rust extension in place after changing rust/
	$(PYTHON) -m pip install -e . --no-deps --no-build-isolation

proto:  ## regenerate python/aioray/_proto from proto/
	./scripts/gen_proto.sh

proto-check:  ## fail if the committed generated code is stale
	./scripts/gen_proto.sh --check

lint:  ## ruff, mypy (strict), rustfmt and clippy (warnings are errors)
	$(PYTHON) -m ruff check python tests benches examples
	$(PYTHON) -m mypy
	$(PYTHON) -m ruff format --check python tests benches examples
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features python -- -D warnings

fmt:  ## format Rust and Python
	cargo fmt
	$(PYTHON) -m ruff format python tests benches examples
	$(PYTHON) -m ruff check --fix python tests benches examples

rust-test:  ## Rust unit and property tests, and the criterion build
	cargo test
	cargo bench --no-run

deps:  ## system packages the tests need, from apt when missing: redis-server (GCS storage), prometheus (metrics), chromium (dashboard)
	@missing=; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=; \
	  elif command -v sudo >/dev/null; then sudo=sudo; \
	  else echo "missing:$$missing; install these distribution packages (as root)" >&2; exit 1; fi; \
	  $$sudo apt-get update && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

py-test: deps  ## pytest (unit and integration; needs redis-server, prometheus and chromium: `deps` installs them)
	$(PYTHON) -m pytest

test: deps proto-check lint rust-test py-test  ## everything CI runs (installs `deps` first)

bench:  ## criterion benchmarks of the store
	cargo bench --bench store

.PHONY: help install build proto proto-check lint fmt rust-test deps py-test test bench
