# The two commands a newcomer needs (see README.md):
#   make run   – install what is missing, build, start the server on 127.0.0.1:8080
#   make test  – install what is missing (Chromium, nginx-rtmp included), build, run every test
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
ARGS ?=

.PHONY: run test deps test-deps build lint bench

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
	cargo test --locked --workspace --lib --bins
	cargo test --locked --test it -- --test-threads=1

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

# Benchmarks (issue: CPU, latency, capacity): builds release binaries, generates and caches the
# media clips in bench/cache, runs every scenario (median of 3 runs) and writes BENCHMARKS.md
# with bench/*.png plots. About 30 minutes on two cores (20m36s before the tiers and weak-link
# sections, which add about 9 minutes; the weak-link section needs root).
bench: deps
	bash scripts/install-deps.sh --bench
	cargo build --release --locked -p mixdown -p mixdown-bench
	./target/release/mixdown-bench --server target/release/mixdown --cache bench/cache --out BENCHMARKS.md

# Fuzzing (issue 14): each cargo-fuzz target of fuzz/ for FUZZ_SECONDS (default 120), one at a
# time at nice 19, with the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz
# --locked`); prints executions, exec/s and whether it crashed (exit 1 if one did). The corpora
# are replayed by `make test` (src/fuzzing.rs). FUZZ_TARGETS="rtp config" runs some only.
FUZZ_SECONDS ?= 120
FUZZ_TARGETS ?=
.PHONY: fuzz
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh $(FUZZ_TARGETS)
