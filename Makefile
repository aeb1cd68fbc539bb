# hapbx — the two commands of the README are `make demo` and `make test`.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/hapbx/hapbx/cmd/hapbx/internal/app.version=$(VERSION)
PKGS     := ./...
FUZZTIME ?= 6s

.PHONY: build test unit lab lint fuzz bench demo e2e clean asterisk-mode

## build: bin/hapbx, statically linked, version stamped
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/hapbx ./cmd/hapbx

## lint: gofmt and go vet must be clean
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

## unit: every package's tests but the lab's, with the race detector (SIPp and root tests included where possible)
UNIT_PKGS = $(shell $(GO) list $(PKGS) | grep -v '/deploy/lab$$')
unit: build
	HAPBX_BIN=$(CURDIR)/bin/hapbx $(GO) test -race -count=1 -timeout 20m $(UNIT_PKGS)

## lab: the namespace lab's tests (deploy/lab) on their own, after unit: their
## failover-time assertions (VIP on the twin within 1 s) must not share the two
## cores with the other packages' tests, which go test runs in parallel
lab: build asterisk-mode
	HAPBX_BIN=$(CURDIR)/bin/hapbx $(GO) test -race -count=1 -timeout 15m ./deploy/lab

## asterisk-mode: say which PBX the lab's end-to-end tests and the demo run:
## a real Asterisk ($$HAPBX_ASTERISK, or `asterisk` on PATH; .ci/run installs
## ../shared/asterisk when it exists) or, without one, SIPp and the stand-in
asterisk-mode:
	@if [ -n "$$HAPBX_ASTERISK" ]; then echo "lab: real Asterisk $$HAPBX_ASTERISK (deploy/asterisk's configs)"; \
	elif command -v asterisk >/dev/null; then echo "lab: real Asterisk $$(command -v asterisk) (deploy/asterisk's configs)"; \
	else echo "lab: no Asterisk (HAPBX_ASTERISK unset, none on PATH): the end-to-end tests run against SIPp and the Asterisk stand-in"; fi

## fuzz: every fuzz target (parsers and handlers facing the network) for FUZZTIME each
FUZZ_TARGETS := proxy:FuzzDecide proxy:FuzzIntake config:FuzzParse health:FuzzReadAMIMessage health:FuzzSIPAnswer \
	registrar:FuzzExtract registrar:FuzzDecodeRecord storage:FuzzParseStatus storage:FuzzParseEvent \
	media:FuzzAnchorSDP media:FuzzValidRTP cluster:FuzzDecodeMessage
# Go 1.26's fuzz coordinator can fail a target with a bare "context deadline
# exceeded" when -fuzztime ends while a worker is busy (golang/go#75804, fixed
# in Go 1.27). Such a run wrote no failing input: it is run once more. A real
# finding ("Failing input written to ...") fails at once.
fuzz:
	@set -e; log=$$(mktemp); trap 'rm -f $$log' EXIT; \
	for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; fn=$${t##*:}; \
	  echo "fuzz $$pkg $$fn ($(FUZZTIME))"; \
	  for try in 1 2; do \
	    if $(GO) test ./$$pkg -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 2s > $$log 2>&1; then break; fi; \
	    if [ $$try = 1 ] && grep -q 'context deadline exceeded' $$log && ! grep -q 'Failing input written' $$log; then \
	      echo "fuzz $$fn: deadline race of the fuzz coordinator (golang/go#75804), no failing input: running it again"; continue; fi; \
	    cat $$log; exit 1; \
	  done; \
	  tail -1 $$log; done

## test: what CI runs
test: lint unit lab fuzz

## bench: throughput, failover and registrar figures (prints them)
bench: build
	HAPBX_BIN=$(CURDIR)/bin/hapbx ./deploy/bench/proxy-bench.sh
	HAPBX_BIN=$(CURDIR)/bin/hapbx ./deploy/bench/register-bench.sh
	HAPBX_BIN=$(CURDIR)/bin/hapbx $(GO) test -run '^$$' -bench 'BackendFailover|ColdFailover|ClusterIdleCPU|JoinSync' -benchtime 1x ./cmd/hapbx
	HAPBX_BIN=$(CURDIR)/bin/hapbx $(GO) test -run '^$$' -bench VIPFailover -benchtime 1x ./deploy/lab
	$(GO) test -run '^$$' -bench DetectDown -benchtime 1x ./health/
	$(GO) test -run '^$$' -bench . -benchtime 2s ./registrar/
	$(GO) run ./media/relaybench/cmd/relaybench -calls 500,1000,2000 -duration 10s -warmup 2s

## demo: as root, the namespace lab (deploy/lab): two proxies sharing a VIP, a witness, two PBX,
## SIPp phones registering and calling; kills and cuts one after another, prints one table
demo: build asterisk-mode
	./deploy/demo/demo.sh

## e2e: as root, the lab's end-to-end suite with assertions (issue 5 and the demo scenario);
## `make test` runs the same tests (with -race) through `lab`
e2e: build asterisk-mode
	HAPBX_BIN=$(CURDIR)/bin/hapbx $(GO) test -count=1 -timeout 10m -v -run 'TestE2E|TestVIPFailoverSIGKILL|TestPairCut|TestFailback|TestPhoneReachedAfterProxyDies|TestMediaSurvivesVIPFailover' ./deploy/lab

clean:
	rm -rf bin
