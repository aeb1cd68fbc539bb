# hapbx — the two commands of the README are `make demo` and `make test`.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/hapbx/hapbx/cmd/hapbx/internal/app.version=$(VERSION)
PKGS     := ./...
FUZZTIME ?= 6s

.PHONY: build test unit lab lint fuzz bench bench-load demo e2e clean asterisk-mode deb deb-test print-deb dashboard-check

## build: bin/hapbx, statically linked, version stamped
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/hapbx ./cmd/hapbx

## deb: bin/hapbx_VERSION_amd64.deb, made by nfpm (a Go tool pinned in
## deploy/debian/tools.mod, built by `go tool` on first use); see deploy/debian.
## VERSION: the last v* tag (v1.2.0-3-gabc: 1.2.0+3+gabc), else 0.0~gitN+HASH;
## -1 is the Debian revision (the packaging is not part of a release tarball)
DEB_VERSION ?= $(shell v=$$(git describe --tags --match 'v[0-9]*' 2>/dev/null) && echo "$${v\#v}-1" | sed 's/-\(.*\)-1$$/+\1-1/;s/-g/+g/' || \
	echo "0.0~git$$(git rev-list --count HEAD 2>/dev/null || echo 0)+$$(git rev-parse --short HEAD 2>/dev/null || echo unknown)-1")
DEB      ?= bin/hapbx_$(DEB_VERSION)_amd64.deb
NFPM     := $(GO) tool -modfile=deploy/debian/tools.mod nfpm
deb: build
	rm -rf bin/deb && mkdir -p bin/deb/systemd
	for u in deploy/systemd/*.service; do sed 's|/usr/local/bin/hapbx|/usr/bin/hapbx|g' $$u > bin/deb/systemd/$$(basename $$u); done
	gzip -9n < README.md > bin/deb/README.md.gz
	gzip -9n < deploy/debian/hapbx.1 > bin/deb/hapbx.1.gz
	{ echo "hapbx ($(DEB_VERSION)) unstable; urgency=medium"; echo; \
	  echo "  * Built from commit $$(git rev-parse --short HEAD 2>/dev/null || echo unknown)."; echo; \
	  echo " -- $$(sed -n 's/^maintainer: //p' deploy/debian/nfpm.yaml)  $$(git log -1 --format=%aD 2>/dev/null || date -R)"; } | gzip -9n > bin/deb/changelog.Debian.gz
	DEB_VERSION='$(DEB_VERSION)' $(NFPM) package -f deploy/debian/nfpm.yaml -p deb -t $(DEB)

print-deb:
	@echo $(DEB)

## deb-test: as root with dpkg, build the .deb, install it, check-config its
## example, purge it (skips otherwise); on its own, not beside unit's tests
deb-test: deb
	HAPBX_DEB=$(CURDIR)/$(DEB) $(GO) test -count=1 -v ./deploy/debian

## lint: gofmt and go vet must be clean
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

## unit: every package's tests but the lab's and the package's (deb-test), with the race detector (SIPp and root tests included where possible)
UNIT_PKGS = $(shell $(GO) list $(PKGS) | grep -v -e '/deploy/lab$$' -e '/deploy/debian$$')
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
FUZZ_TARGETS := proxy:FuzzDecide proxy:FuzzIntake proxy:FuzzStreamIntake config:FuzzParse health:FuzzReadAMIMessage health:FuzzSIPAnswer \
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
test: lint unit deb-test lab fuzz

## bench: throughput, failover and registrar figures (prints them)
bench: build
	HAPBX_BIN=$(CURDIR)/bin/hapbx ./deploy/bench/proxy-bench.sh
	HAPBX_BIN=$(CURDIR)/bin/hapbx ./deploy/bench/register-bench.sh
	HAPBX_BIN=$(CURDIR)/bin/hapbx $(GO) test -run '^$$' -bench 'BackendFailover|ColdFailover|ClusterIdleCPU|JoinSync' -benchtime 1x ./cmd/hapbx
	HAPBX_BIN=$(CURDIR)/bin/hapbx $(GO) test -run '^$$' -bench VIPFailover -benchtime 1x ./deploy/lab
	$(GO) test -run '^$$' -bench DetectDown -benchtime 1x ./health/
	$(GO) test -run '^$$' -bench . -benchtime 2s ./registrar/
	$(GO) run ./media/relaybench/cmd/relaybench -calls 1000,2000,4000 -duration 10s -warmup 2s -modes user,kernel,ebpf,rtpengine -repeat 3

## bench-load: issue 13's figures under load and abuse (a flood, a registration
## storm, 10 000 calls up at once; about 4 minutes; PARTS="a a-noguard b c",
## SCALE=0.1 to try it): peak RSS, recovery, backend state changes, 200s
## against bindings held. Not part of bench or test.
bench-load: build
	HAPBX_BIN=$(CURDIR)/bin/hapbx ./deploy/bench/load-bench.sh

## demo: as root, the namespace lab (deploy/lab): two proxies sharing a VIP, a witness, two PBX,
## SIPp phones registering and calling; kills and cuts one after another, prints one table
demo: build asterisk-mode
	./deploy/demo/demo.sh

## e2e: as root, the lab's end-to-end suite with assertions (issue 5 and the demo scenario);
## `make test` runs the same tests (with -race) through `lab`
e2e: build asterisk-mode
	HAPBX_BIN=$(CURDIR)/bin/hapbx $(GO) test -count=1 -timeout 10m -v -run 'TestE2E|TestVIPFailoverSIGKILL|TestPairCut|TestFailback|TestPhoneReachedAfterProxyDies|TestMediaSurvivesVIPFailover' ./deploy/lab

## dashboard-check: as root, with Debian's prometheus: a real Prometheus scrapes the
## lab through the demo's scenario, every query of deploy/grafana's dashboard must
## return a series and every alerting rule evaluate (one of `make lab`'s tests)
dashboard-check: build asterisk-mode
	HAPBX_BIN=$(CURDIR)/bin/hapbx $(GO) test -count=1 -timeout 10m -v -run TestDashboardQueries ./deploy/lab

clean:
	rm -rf bin
