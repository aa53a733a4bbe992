# The front door. README documents these targets.
CARGO ?= cargo
OUT ?= out/homelab
CLUSTER ?= examples/homelab/cluster.toml

.PHONY: all deps build images test lint unit-test test-fixtures bench clean

# Debian packages for the root filesystem tests: resolved and downloaded once by
# test-fixtures (the only step of `make test` that talks to the Debian mirror, which comes
# from this host's apt sources); the tests then build offline from this cache.
export SLIPWAY_TEST_CACHE := $(CURDIR)/target/slipway-cache
export SLIPWAY_TEST_LOCK := $(CURDIR)/target/test-debian/slipway.lock

all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(CARGO) build --release --locked

# The example cluster, end to end: the root filesystem of each role (Debian 13 packages,
# locked in slipway.lock) and every node's secrets, files and Ignition config.
images: build
	target/release/slipway rootfs control-plane --out $(OUT)/images/control-plane.tar
	target/release/slipway rootfs worker --out $(OUT)/images/worker.tar
	target/release/slipway render $(CLUSTER) --out $(OUT)

# The whole suite: lints, unit and integration tests (with the real tools as judges).
test: deps lint test-fixtures unit-test

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

test-fixtures: build
	mkdir -p $(dir $(SLIPWAY_TEST_LOCK))
	target/release/slipway lock --lock $(SLIPWAY_TEST_LOCK) --cache $(SLIPWAY_TEST_CACHE) control-plane
	target/release/slipway fetch --lock $(SLIPWAY_TEST_LOCK) --cache $(SLIPWAY_TEST_CACHE) control-plane

# Benchmarks first (built and smoke-run only), so the run ends with the test summary.
unit-test: deps
	$(CARGO) test --locked --benches
	$(CARGO) test --locked --lib --bins --tests

bench: deps test-fixtures
	$(CARGO) bench --locked

clean:
	$(CARGO) clean
	rm -rf out
