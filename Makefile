# Tollway's developer commands. Every target sets up what it needs on a fresh machine.
.PHONY: setup k8s tools chart demo test unit integration lint crds docs golden up down clean

VENV := .venv/bin

setup:            ## the venv with tollway and its dev tools
	@hack/setup

k8s:              ## kube-apiserver, kube-controller-manager and kube-scheduler, built once from the Go module proxy
	@hack/build-k8s.sh >/dev/null

tools:            ## envoyproxy/ratelimit, prometheus-adapter, helm, otelcol and kwok, built once from the Go module proxy
	@hack/build-tools.sh ratelimit >/dev/null
	@hack/build-tools.sh prometheus-adapter >/dev/null
	@hack/build-tools.sh helm >/dev/null
	@hack/build-tools.sh otelcol >/dev/null
	@hack/build-tools.sh kwok >/dev/null

chart: setup      ## copy crds/ and prometheus-adapter's rules into charts/tollway (a test checks the copies)
	@hack/sync-chart-crds

demo: setup k8s   ## the main job on the local default: control plane, operator, examples, report
	@$(VENV)/python hack/demo.py $(ARGS)

test: setup k8s tools   ## everything CI runs: lint, types, layers, unit, golden and integration tests
	@$(VENV)/pytest -q

unit: setup       ## the tests that need no cluster
	@$(VENV)/pytest -q tests/unit

integration: setup k8s tools
	@$(VENV)/pytest -q tests/integration

lint: setup       ## ruff, mypy, import-linter, luacheck and StyLua (`hack/stylua.mjs FILE` formats a Lua file)
	@$(VENV)/pytest -q tests/unit/test_code_quality.py

crds: setup       ## regenerate crds/ from the pydantic models
	@$(VENV)/tollway crds --out crds

docs: setup       ## regenerate docs/api-reference.md from the models
	@$(VENV)/tollway api-reference > docs/api-reference.md

golden: setup     ## rewrite tests/golden/*/out from the code; read the diff before committing
	@$(VENV)/pytest -q tests/unit/test_golden.py --update-golden

up: setup k8s     ## start the local control plane (prints the KUBECONFIG export)
	@hack/controlplane up

down:
	@hack/controlplane down

clean: down
	rm -rf .venv .local
