# The front door. README documents these targets.
CARGO ?= cargo
OUT ?= out/homelab
CLUSTER ?= examples/homelab/cluster.toml

.PHONY: all deps init build images test image-test lint unit-test test-fixtures bench clean space

# Debian packages for the root filesystem tests: resolved and downloaded once by
# test-fixtures (the only step of `make test` that talks to the Debian mirror, which comes
# from this host's apt sources); the tests then build offline from this cache.
export SLIPWAY_TEST_CACHE := $(CURDIR)/target/slipway-cache
export SLIPWAY_TEST_LOCK := $(CURDIR)/target/test-debian/slipway.lock
# PID 1 of every initramfs: linked statically (glibc, crt-static), since the initramfs
# holds no libc. `slipway build` and the tests take it from here, and slipway-pause (the
# pod sandbox image's only file, built by the same crate) from beside it.
export SLIPWAY_INIT := $(CURDIR)/target/init/slipway-init
INIT_TARGET := x86_64-unknown-linux-gnu

all: build

deps:
	@scripts/install-deps.sh

init: deps
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
	    $(CARGO) build --release --locked -p slipway-init --target $(INIT_TARGET)
	mkdir -p $(dir $(SLIPWAY_INIT))
	cp target/$(INIT_TARGET)/release/slipway-init $(SLIPWAY_INIT)
	cp target/$(INIT_TARGET)/release/slipway-pause $(dir $(SLIPWAY_INIT))slipway-pause

build: deps init
	$(CARGO) build --release --locked

# The example cluster, end to end: each role's bootable disk (Debian 13 packages locked
# in slipway.lock, verity root, UKI) and every node's secrets, Ignition config and disk.
images: build
	target/release/slipway build $(CLUSTER) --out $(OUT)

# The whole suite: lints, unit and integration tests (with the real tools as judges).
test: space deps lint test-fixtures unit-test

# Free space the suite needs where it runs (debug builds, several example-cluster builds,
# VM disks), checked first so that a full disk is reported as such, not as a test failure.
# Measured: at most 17.1 GiB in use at once (the checkout with its target/ and /tmp
# together, sampled every 10 s through a whole run).
MIN_FREE_GIB ?= 20
space:
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	if [ "$$free" -lt $(MIN_FREE_GIB) ]; then \
	    echo "make: only $$free GiB free in $(CURDIR); the tests need $(MIN_FREE_GIB) GiB (MIN_FREE_GIB)" >&2; exit 1; \
	fi

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

# SLIPWAY_TEST_KUBERNETES=1 (a site that reaches dl.k8s.io, or has SLIPWAY_KUBE_ARTIFACTS=DIR,
# and reaches the images' registries): the test lock also pins the example's Kubernetes
# release (kubelet, kubectl, the control-plane and add-on images), so the example's images
# carry them and the multi-node test goes on to kubelet registration and kubectl through
# the VIP. Otherwise that part of the test is skipped and says so. The test lock is made
# anew each time, so pins from an earlier run with it do not linger.
KUBERNETES_VERSION := $(shell sed -n 's/^kubernetes_version *= *"\([^"]*\)".*/\1/p' examples/homelab/cluster.toml)
KUBE_LOCK := $(if $(filter 1,$(SLIPWAY_TEST_KUBERNETES)),--kubernetes $(KUBERNETES_VERSION))

# With the dev profile's slipway, the one the tests run (CARGO_BIN_EXE_slipway) and whose
# dependencies `cargo test` builds anyway: `make test` compiles no release build of
# slipway (measured: 8.7 min of a fresh CI run on this 2-core machine).
FIXTURE_SLIPWAY := target/debug/slipway
test-fixtures: deps init
	$(CARGO) build --locked --bin slipway
	mkdir -p $(dir $(SLIPWAY_TEST_LOCK))
	rm -f $(SLIPWAY_TEST_LOCK)
	$(FIXTURE_SLIPWAY) lock --lock $(SLIPWAY_TEST_LOCK) --cache $(SLIPWAY_TEST_CACHE) $(KUBE_LOCK) control-plane worker
	$(FIXTURE_SLIPWAY) fetch --lock $(SLIPWAY_TEST_LOCK) --cache $(SLIPWAY_TEST_CACHE) $(KUBE_LOCK) control-plane worker

# Benchmarks first (built and smoke-run only), so the run ends with the test summary.
# --show-output: the measurements tests print (boot and failover times, each image
# test's wall time) stay in the log also when they pass.
unit-test: deps init
	$(CARGO) test --locked --benches
	$(CARGO) test --locked -p slipway-init
	$(CARGO) test --locked --lib --bins --tests -- --show-output

# The QEMU tests alone (also part of `make test`): image-tests/, one harness.
image-test: deps init test-fixtures
	$(CARGO) test --locked --test boot_node --test cluster --test pxe --test iso --test vm -- --show-output

bench: deps init test-fixtures
	@scripts/install-deps.sh --bench
	$(CARGO) bench --locked

clean:
	$(CARGO) clean
	rm -rf out
