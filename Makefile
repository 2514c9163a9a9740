# simmesh: `make sim` (main job), `make test` (all tests) and `make demo` (the quickstart
# simulated and run for real) work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup compile lint test test-interpreted fuzz sim demo bench loadtest clean k8s-bins haproxy h2spec profile
.PHONY: image image-sim kind-node-image kind-up kind-down deploy undeploy test-cluster docker
.PHONY: netpol-bins kind-netpol
.PHONY: conformance conformance-kind gateway-bins conformance-gateway

setup: $(VENV)/.installed compile

# Installed editable and pure; `compile` then builds the compiled modules in place.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	SIMMESH_COMPILE=0 $(BIN)/pip install -q -e '.[dev]'
	touch $@

# The hot modules (mesh/build.py COMPILED) compiled with mypyc beside their sources, again
# whenever one of them changes (tests/conftest.py refuses to run on a stale one).
# SIMMESH_COMPILE=0 removes them: everything runs interpreted.
SIMMESH_COMPILE ?= auto
COMPILED_SOURCES := $(shell sed -n 's/^    "\([a-z_.]*\)",$$/\1/p' mesh/build.py | tr . / | sed 's/$$/.py/')
compile: $(VENV)/.compiled-$(SIMMESH_COMPILE)

$(VENV)/.compiled-$(SIMMESH_COMPILE): $(VENV)/.installed $(COMPILED_SOURCES) mesh/build.py setup.py
	rm -f $(VENV)/.compiled-*
	find mesh sim loadtests -name '*.so' -delete
	SIMMESH_COMPILE=$(SIMMESH_COMPILE) $(BIN)/python setup.py build_ext --inplace \
		>$(VENV)/compile.log 2>&1 || { cat $(VENV)/compile.log; exit 1; }
	@# mypyc compiles a class default it cannot represent as a missing attribute: an error here
	@! grep 'warning: Unsupported' $(VENV)/compile.log
	find mesh sim loadtests -name '*.so' -exec touch {} +  # the unchanged shims are copied with old times
	$(BIN)/simmesh --version
	touch $@

lint: setup
	$(BIN)/ruff check mesh sim conformance tests loadtests tools fuzz
	$(BIN)/ruff format --check mesh sim conformance tests loadtests fuzz
	$(BIN)/mypy mesh sim conformance loadtests fuzz
	$(BIN)/lint-imports

test: setup lint
	SIMMESH_EXPECT_BUILD=$(if $(filter 1,$(SIMMESH_COMPILE)),compiled,$(SIMMESH_EXPECT_BUILD)) \
		$(BIN)/pytest
	$(MAKE) --no-print-directory test-interpreted

# The core and the simulator again, interpreted: the tracked files copied without any
# compiled module (tests/conftest.py checks that each run is the build it expects).
test-interpreted: setup
	rm -rf out/interpreted && mkdir -p out/interpreted
	git ls-files -z | xargs -0 tar -cf - | tar -xf - -C out/interpreted
	cd out/interpreted && SIMMESH_EXPECT_BUILD=interpreted $(CURDIR)/$(BIN)/pytest \
		tests/core tests/sim tests/test_parity.py

# Coverage-guided fuzzing (atheris) of the manifest reader, the config decoder and the HTTP
# front end; FUZZ_SECONDS per target, FUZZ_SEED libFuzzer's -seed (0: a new one; a seed does
# not replay a run). Inputs that crash are kept in out/fuzz/ and printed (gzip, base64).
FUZZ_SECONDS ?= 20
FUZZ_SEED ?= 0
fuzz: setup
	$(BIN)/python -c "import atheris" 2>/dev/null || $(BIN)/pip install -q 'atheris>=2.3'
	$(BIN)/python -m fuzz.run --seconds $(FUZZ_SECONDS) --seed $(FUZZ_SEED)

sim: setup
	$(BIN)/simmesh sim scenarios/canary --out out/sim/canary

# The quickstart mesh simulated and run for real under Locust (20 s), side by side: about
# 40 s. Its verdicts (exit 1: an SLO failed, 3: outside the tolerance) are shown, not errors.
demo: setup
	$(BIN)/simmesh explain scenarios/quickstart --from demo/frontend --url http://backend.demo.mesh/metrics
	code=0; $(BIN)/simmesh verify scenarios/quickstart --out out/demo --quiet || code=$$?; \
	test $$code -ne 2 -a $$code -ne 4

