# Karuta's developer commands. `make test` is the one CI runs.
GO      ?= go
PKGS    ?= ./...
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: all build static test checks test-deps unit realclient netns deploy-test vet lint bench fuzz tidy clean

all: build

## build: the karuta binary for this machine
build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o karuta ./cmd/karuta

## static: a static linux binary, for FROM-scratch images
static:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o karuta ./cmd/karuta

## test: everything CI checks — vet, lint, tidy, unit and end-to-end tests with
## the race detector, the real BitTorrent clients test, the failover tests
## on real networks and the deploy stage (installs what it needs). The
## failover and deploy stages mostly wait (on gossip timers, on Docker and
## Prometheus), so they run beside the CPU-bound checks; -O keeps each
## stage's output together.
test: test-deps
	@$(MAKE) --no-print-directory -O -j3 checks netns deploy-test

# checks: the CPU-bound part of test, one step after another
checks:
	@$(MAKE) --no-print-directory vet
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory tidy
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory realclient

test-deps:
	@.ci/install-test-deps

vet:
	$(GO) vet $(PKGS)
	$(GO) vet -tags 'realclient netns' ./node/...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: files above need formatting'; exit 1; }

## lint: golangci-lint with the linters listed in .golangci.yml; the version is
## pinned by the tool line in go.mod, so a clean clone builds it from the module proxy
lint:
	$(GO) tool golangci-lint run $(PKGS)

unit:
	$(GO) test -race -count=1 $(PKGS)

realclient:
	$(GO) test -race -count=1 -tags realclient -run 'RealClient|RealCluster' -v ./node/

## netns: failover on real networks — karuta serve processes in network
## namespaces, cut and healed by the network while a probe checks every
## answer (needs root and iproute2; removes namespaces left by killed runs)
netns:
	@.ci/netns-clean
	$(GO) test -count=1 -tags netns -v ./node/netns/

## deploy-test: the image, the compose cluster, Prometheus, the alerts, the
## dashboard and the Kubernetes manifests, run for real (deploy/test/run.sh)
deploy-test:
	deploy/test/run.sh

## bench: Go benchmarks of the hot paths (compare runs with benchstat)
bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 6 $(PKGS) | tee bench.out

## fuzz: a short campaign on every fuzz target (FUZZTIME each)
FUZZTIME ?= 30s
fuzz:
	@.ci/fuzz $(FUZZTIME)

## tidy: fail when go.mod/go.sum are not tidy
tidy:
	$(GO) mod tidy -diff

clean:
	rm -f karuta bench.out
