# unionmount: userspace container storage. See README.md.
GO      ?= go
BIN     := bin
PREFIX  ?= /usr/local
# Test timeout for `go test`; LONG=1 runs the longer randomized budgets.
TESTTIMEOUT ?= 14m
LONG    ?=

# Commands the targets need, as command:debian-package.
DEMO_DEPS := fusermount3:fuse3 mount.fuse3:fuse3
TEST_DEPS := $(DEMO_DEPS) unshare:util-linux

.PHONY: all build demo test lint install deps-demo deps-test clean

all: build

build:
	$(GO) build -o $(BIN)/unionmount ./cmd/unionmount

deps-demo:
	@scripts/ensure-deps.sh $(DEMO_DEPS)

deps-test:
	@scripts/ensure-deps.sh $(TEST_DEPS)

demo: deps-demo build
	scripts/demo.sh $(BIN)/unionmount

test: deps-test build lint
	UNIONMOUNT_BIN=$(CURDIR)/$(BIN)/unionmount UNIONMOUNT_LONG=$(LONG) \
		$(GO) test -count=1 -timeout $(TESTTIMEOUT) ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

install: build
	install -D -m 0755 $(BIN)/unionmount $(DESTDIR)$(PREFIX)/sbin/unionmount

clean:
	rm -rf $(BIN)
