# The two commands a newcomer needs (see README.md):
#   make run   – install what is missing, build, start the server on 127.0.0.1:8080
#   make test  – install what is missing (Chromium included), build, run every test
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
ARGS ?=

.PHONY: run test deps test-deps build lint

deps:
	bash scripts/install-deps.sh

test-deps:
	bash scripts/install-deps.sh --test

build: deps
	cargo build --release --locked

run: build
	cargo run --release --locked -- $(ARGS)

# Unit tests first (fast), then the one integration-test binary, one test at a time: the
# end-to-end tests encode and decode video and share two cores.
test: test-deps
	cargo test --locked --lib --bins
	cargo test --locked --test it -- --test-threads=1

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets --locked -- -D warnings
