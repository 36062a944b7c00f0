# Palisade's entry points. The README's two commands are `make run` and `make test`.
SHELL := /bin/bash
GO    ?= go

.PHONY: run build test lint bench bench-go bench-xds bench-identity bench-authz bench-kube fuzz demo

## run: build and start palisaded on the example mesh (examples/mesh).
run:
	$(GO) run ./cmd/palisaded --config-dir examples/mesh

## build: build every binary into bin/.
build:
	$(GO) build -o bin/ ./cmd/...

## test: the whole test suite, as CI runs it (installs its own tools first).
test:
	./scripts/test.sh

## lint: gofmt, go vet and staticcheck.
lint:
	./scripts/lint.sh

## bench: Go benchmarks (translation, serving, CA, agent), then the benchmark programs
## for xDS serving and identity (bench-identity --spire adds SPIRE as the baseline).
bench: bench-go bench-xds bench-identity bench-authz bench-kube

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./xds/ ./xds/server/ ./identity/ ./identity/agent/ ./authz/

bench-identity:
	$(GO) run ./bench/identity

## bench-authz: Palisade's ext_authz endpoint beside OPA-Envoy's approach and a
## do-nothing floor, servers pinned to CPU 0 and the load to CPU 1 (about 10 minutes).
bench-authz:
	$(GO) run ./bench/authz

## bench-kube: informer-to-xDS latency and RSS against a real kube-apiserver with
## 1,000 Services / 5,000 Pods and 100 proxyless clients (about 2 minutes).
bench-kube:
	$(GO) run ./bench/kube

bench-xds:
	$(GO) run ./bench/xds --services 1000 --clients 500 --kind proxyless
	$(GO) run ./bench/xds --services 1000 --clients 500 --kind sidecar
	$(GO) run ./bench/xds --services 1000 --clients 500 --kind sidecar --palisaded-flags "--memory-limit 250MiB"

## fuzz: a minute of each fuzzer. FuzzDecode (untrusted YAML), FuzzValidateCSR and
## FuzzLoadFederatedBundle (untrusted CSRs and bundles), FuzzInput (ext_authz
## CheckRequests mapped to policy input), FuzzNativeDecision (native decisions
## against the mesh library on fuzzed requests) and FuzzAdmission (objects through
## the injection and validation webhooks) run coverage-guided.
## FuzzGenerate (decode → model → translation → validation) runs from a test binary
## built without coverage: instrumenting the Envoy API packages slows coverage-guided
## runs to a few executions per second.
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime 60s ./mesh/config
	$(GO) test -run '^$$' -fuzz FuzzValidateCSR -fuzztime 60s ./identity
	$(GO) test -run '^$$' -fuzz FuzzLoadFederatedBundle -fuzztime 60s ./identity
	$(GO) test -run '^$$' -fuzz FuzzInput -fuzztime 60s ./authz
	$(GO) test -run '^$$' -fuzz FuzzNativeDecision -fuzztime 60s ./authz
	$(GO) test -run '^$$' -fuzz FuzzAdmission -fuzztime 60s ./webhook
	$(GO) test -c -o bin/xds.test ./xds
	cd xds && ../bin/xds.test -test.run '^$$' -test.fuzz FuzzGenerate -test.fuzztime 60s -test.fuzzcachedir ../.cache/fuzz

## demo: the live routing demo in examples/demo.
demo:
	./examples/demo/run.sh
