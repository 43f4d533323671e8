# deepdockd: `make run` serves the API, `make test` runs the whole suite on a private test rig.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PREFIX ?= /opt/deepdockd
ARGS ?=
PYTEST_ARGS ?=

NVML_SIM := build/nvml-sim/libnvidia-ml.so.1
SSH_SERVER := deepdockd/containers/ssh-server/VERSION

.PHONY: help venv install run run-sim nvml-sim ssh-server test bench lint format clean rig-start rig-stop

help:
	@echo "make run      serve the API on 127.0.0.1:8000 against the host's Docker (ARGS=... for flags)"
	@echo "make run-sim  the same with 4 simulated GPUs (a simulated NVML), for a host without GPUs"
	@echo "make test     the whole test suite, on a private dockerd, registry and test images"
	@echo "make bench    the benchmarks: ratios against baselines measured in the same run"
	@echo "make ssh-server  the static SSH server bundled into containers (from Debian's sources)"
	@echo "make lint     ruff check, ruff format --check, mypy --strict"
	@echo "make install  deepdockd into $(PREFIX), its systemd unit, /etc/deepdockd/deepdockd.toml"
	@echo "make clean    remove the virtual environment and caches"

$(BIN)/.installed: setup.cfg pyproject.toml
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,lint]'
	touch $@

venv: $(BIN)/.installed

# The package into its own virtual environment, the systemd unit, and the default config
# (an existing config is kept).
install: ssh-server
	$(PYTHON) -m venv $(PREFIX)
	$(PREFIX)/bin/pip install -q --upgrade pip
	$(PREFIX)/bin/pip install -q .
	ln -sf $(PREFIX)/bin/deepdockd /usr/local/bin/deepdockd
	install -D -m 0644 systemd/deepdockd.service /etc/systemd/system/deepdockd.service
	install -d -m 0755 /etc/deepdockd
	@if [ -e /etc/deepdockd/deepdockd.toml ]; then \
		echo "kept the existing /etc/deepdockd/deepdockd.toml"; \
	else \
		install -m 0644 systemd/deepdockd.toml /etc/deepdockd/deepdockd.toml; \
	fi
	@if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed /usr/local/bin/deepdockd, its unit and /etc/deepdockd/deepdockd.toml."
	@echo "next: systemctl enable --now deepdockd"

run: venv ssh-server
	scripts/ensure-docker.sh
	$(BIN)/deepdockd $(ARGS)

# The simulated NVML library (tests/nvml-sim): GPUs for hosts that have none.
$(NVML_SIM): tests/nvml-sim/nvml_sim.c
	@test -e /usr/include/cjson/cJSON.h || scripts/install-test-deps.sh
	mkdir -p $(dir $@)
	gcc -shared -fPIC -O2 -Wall -Wextra -Werror -Wl,-soname,libnvidia-ml.so.1 -o $@ $< -lcjson

nvml-sim: $(NVML_SIM)

# The SSH server bundled into containers whose image has none: static Dropbear (dropbear,
# dropbearkey, dropbearconvert, scp) and OpenSSH's sftp-server, built from Debian 12's source
# packages by scripts/build-ssh-server.sh into deepdockd/containers/ssh-server/ (installed
# with the package, never committed) and kept until the script or its files change.
ssh-server: $(SSH_SERVER)

$(SSH_SERVER): scripts/build-ssh-server.sh $(wildcard scripts/ssh-server/*.h scripts/ssh-server/*.c scripts/ssh-server/patches/*.patch)
	scripts/build-ssh-server.sh

run-sim: venv nvml-sim ssh-server
	scripts/ensure-docker.sh
	LD_LIBRARY_PATH=$(CURDIR)/build/nvml-sim NVML_SIM_CONFIG=$(CURDIR)/tests/nvml-sim/demo-4gpu.json \
		$(BIN)/deepdockd $(ARGS)

test:
	scripts/install-test-deps.sh
	$(MAKE) venv nvml-sim ssh-server
	$(BIN)/pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict deepdockd

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Benchmarks on the test rig: one table, and bench/results.json.
bench:
	scripts/install-test-deps.sh
	$(MAKE) venv nvml-sim ssh-server
	$(BIN)/python bench/run.py

rig-start: venv
	$(BIN)/python tests/rig.py start

rig-stop: venv
	$(BIN)/python tests/rig.py stop

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache deepdockd/containers/ssh-server
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
