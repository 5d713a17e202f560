# brainseg: the README's two commands are `make demo` and `make test`; both install everything first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.brainseg-installed
EXT_SOURCES := $(shell find brainseg/layers/csrc -type f 2>/dev/null)
DETECTRON2_WHEEL := sal-detectron2==0.7.2
PYTEST_ARGS ?=
DATASETS := $(or $(BRAINSEG_DATASETS),datasets)
DEMO_DATA := $(DATASETS)/lgg_demo
DEMO_OUT ?= output/demo_unext
COMPARE_OUT ?= output/compare_demo

.PHONY: install browser demo compare test clean-venv

install: $(STAMP)

$(VPY):
	$(PYTHON) -m venv $(VENV)

# Dependencies, detectron2 (kept if it already imports) and brainseg in editable mode.
$(STAMP): $(VPY) requirements.txt setup.py $(EXT_SOURCES)
	$(VPY) -m pip install -q -r requirements.txt
	@if $(VPY) -c "import detectron2" 2>/dev/null; then \
		echo "detectron2 already importable: keeping it"; \
	else \
		tmp=$$(mktemp -d) && \
		$(VPY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 \
			-d $$tmp $(DETECTRON2_WHEEL) && \
		$(VPY) -m installer $$tmp/*.whl && rm -rf $$tmp; \
	fi
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e .
	$(VPY) -c "import detectron2, brainseg; print('brainseg installed with detectron2', detectron2.__version__)"
	@touch $(STAMP)

# Headless Chromium for tests/test_comparison_report.py (Debian package); installed only when missing.
browser:
	@command -v chromium >/dev/null || { \
		echo "installing chromium (headless browser for the report test)"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get -qq update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -qq install -y chromium >/dev/null; }

test: install browser
	$(VPY) -m pytest -q $(PYTEST_ARGS)

# Demo: generate the demo data if absent, convert it to COCO, train + evaluate UNeXt on CPU, then
# print the test figures next to the range recorded over seeds 0, 1, 2.
demo: install
	@if [ -d $(DEMO_DATA)/kaggle_3m ]; then echo "demo data present in $(DEMO_DATA)"; \
	else $(VPY) datasets/prepare_lgg_demo.py --out $(DEMO_DATA); fi
	$(VPY) tools/convert_lgg_to_coco.py --root $(DEMO_DATA) --out $(DEMO_DATA)/coco
	$(VPY) tools/train_net.py --config-file configs/lgg/unext_demo.py train.output_dir=$(DEMO_OUT)
	@$(VPY) tools/demo_summary.py $(DEMO_OUT) --reference configs/lgg/unext_demo_seeds.json

# Comparison study on the demo data (tools/compare.py): UNet, ResUNet, UNeXt and the small Mask DINO on
# the same 3 patient folds, each given about 3.5 min of 2-core CPU training per fold (UNet/ResUNet: the
# 250 iterations of their demo configs; UNeXt 800; Mask DINO 150). Re-running continues an interrupted study.
compare: install
	@if [ -d $(DEMO_DATA)/kaggle_3m ]; then echo "demo data present in $(DEMO_DATA)"; \
	else $(VPY) datasets/prepare_lgg_demo.py --out $(DEMO_DATA); fi
	$(VPY) tools/compare.py --config-file configs/lgg/unet_demo.py configs/lgg/resunet_demo.py \
		configs/lgg/unext_demo.py projects/MaskDINO/configs/maskdino_small_lgg_demo.py \
		--data $(DEMO_DATA) --output $(COMPARE_OUT) --folds 3 -- train.overlays.enabled=False \
		unext_demo:train.max_iter=800 maskdino_small_lgg_demo:train.max_iter=150 \
		maskdino_small_lgg_demo:train.eval_period=50 maskdino_small_lgg_demo:train.checkpointer.period=50

clean-venv:
	rm -rf $(VENV)
