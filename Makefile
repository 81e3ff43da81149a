# Two commands for a fresh machine: `make demo` and `make test`. Each creates or refreshes .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Absolute, so that it still holds for processes started in another directory.
OMNIGLOT_DIR ?= $(abspath $(or $(EDGEMETA_OMNIGLOT_DIR),../shared/datasets/omniglot))

.PHONY: venv demo demo-omniglot demo-photos test test-board lint bench bench-training bench-compression bench-runtime preset preset-photos clean

venv: $(VENV)/.installed

# Re-install when the project's dependencies change.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[train,device,dev]"
	touch $@

demo: venv
	$(BIN)/edgemeta demo --dataset digits --out runs/demo

demo-omniglot: venv
	$(BIN)/edgemeta demo --dataset omniglot --data-dir $(OMNIGLOT_DIR) --out runs/demo-omniglot

# The photos preset, TensorFlow-free: teaches three mini-ImageNet val objects from five photos each (examples/photos.py).
MINI_IMAGENET_DIR ?= $(abspath $(or $(EDGEMETA_MINI_IMAGENET_DIR),../shared/datasets/mini-imagenet))
demo-photos: venv
	EDGEMETA_MINI_IMAGENET_DIR=$(MINI_IMAGENET_DIR) $(BIN)/python examples/photos.py --out runs/demo-photos

# Two pytest-xdist workers (about half the wall time on 2 cores). A module runs whole on one worker, those with
# slow tests first; one worker trains the shared runs, the other loads them (tests/conftest.py).
# `pytest -m "not slow"` is the developers' fast tier.
test: venv lint
	EDGEMETA_OMNIGLOT_DIR=$(OMNIGLOT_DIR) $(BIN)/python -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder --durations=10

# The device side on the board's own architecture: Debian bookworm arm64 and armhf roots (Raspberry Pi OS 64- and
# 32-bit; cached in $$EDGEMETA_BOARD_CACHE or ~/.cache/edgemeta/board) under qemu, set up by
# devices/setup-raspberry-pi.sh, then tests/board/test_on_board.py inside each (docs/boards.md). Needs root; skips
# with the reason where it cannot run.
test-board: venv
	$(BIN)/python -m tests.board.run_on_arm --arch arm64
	$(BIN)/python -m tests.board.run_on_arm --arch armhf

# ruff (configured in pyproject.toml: line length, import order, pyupgrade, bugbear) on the whole tree.
lint: venv
	$(BIN)/ruff check .

# Real training and speed figures (minutes to an hour on 2 cores); never part of `make test`.
bench: venv
	$(MAKE) bench-training
	$(BIN)/python benchmarks/omniglot_split.py --data-dir $(OMNIGLOT_DIR) --out runs/bench
	$(BIN)/python benchmarks/learners.py --data-dir $(OMNIGLOT_DIR) --out runs/learners
	$(BIN)/python benchmarks/maml_memory.py --out runs/learners
	$(MAKE) bench-compression
	$(MAKE) bench-runtime

# Training speed (docs/distributed-training.md): edgemeta against learn2learn on the same episodes (a separate
# .venv-l2l with CPU PyTorch; about 15 min), then XLA and mixed precision side by side (about 20 min on 2 cores).
bench-training: venv
	bash benchmarks/l2l_venv.sh
	$(BIN)/python benchmarks/training_throughput.py --data-dir $(OMNIGLOT_DIR) --out runs/throughput
	$(BIN)/python benchmarks/jit_compile.py --data-dir $(OMNIGLOT_DIR) --out runs/jit

# The compression report (docs/compression.md): every variant of benchmarks/compression.toml on the
# ProtoNet of the Omniglot split, trained first when runs/omniglot-split is missing (about 2.5 h on 2 cores).
bench-compression: venv
	test -f runs/omniglot-split/embedding.keras || $(BIN)/edgemeta train --recipe omniglot-split --data-dir $(OMNIGLOT_DIR) --out runs/omniglot-split
	$(BIN)/edgemeta compress runs/omniglot-split --config benchmarks/compression.toml --out runs/compression --data-dir $(OMNIGLOT_DIR)

# Rebuilds the shipped preset bundle edgemeta/presets/omniglot from its recipe, on Omniglot's full background set
# (24 alphabets train it, 6 measure it and calibrate its "unknown": docs/omniglot-preset.md). oneDNN: faster training on AVX2-only CPUs.
OMNIGLOT_BACKGROUND_DIR ?= $(abspath ../shared/datasets/omniglot-background)
preset: venv
	TF_ENABLE_ONEDNN_OPTS=1 $(BIN)/edgemeta preset omniglot --data-dir $(OMNIGLOT_BACKGROUND_DIR)

# Rebuilds the photos preset edgemeta/presets/photos (P>M>F on mini-ImageNet train, measured on val; docs/photos.md).
# oneDNN: 2.35x faster training on AVX2-only CPUs, where TensorFlow leaves it off.
preset-photos: venv
	TF_ENABLE_ONEDNN_OPTS=1 $(BIN)/edgemeta preset photos --data-dir $(MINI_IMAGENET_DIR)

clean:
	rm -rf runs .pytest_cache

# The runtime's figures (docs/runtime.md, open-set.md, head-finetuning.md): memory against the plan,
# 2000 fuzzed models, then head and open-set on the split's int8 bundle (made by bench-compression;
# the open-set fold models train once, about 45 min each).
bench-runtime: venv
	$(BIN)/python benchmarks/runtime_speed.py --data-dir $(OMNIGLOT_DIR) --out runs/runtime-speed
	$(BIN)/python benchmarks/int8_layers.py --out runs/int8-layers
	$(BIN)/python benchmarks/runtime_memory.py --classes 1 1000 5000 --out runs/memory
	$(BIN)/python benchmarks/fuzz_models.py edgemeta/presets/omniglot --cases 2000 --seed 7
	test -f runs/compression/int8/model.tflite || $(MAKE) bench-compression
	$(BIN)/python benchmarks/head_finetune.py --bundle runs/compression/int8 --data-dir $(OMNIGLOT_DIR) --out runs/head
	$(BIN)/python benchmarks/open_set.py --run runs/omniglot-split --bundle runs/compression/int8 --data-dir $(OMNIGLOT_DIR) --out runs/open-set --folds runs/open-set/folds
