# hapbx — the two commands of the README are `make demo` and `make test`.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/hapbx/hapbx/cmd/hapbx/internal/app.version=$(VERSION)
PKGS     := ./...
FUZZTIME ?= 10s

.PHONY: build test unit lint fuzz bench demo clean

## build: bin/hapbx, statically linked, version stamped
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/hapbx ./cmd/hapbx

## lint: gofmt and go vet must be clean
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

## unit: every package's tests with the race detector (SIPp and root tests included where possible)
unit: build
	HAPBX_BIN=$(CURDIR)/bin/hapbx $(GO) test -race -count=1 -timeout 20m $(PKGS)

## fuzz: each network-facing fuzz target for a bounded time
fuzz:
	$(GO) test ./proxy -run '^$$' -fuzz '^FuzzDecide$$' -fuzztime $(FUZZTIME)
	$(GO) test ./config -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)

## test: what CI runs
test: lint unit fuzz

## bench: throughput, failover and registrar figures (prints them)
bench: build
	HAPBX_BIN=$(CURDIR)/bin/hapbx ./deploy/bench/proxy-bench.sh
	HAPBX_BIN=$(CURDIR)/bin/hapbx ./deploy/bench/register-bench.sh
	HAPBX_BIN=$(CURDIR)/bin/hapbx $(GO) test -run '^$$' -bench BackendFailover -benchtime 1x ./cmd/hapbx
	$(GO) test -run '^$$' -bench DetectDown -benchtime 1x ./health/
	$(GO) test -run '^$$' -bench . -benchtime 2s ./registrar/

## demo: hapbx in front of two SIPp backends, a few calls through it
demo: build
	./deploy/demo/demo.sh

clean:
	rm -rf bin