# Benchmarks (not tests): each writes its section of BENCHMARKS.md, with the command.
bench: setup k8s-bins haproxy
	$(BIN)/python -m loadtests.bench_core --out BENCHMARKS.md
	$(BIN)/python -m loadtests.bench_regex --out BENCHMARKS.md
	$(BIN)/python -m loadtests.bench_sim --out BENCHMARKS.md
	SIMMESH_BIN_DIR="$$(bash tools/k8s-bins.sh --print-dir)" $(BIN)/python -m loadtests.bench_proxy --benchmarks BENCHMARKS.md
	SIMMESH_BIN_DIR="$$(bash tools/k8s-bins.sh --print-dir)" $(BIN)/python -m loadtests.bench_controller --out BENCHMARKS.md
	SIMMESH_BIN_DIR="$$(bash tools/k8s-bins.sh --print-dir)" $(BIN)/python -m loadtests.bench_proxy --profile sim/profiles/local.yaml
	$(BIN)/python -m loadtests.bench_fidelity --out BENCHMARKS.md
	$(BIN)/python -m tests.proxy.bench_mtls --rate 1000 --seconds 6 --runs 3
	$(BIN)/python -m tests.proxy.bench_mtls --protocol handshakes --rate 100 --seconds 8 --runs 3 --tunnels 1000
	$(BIN)/python -m tests.proxy.bench_mtls --protocol churn --rate 200 --seconds 600 --plot out/bench/mtls-churn.png

# Locust, headless and bounded, through a local proxy to demo backends; CSV in out/loadtest/.
loadtest: setup
	$(BIN)/python -m loadtests.run_locust --duration 20s

haproxy:
	command -v haproxy >/dev/null || (apt-get update -qq && apt-get install -y -qq haproxy)

# Instructions per proxied request under callgrind (valgrind installed if missing): a count a
# busy machine does not blur, with simmesh's own functions by inclusive share. About 3 minutes.
profile: setup k8s-bins
	command -v callgrind_control >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind)
	SIMMESH_BIN_DIR="$$(bash tools/k8s-bins.sh --print-dir)" $(BIN)/python -m loadtests.profile_proxy

# kube-apiserver, etcd, CoreDNS, helm, fortio and h2spec built from the Go module proxy into
# ~/.cache/simmesh/bin (versions in tools/k8s-versions.env); idempotent, about 8 minutes cold.
k8s-bins:
	bash tools/k8s-bins.sh

# h2spec (the HTTP/2 conformance tester, built if missing) against the proxy's h2c front end
# on loopback, with responses relayed from a backend, then answered by the proxy itself;
# prints the failures and the summaries, exits 1 unless every case passes. docs/proxy.md.
h2spec: setup
	test -x "$$(bash tools/k8s-bins.sh --print-dir)/h2spec" || bash tools/k8s-bins.sh h2spec
	$(BIN)/python -m tests.proxy.h2spec

# ---------------------------------------------------------------- image and kind cluster
# docs/install.md. Everything built goes to ~/.cache/simmesh (outside the repo). The offline
# path (no registry, and this machine's workarounds) is taken when SIMMESH_OFFLINE=1 or when
# stock kind cannot boot on the host; see tools/kind/lib.sh.
IMAGE ?= simmesh/simmesh:dev

# A Docker engine: the running one, or Debian's docker.io installed and started.
docker:
	bash tools/kind/docker.sh up

# The simmesh image (root Dockerfile) from wheels prepared here; no network in the build.
image: setup
	bash tools/kind/image.sh $(IMAGE)

# The sweep workers' image (the Dockerfile's sim target: the runtime plus the sim extra, for
# deploy/dask): simmesh/simmesh-sim:dev.
IMAGE_SIM ?= simmesh/simmesh-sim:dev
image-sim: setup
	bash tools/kind/image.sh --sim $(IMAGE_SIM)

# The offline kind node image: Kubernetes from Go modules, Debian packages, all images preloaded.
kind-node-image:
	bash tools/kind/node-image.sh

# A kind cluster with one control plane and two workers (deploy/kind/cluster.yaml).
# KIND_NETPOL=1 (offline path) also installs the NetworkPolicy enforcer (kind-netpol below).
kind-up:
	bash tools/kind/up.sh

