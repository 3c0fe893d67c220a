# Developer entry points. Everything runs from the project venv ($(VENV)), which
# `make setup` creates or updates (idempotent: seconds when nothing changed).
#   make demo   set up, then run the live demo (video -> detector node -> detections)
#   make test   set up, then run the whole test suite (real ROS 2 graph included);
#               TESTS=test/test_ros_graph.py picks files, PYTEST_ARGS adds options

VENV ?= .venv
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?= -q
TESTS ?= test
DEMO_ARGS ?=

.PHONY: setup test demo lock clean-venv

setup:
	@VENV="$(VENV)" bash .ci/setup_env.sh

test: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PYTHON) -m pytest $(PYTEST_ARGS) $(TESTS)

demo: setup
	$(VENV)/bin/centernet-demo $(DEMO_ARGS)

# Regenerate .ci/constraints.txt from the current venv (after editing .ci/requirements.txt).
lock:
	bash .ci/lock_constraints.sh "$(VENV)"

clean-venv:
	rm -rf "$(VENV)"
