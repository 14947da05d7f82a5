# The same commands CI runs (.ci/run), for local use.
# `make demo` runs the embedded demo; `make test` runs the whole test suite.

CARGO ?= cargo
# Integration tests mostly wait on sockets and timers: run more of them at
# once than there are cores.
TEST_THREADS ?= 4

.PHONY: setup demo test rehearse fmt clippy doc bench ci

setup:
	./scripts/setup.sh

demo: setup
	$(CARGO) run -- demo

test: setup
	$(CARGO) test --workspace -- --test-threads $(TEST_THREADS)
	# Again, every request through Pingora's proxy (fledge's own path for
	# the common request off: src/server.rs, PINGORA_PATH).
	FLEDGE_PINGORA_PATH=1 $(CARGO) test -p fledge --tests -- --test-threads $(TEST_THREADS)

# Every shipped release rehearsal, self-contained (load-tests/README.md).
rehearse: setup
	$(CARGO) build -p fledge --bins
	$(CARGO) run -p fledge-rehearse -- --quiet load-tests/scenarios/*.yaml

fmt:
	$(CARGO) fmt --all -- --check

clippy: setup
	$(CARGO) clippy --workspace --all-targets -- -D warnings

doc: setup
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps

bench: setup
	$(CARGO) bench

ci: fmt clippy test rehearse doc
