# Two entry points for a fresh x86_64 Debian/Ubuntu machine: `make demo` and `make test`
# (`make help` lists the rest).
# Each creates or refreshes the virtual environments it needs (idempotent: pip runs again only
# when a requirements file or the package metadata changed).

SHELL := /bin/bash
PYTHON ?= python3
# The simulator pins numpy 1.23.5, which has wheels for CPython 3.8-3.11 only.
SIM_PYTHON ?= $(shell command -v python3.11 || command -v python3.10)
VENV := .venv
SIM_VENV := .venv-sim
REQ := requirements
MAIN_REQS := $(REQ)/runtime.txt $(REQ)/ros-kilted.txt $(REQ)/training.txt $(REQ)/test.txt
PACKAGE_FILES := $(shell find vae_ood_monitor launch config models demo resource -type f -not -path '*__pycache__*')
PIP_QUIET := --quiet --disable-pip-version-check
# Debian packages the headless simulator renders with (EGL/OSMesa through pyglet).
SIM_DEBS := libgl1 libegl1 libgl1-mesa-dri libglu1-mesa libosmesa6 freeglut3-dev xvfb

export AMENT_PREFIX_PATH := $(abspath $(VENV))
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

RECIPES := training/configs

.PHONY: help demo test lint venv sim-venv system-deps dataset models compress eval promote adapt clean

help:  ## this list
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 12

# The main job: the shipped demo bag (lane following that turns foggy) through the real graph,
# each node in its own process over DDS; prints a timeline and the onset-to-stop latency and
# draws build/demo/demo.png.
demo: venv  ## the demo bag through the real graph: timeline, onset-to-stop, build/demo/demo.png
	$(VENV)/bin/vae-ood-monitor demo --out build/demo

test: venv sim-venv  ## lint, then every test (runtime and training)
	$(MAKE) --no-print-directory lint
	$(VENV)/bin/python -m pytest

lint: venv  ## ruff over the Python sources (ruff.toml: 100 columns)
	$(VENV)/bin/ruff check vae_ood_monitor training test launch
	$(VENV)/bin/ruff format --check vae_ood_monitor training test launch

venv: $(VENV)/.package-installed
sim-venv: $(SIM_VENV)/.installed

$(VENV)/.deps-installed: $(MAIN_REQS) $(REQ)/lock.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "make: Python 3.10+ needed, $(PYTHON) is older" >&2; exit 1; }
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_QUIET) -c $(REQ)/lock.txt $(addprefix -r ,$(MAIN_REQS))
	@touch $@

# A regular (not editable) install, as colcon would do it: data_files land in $(VENV)/share/,
# where ament_index finds launch/, config/ and models/. Reinstalled whenever a file changes.
$(VENV)/.package-installed: $(VENV)/.deps-installed setup.py setup.cfg package.xml $(PACKAGE_FILES)
	$(VENV)/bin/pip install $(PIP_QUIET) --no-deps --no-build-isolation .
	@rm -rf build/lib build/bdist.* build/scripts-* *.egg-info  # setuptools' own; build/bench stays
	@touch $@

$(SIM_VENV)/.installed: $(REQ)/sim.txt $(REQ)/sim-lock.txt | system-deps
	@test -n "$(SIM_PYTHON)" || { echo "make: the simulator needs python3.11 or python3.10 (apt-get install python3.11-venv)" >&2; exit 1; }
	@test -x $(SIM_VENV)/bin/python || $(SIM_PYTHON) -m venv $(SIM_VENV)
	$(SIM_VENV)/bin/pip install $(PIP_QUIET) -c $(REQ)/sim-lock.txt -r $(REQ)/sim.txt
	@touch $@

system-deps:
	@missing=$$(for p in $(SIM_DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  echo "make: installing Debian packages for the headless simulator: $$missing"; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# Long offline work: each target runs a recipe (training/configs/*.yaml, one step per command;
# an interrupted recipe resumes). None of them touches models/: only `make promote` does.
dataset: venv sim-venv  ## render the Duckietown datasets (training/configs/dataset.yaml)
	$(VENV)/bin/python -m training.recipe $(RECIPES)/dataset.yaml

models: venv  ## train the two teachers into runs/teachers (training/configs/teachers.yaml)
	$(VENV)/bin/python -m training.recipe $(RECIPES)/teachers.yaml

RECIPE ?= students
compress: venv  ## distil and calibrate the students into runs/students (RECIPE=compress_search: the full design search)
	$(VENV)/bin/python -m training.recipe $(RECIPES)/$(RECIPE).yaml

eval: venv  ## evaluate the defaults and teachers on the test split into reports/
	$(VENV)/bin/python -m training.recipe $(RECIPES)/eval.yaml

promote: venv  ## make BVAE=<bundle> and/or FLOW=<bundle> the runtime defaults (models/defaults.json)
	$(VENV)/bin/python -m training.promote $(if $(BVAE),--bvae $(BVAE)) $(if $(FLOW),--flow $(FLOW))

# Your robot's world from your own recordings (docs/adapt.md): BAGS="a.mcap b.bag" [OUT=runs/adapt]
# [FORCE=1: replace an existing OUT]. An interrupted run resumes when started again.
OUT ?= runs/adapt
adapt: venv  ## adapt the defaults to BAGS="drive1.mcap drive2.bag" into OUT (default runs/adapt)
	@test -n "$(BAGS)" || { echo 'make adapt: give BAGS="drive1.mcap drive2.bag"' >&2; exit 2; }
	$(VENV)/bin/python -m training.adapt $(addprefix --bag ,$(BAGS)) --out $(OUT) $(if $(FORCE),--force)

clean:  ## remove the virtual environments and build outputs (not datasets/ or runs/)
	rm -rf $(VENV) $(SIM_VENV) build *.egg-info