# The offline cluster's NetworkPolicy enforcer: kube-router's policy controller built from the
# Go module proxy (cached in ~/.cache/simmesh/bin; tools/kind/netpol.sh), its image
# simmesh/netpol:dev, and the DaemonSet kube-system/simmesh-netpol on the running cluster.
netpol-bins:
	bash tools/kind/netpol.sh build >/dev/null

kind-netpol:
	bash tools/kind/netpol.sh install

kind-down:
	bash tools/kind/down.sh

# The image loaded into the cluster, helm install, simmesh prepare, until simmesh check passes.
# Chart values: make deploy HELM_ARGS='--set acl=true'
deploy: image kind-up k8s-bins
	bash tools/kind/deploy.sh $(IMAGE) $(HELM_ARGS)

undeploy:
	bash tools/kind/undeploy.sh

# End-to-end tests on the kind cluster (tests/cluster); they deploy and undeploy simmesh
# themselves, in ACL mode. Not part of `make test`.
test-cluster: setup k8s-bins image image-sim kind-up
	SIMMESH_IMAGE=$(IMAGE) SIMMESH_SIM_IMAGE=$(IMAGE_SIM) $(BIN)/pytest tests/cluster -v

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .hypothesis out build
	find mesh sim loadtests -name '*.so' -delete

# ---------------------------------------------------------------- SMI conformance
# docs/conformance.md. The suite against the cluster of the current kubeconfig (KUBECONFIG,
# else ~/.kube/config): exit 1 when a case fails, 2 when simmesh is not installed or
# `simmesh check` fails. Flags in CONFORMANCE_ARGS, e.g. '-k split --keep-namespaces'.
# Reports: out/conformance/{report.txt,report.json,junit.xml}.
conformance: setup
	$(BIN)/python -m conformance $(CONFORMANCE_ARGS)

# The whole suite on the kind cluster, as CI runs it: simmesh deployed in ACL mode with mTLS
# strict (every hop between nodes over the proxies' tunnels; with the Gateway API CRDs, for the
# GAMMA cases) and the suite run (default-mode cases skipped), then
# deployed in default mode and its cases run,
# then the suite's self-test (a mesh with ACL enforcement off must fail it); then undeployed.
KIND_KUBECONFIG ?= $(or $(SIMMESH_KUBECONFIG),$(or $(SIMMESH_CACHE),$(HOME)/.cache/simmesh)/kind/simmesh.kubeconfig)
conformance-kind: setup k8s-bins image kind-up
	bash tools/kind/deploy.sh $(IMAGE) --set acl=true --set mtls=strict --set gatewayAPI.installCRDs=true
	KUBECONFIG=$(KIND_KUBECONFIG) $(BIN)/python -m conformance --out out/conformance/acl $(CONFORMANCE_ARGS)
	bash tools/kind/deploy.sh $(IMAGE) --set acl=false --set gatewayAPI.installCRDs=true
	KUBECONFIG=$(KIND_KUBECONFIG) $(BIN)/python -m conformance -k default-mode --out out/conformance/default $(CONFORMANCE_ARGS)
	SIMMESH_IMAGE=$(IMAGE) $(BIN)/pytest tests/conformance/cluster -v
	bash tools/kind/undeploy.sh

# ---------------------------------------------------------------- Gateway API (GAMMA) conformance
# docs/gamma-conformance-notes.md. The official suite (conformance/gateway, a Go test module) and
# Istio's echo app it runs in its pods, built from the Go module proxy into ~/.cache/simmesh/bin
# (tools/gateway/build.sh: idempotent; cold about 7 + 4 minutes on a shared 2-core machine).
gateway-bins:
	bash tools/gateway/build.sh

# The official suite against simmesh on the kind cluster (tools/gateway/run.sh): builds what is
# missing, loads the echo image, deploys simmesh with the Gateway API CRDs and GAMMA capture,
# runs every supported mesh test, undeploys. Report: out/conformance/gateway/report.yaml
# (docs/conformance/gateway-report.yaml is a copy of a CI run). Flags: GATEWAY_ARGS='--run-test=X'.
conformance-gateway: setup k8s-bins image kind-up
	bash tools/gateway/run.sh $(IMAGE) $(HELM_ARGS)
