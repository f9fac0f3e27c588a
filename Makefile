# Every developer task, by name. Nothing at runtime shells out to this file.
# Targets that run code install what they need first (scripts/setup.sh is idempotent and fast
# once done).

VENV   ?= .venv
PY     := $(VENV)/bin/python
WEFT   := $(VENV)/bin/weft
PYTEST := $(PY) -m pytest

.PHONY: help setup demo test test-unit test-kernel test-e2e lint typecheck imports proto \
        bench bench-quick bench-agent-memory lab-up lab-down vm-validate vm-up vm-down vm-test clean

help:            ## list the tasks
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup:           ## install system packages, kernel headers links, bpffs, the virtualenv
	bash scripts/setup.sh

demo: setup      ## THE MAIN JOB: bring up a 3-node lab with the demo shop and show meshed traffic
	$(WEFT) lab up --demo --mesh --replace
	$(WEFT) lab traffic --requests 200
	@echo "--- what the node agents carried (Istio metrics on :15020 in each node) ---"
	@for n in node1 node2; do $(WEFT) lab exec $$n -- curl -s http://127.0.0.1:15020/metrics \
	  | grep -E '^istio_tcp_connections_opened_total' | sed "s/^/$$n: /" | head -n 8; done
	@echo "the lab keeps running: 'sudo $(WEFT) lab status', 'sudo $(WEFT) lab down' to remove it"

test: setup      ## THE WHOLE SUITE: lint, types, import contracts, unit, kernel and lab tests
	$(MAKE) lint typecheck imports
	$(PYTEST) tests

test-unit: setup
	$(PYTEST) tests/unit

test-kernel: setup
	$(PYTEST) tests/kernel

test-e2e: setup
	$(PYTEST) tests/e2e

lint:            ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck:       ## mypy strict on weft, agent, controller, waypoint
	$(VENV)/bin/mypy

imports:         ## import-linter: the import direction of design.md section 1
	$(VENV)/bin/lint-imports

proto:           ## regenerate weft/api/v1/*_pb2*.py from the .proto files
	$(PY) -m weft.api.protogen
	$(PY) -m demo.protogen

bench-quick: setup ## benchmark, quick mode (< 3 min)
	$(WEFT) bench --quick

bench: setup     ## benchmark, full run (< 15 min), recorded under bench/results/
	$(WEFT) bench

bench-agent-memory: setup ## agent RSS with 100 local workloads and 1,000 open meshed connections (builds a lab)
	$(PY) -m bench.agent_memory

bench-controller: setup ## controller scale benchmark (10k workloads, 2k services, 20 watchers)
	$(PY) -m bench.controller_scale

bench-hbone: setup ## HBONE micro-benchmark: pooled HBONE vs TLS relay vs stunnel vs direct, loopback
	$(PY) -m bench.hbone_loopback --seconds 3 --repeat 3

bench-parsers: setup ## HTTP/1.1 parser micro-benchmark (waypoint codec vs h11 vs httptools)
	$(PY) -m bench.waypoint_parsers

lab-up: setup
	$(WEFT) lab up --demo

lab-down:
	$(WEFT) lab down

vm-validate: setup ## vagrant validate of vm/Vagrantfile
	cd vm && vagrant validate

vm-up: setup     ## the Vagrant lab: controller + 2 node VMs (qemu-emulated here; vm/README.md)
	$(WEFT) lab up --vagrant

vm-down:         ## destroy the Vagrant lab's VMs, networks, volumes and libvirtd
	$(WEFT) lab down --vagrant

vm-test: setup   ## the Vagrant lab end to end: boot, provision, a meshed call between VMs
	$(PYTEST) -s tests/e2e/test_vagrant_lab.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
