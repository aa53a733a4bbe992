# The front door. README documents these targets.
CARGO ?= cargo
OUT ?= out/homelab
CLUSTER ?= examples/homelab/cluster.toml

.PHONY: all deps build images test lint unit-test bench clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(CARGO) build --release --locked

# The example cluster, end to end: secrets (once) and every node's files and Ignition.
images: build
	target/release/slipway render $(CLUSTER) --out $(OUT)

# The whole suite: lints, unit and integration tests (with the real tools as judges).
test: deps lint unit-test

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

unit-test: deps
	$(CARGO) test --locked --all-targets

bench: deps
	$(CARGO) bench --locked

clean:
	$(CARGO) clean
	rm -rf out
