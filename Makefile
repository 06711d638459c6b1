# unionmount: userspace container storage. See README.md.
GO      ?= go
SHELL   := /bin/bash
BIN     := bin
PREFIX  ?= /usr/local
# Test timeout for `go test`; LONG=1 runs the longer randomized budgets.
TESTTIMEOUT ?= 14m
LONG    ?=

# Commands the targets need, as command:debian-package.
DEMO_DEPS := fusermount3:fuse3 mount.fuse3:fuse3 getfattr:attr mkfs.ext4:e2fsprogs losetup:mount \
	fstrim:util-linux nbdinfo:libnbd-bin
TEST_DEPS := $(DEMO_DEPS) unshare:util-linux thin_check:thin-provisioning-tools \
	nbdinfo:libnbd-bin nbdcopy:libnbd-bin qemu-img:qemu-utils qemu-io:qemu-utils qemu-nbd:qemu-utils fio:fio \
	qemu-storage-daemon:qemu-system-common mkfs.ext4:e2fsprogs mkfs.xfs:xfsprogs losetup:mount nbdkit:nbdkit \
	fuse-overlayfs:fuse-overlayfs unionfs-fuse:unionfs-fuse \
	podman:podman buildah:buildah runc:runc newuidmap:uidmap newgidmap:uidmap debootstrap:debootstrap dpkg-deb:dpkg \
	python3:python3 bats:bats
# Under the race detector: the pool's concurrency tests and the NBD
# server's package (where requests run in parallel). The whole of
# ./thinblock/... takes about 4 minutes under -race here, mostly tests
# that run one request at a time, or kill child processes whose races
# nobody would see; these two take about 25 s (3 minutes with a cold
# build cache).
RACE_POOL_TESTS := '^TestConcurrent'
# The union's own FUSE loop runs alone (its io_uring tests turn the fuse
# module's enable_uring on while they run, which would move the other
# packages' mounts onto io_uring at random), under the race detector.
# Then the union's behaviour checks run once more with every mount on
# io_uring (scripts/with-fuse-uring.sh turns it on and back off).
URING_UNION_TESTS := '^(TestBehaviourTable|TestRandomOperationsMatchKernelOverlay|TestEachTransportServesTheUnionAndSaysSo)$$'
# Budget per fuzz target for `make fuzz`.
FUZZTIME ?= 30s
FUZZ_TARGETS := ./thinblock/txn:FuzzDecodeSuperblock ./thinblock/btree:FuzzDecodeNode \
	./thinblock/btree:FuzzDecodeNodeWithValidChecksum ./thinblock/spacemap:FuzzDecodeCounts \
	./thinblock/nbd:FuzzConnection

.PHONY: all build demo test lint install deps-demo deps-test clean fuzz bench

all: build

# --version names the commit: stamp it whenever the tree is a git checkout
# (some environments set GOFLAGS=-buildvcs=false).
BUILDFLAGS ?= $(shell git rev-parse --git-dir >/dev/null 2>&1 && echo -buildvcs=true)

# unionmount runs once per container: built without cgo it is static, and
# each daemon maps no libc or loader (1.8 MiB less resident at rest, see
# docs/benchmarks.md). Go's own resolver and user lookups serve it.
UNIONMOUNT_BUILD = CGO_ENABLED=0 $(GO) build $(BUILDFLAGS) -o $(BIN)/unionmount ./cmd/unionmount

build:
	$(UNIONMOUNT_BUILD)
	$(GO) build $(BUILDFLAGS) -o $(BIN)/thinblock ./cmd/thinblock
	$(GO) build $(BUILDFLAGS) -o $(BIN)/unionbench ./cmd/unionbench

deps-demo:
	@scripts/ensure-deps.sh $(DEMO_DEPS)

deps-test:
	@scripts/ensure-deps.sh $(TEST_DEPS)

# The demo builds only the two binaries it runs.
demo: deps-demo
	$(UNIONMOUNT_BUILD)
	$(GO) build $(BUILDFLAGS) -o $(BIN)/thinblock ./cmd/thinblock
	scripts/demo.sh $(BIN)

# Every test, then the race detector's runs, summarized: each package as
# it ends, failed tests' output, then the skipped tests with their reasons
# and "N passed, M failed, K skipped" (internal/tools/testsummary).
test: deps-test build lint
	@$(GO) build -o $(BIN)/testsummary ./internal/tools/testsummary
	set -o pipefail; export UNIONMOUNT_BIN=$(CURDIR)/$(BIN)/unionmount THINBLOCK_BIN=$(CURDIR)/$(BIN)/thinblock \
		UNIONBENCH_BIN=$(CURDIR)/$(BIN)/unionbench UNIONMOUNT_LONG=$(LONG); \
		{ $(GO) test -json -count=1 -timeout $(TESTTIMEOUT) $$($(GO) list ./... | grep -v /internal/fuseloop); \
		  $(GO) test -json -race -count=1 -timeout $(TESTTIMEOUT) ./internal/fuseloop/; \
		  UNIONMOUNT_TRANSPORT=io_uring scripts/with-fuse-uring.sh \
		    $(GO) test -json -count=1 -timeout $(TESTTIMEOUT) -run $(URING_UNION_TESTS) ./unionfs/; \
		  scripts/with-fuse-uring.sh \
		    $(GO) test -json -count=1 -timeout $(TESTTIMEOUT) -run '^TestTheIOURingTargetServesOverIOURing$$' ./cmd/unionbench/; \
		  $(GO) test -json -race -count=1 -timeout $(TESTTIMEOUT) -run $(RACE_POOL_TESTS) ./thinblock/; \
		  $(GO) test -json -race -count=1 -timeout $(TESTTIMEOUT) ./thinblock/nbd/; } | $(BIN)/testsummary

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

install: build
	install -D -m 0755 $(BIN)/unionmount $(DESTDIR)$(PREFIX)/sbin/unionmount
	install -D -m 0755 $(BIN)/thinblock $(DESTDIR)$(PREFIX)/sbin/thinblock

# Each decoder fuzz target for FUZZTIME (make fuzz FUZZTIME=10m for more).
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t#*:}; \
		echo "fuzz $$pkg $$name ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	done

# The full comparison against the peers (about 20 minutes), then the Go
# benchmarks. Results: bench/results/ (table, JSON, charts).
BENCH_DEPS := fio:fio fuse-overlayfs:fuse-overlayfs unionfs-fuse:unionfs-fuse qemu-img:qemu-utils \
	qemu-nbd:qemu-utils qemu-io:qemu-utils qemu-storage-daemon:qemu-system-common nbdkit:nbdkit \
	nbdinfo:libnbd-bin fusermount3:fuse3
BENCHFLAGS ?=

bench: build
	@scripts/ensure-deps.sh $(BENCH_DEPS)
	@# The floor target (libfuse's passthrough_hp on io_uring), built from
	@# Debian's libfuse 3.18 source; without it the harness skips it, saying why.
	@scripts/build-passthrough-hp.sh >/dev/null || echo "make bench: passthrough_hp not built; the floor target will be skipped"
	$(BIN)/unionbench --out bench/results $(BENCHFLAGS)
	$(GO) test -run '^$$' -bench . -benchtime 200x ./thinblock/

clean:
	rm -rf $(BIN)
