# Every target bootstraps .venv on first use, so each works on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VARIANT ?= cait_xxs24_224
WEIGHTS ?= pretrained
PYTEST_ARGS ?=

.PHONY: venv port parity verify bench test test-all lint clean publish eval attention collection collection-card \
	publish-collection collection-bench bench-peers

venv: $(STAMP)

# torch is installed first with '===' so that a local CPU-only '2.13.0+cpu' wheel (some
# machines carry one in pip's find-links) is not picked: PyPI's torchvision is built against
# PyPI's torch, and the CPU-only torch with it fails at `import torchvision` (timm needs it).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q 'torch===2.13.0' 'torchvision==0.28.0'
	$(PY) -m pip install -q -e '.[port,collection,dev]'
	touch $(STAMP)

port: $(STAMP)
	$(PY) -m vit_porting.cli port $(VARIANT) --weights $(WEIGHTS) $(if $(NUM_CLASSES),--num-classes $(NUM_CLASSES)) \
		$(if $(SEED),--seed $(SEED)) $(if $(filter 1 yes true,$(FORCE)),--force) \
		$(if $(BACKENDS),--backends $(BACKENDS)) $(if $(OUTPUT_BUDGET_MB),--output-budget-mb $(OUTPUT_BUDGET_MB)) \
		$(if $(filter 1 yes true,$(REDUCED)),--reduced-precision) $(if $(SERVING),--serving-graph $(SERVING)) \
		$(PORT_ARGS)

parity: $(STAMP)
	$(PY) -m vit_porting.cli parity $(VARIANT) $(if $(BACKENDS),--backends $(BACKENDS)) $(PARITY_ARGS)

verify: $(STAMP)
	$(PY) -m vit_porting.cli verify $(VARIANT)

# Every variant of a family (or VARIANTS=a,b) ported on Ray: a local Ray instance on this machine
# unless RAY_ADDRESS (or ADDRESS=) names a cluster. Writes artifacts/<variant>/ per variant and
# artifacts/collections/<family>/collection.json + README.md; a second run skips verified folders.
FAMILY ?= cait
collection: $(STAMP)
	$(PY) -m vit_porting.cli collection $(FAMILY) --weights $(WEIGHTS) $(if $(VARIANTS),--variants $(VARIANTS)) \
		$(if $(SEED),--seed $(SEED)) $(if $(filter 1 yes true,$(FORCE)),--force) $(if $(OUT),--out $(OUT)) \
		$(if $(ADDRESS),--address $(ADDRESS)) $(COLLECTION_ARGS)

# collection.json and the card from the parity reports under OUT (CI's last job), no porting
collection-card: $(STAMP)
	$(PY) -m vit_porting.cli collection-card $(FAMILY) $(if $(OUT),--out $(OUT))

publish-collection: $(STAMP)
	$(if $(TARGET),,$(error TARGET=hf://owner or TARGET=kaggle://owner is required))
	$(PY) -m vit_porting.cli publish-collection $(FAMILY) --target $(TARGET) $(if $(filter 1 yes true,$(PUSH)),--push) \
		$(if $(filter 1 yes true,$(ALLOW_RANDOM)),--allow-random) $(PUBLISH_ARGS)

# A family's collection on local Ray, timed (benchmarks/results/collection-<family>-<machine>.json);
# COMPARE=N also times the N smallest variants one after another against Ray
collection-bench: $(STAMP)
	$(PY) -m benchmarks.collection_bench $(FAMILY) $(if $(COMPARE),--compare $(COMPARE))

BATCHES ?= 1,8
bench: $(STAMP)
	$(PY) -m benchmarks.bench $(VARIANT) --batches $(BATCHES) $(BENCH_ARGS)

# Serving speed of every artifact against timm, torch.compile and a nobuco SavedModel (made in its own
# Keras 2 environment, benchmarks/.work/nobuco-venv, on first use); KERASHUB=1 adds KerasHub's ViT
bench-peers: $(STAMP)
	$(PY) -m benchmarks.peers $(VARIANT) --batches $(BATCHES) $(if $(ROUNDS),--rounds $(ROUNDS)) \
		$(if $(filter 1 yes true,$(KERASHUB)),--kerashub) $(BENCH_ARGS)

# Dry run by default: stages the files it would upload and lists them. PUSH=1 uploads (after
# re-verifying the manifest; refuses failed parity, changed files, random weights unless ALLOW_RANDOM=1).
publish: $(STAMP)
	$(if $(TARGET),,$(error TARGET=hf://owner/name or TARGET=kaggle://owner/model[/variation] is required))
	$(PY) -m vit_porting.cli publish $(VARIANT) --target $(TARGET) $(if $(filter 1 yes true,$(PUSH)),--push) \
		$(if $(filter 1 yes true,$(ALLOW_RANDOM)),--allow-random) $(PUBLISH_ARGS)

# Top-1/top-5 of every runtime on an image folder (class subfolders, or flat files with LABELS=);
# writes artifacts/<variant>/eval/eval.json and eval.md. RUNTIMES=pytorch,keras,savedmodel,onnxruntime
eval: $(STAMP)
	$(if $(DATA),,$(error DATA=path/to/images is required))
	$(PY) -m vit_porting.cli eval $(VARIANT) $(DATA) $(if $(RUNTIMES),--runtimes $(RUNTIMES)) \
		$(if $(LABELS),--labels $(LABELS)) $(if $(CLASS_MAP),--class-map $(CLASS_MAP)) \
		$(if $(BATCH),--batch $(BATCH)) $(if $(LIMIT),--limit $(LIMIT)) $(EVAL_ARGS)

# Class-attention maps and saliency over one image as a PNG (SOURCE=savedmodel to use saved_model/)
attention: $(STAMP)
	$(if $(IMAGE),,$(error IMAGE=path/to/image is required))
	$(PY) -m vit_porting.cli attention $(VARIANT) $(IMAGE) $(if $(SOURCE),--source $(SOURCE)) \
		$(if $(PNG),--png $(PNG)) $(ATTENTION_ARGS)

# Two test processes (TEST_WORKERS=): most of a test's time is one process starting a framework
# while the other core idles; a module's tests stay in one process, its fixtures made once
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -m "not slow and not gpu" -n $(TEST_WORKERS) --dist loadfile --durations=30 $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check vit_porting tests benchmarks

clean:
	rm -rf artifacts/*/ artifacts/.*.tmp
