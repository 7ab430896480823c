# The two commands a fresh machine needs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := outputs/demo
export DS_ACCELERATOR ?= cpu

.PHONY: setup demo demo-rl test test-fast clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps lmms-eval==0.7.3
	# TRL only as the reference our DPO / GRPO losses are tested against (its pins are not needed)
	$(PY) -m pip install -q --no-deps trl==1.16.0
	touch $(STAMP)

setup: $(STAMP)

# Main job on the embedded default: synthetic corpus -> tiny Qwen3-VL -> LoRA fine-tune ->
# eval of base and fine-tuned -> leaderboard (outputs/demo/leaderboard.{md,json,html,png}).
demo: setup
	$(PY) scripts/run_demo.py --out $(DEMO)

# GRPO from the demo's fine-tune (reused if outputs/demo/train/final exists, else run first):
# a third leaderboard row, lora-demo-grpo, ahead on grounding with a distractor shape.
demo-rl: setup
	$(PY) scripts/run_demo.py --rl --out $(DEMO)

test: setup
	$(PY) -m pytest -q --durations=25 tests

test-fast: setup
	$(PY) -m pytest -q --durations=25 -m "not slow" tests

clean:
	rm -rf outputs
