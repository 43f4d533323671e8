# deepdockd: `make run` serves the API, `make test` runs the whole suite on a private test rig.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PREFIX ?= /opt/deepdockd
ARGS ?=
PYTEST_ARGS ?=

NVML_SIM := build/nvml-sim/libnvidia-ml.so.1
SSH_SERVER := deepdockd/containers/ssh-server/VERSION
# A second virtual environment with aiohttp, aiodocker and marshmallow at their lowest versions
# that setup.cfg allows (make test-floor).
VENV_FLOOR ?= .venv-floor

.PHONY: help venv install uninstall run run-sim nvml-sim ssh-server test test-engine2 test-fast test-floor bench lint format clean rig-start rig-stop

help:
	@echo "make run      serve the API on 127.0.0.1:8000 against the host's Docker (ARGS=... for flags)"
	@echo "make run-sim  the same with 4 simulated GPUs (a simulated NVML), for a host without GPUs"
	@echo "make test     the whole test suite, on a private dockerd, registry and test images;"
	@echo "              then the core suites again on a second Engine (make test-engine2)"
	@echo "make test-engine2  the core suites on Debian 13's Docker 26 (ENGINE2_TESTS, ENGINE2_ARGS)"
	@echo "make test-fast  the tests that need no dockerd, no root and no browser (seconds)"
	@echo "make test-floor the fast tests with aiohttp, aiodocker, marshmallow at setup.cfg's floors"
	@echo "make bench    the benchmarks: ratios against baselines measured in the same run"
	@echo "make ssh-server  the static SSH server bundled into containers (from Debian's sources)"
	@echo "make lint     ruff check, ruff format --check, mypy --strict, import-linter's layer contracts"
	@echo "make install  deepdockd into $(PREFIX), its systemd unit, /etc/deepdockd/deepdockd.toml"
	@echo "make uninstall  stop it, take its egress rules out of the firewall, remove what install put"
	@echo "make clean    remove the virtual environments and caches"

# The client (client/) and the daemon in one pip call, so that the daemon's deepdock==VERSION
# is met by the local client rather than looked for on the package index.
$(BIN)/.installed: setup.cfg pyproject.toml client/pyproject.toml
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ./client -e '.[test,lint]'
	@# In a venv from before client/, deepdockd's record held the deepdock script: pip removes
	@# it with that old deepdockd, after the client put it there. Put it back once.
	test -x $(BIN)/deepdock || $(BIN)/pip install -q --no-deps --force-reinstall -e ./client
	touch $@

venv: $(BIN)/.installed

# The package into its own virtual environment, the systemd unit, and the default config
# (an existing config is kept).
install: ssh-server
	$(PYTHON) -m venv $(PREFIX)
	$(PREFIX)/bin/pip install -q --upgrade pip
	$(PREFIX)/bin/pip install -q ./client .
	@# An upgrade from before client/ removes the deepdock script with the old deepdockd.
	test -x $(PREFIX)/bin/deepdock || \
		$(PREFIX)/bin/pip install -q --no-deps --force-reinstall ./client
	ln -sf $(PREFIX)/bin/deepdockd /usr/local/bin/deepdockd
	ln -sf $(PREFIX)/bin/deepdock /usr/local/bin/deepdock
	install -D -m 0644 systemd/deepdockd.service /etc/systemd/system/deepdockd.service
	install -d -m 0755 /etc/deepdockd
	@# The host group whose members are admins on the local socket (admin_group).
	getent group deepdock-admin >/dev/null || groupadd --system deepdock-admin
	@if [ -e /etc/deepdockd/deepdockd.toml ]; then \
		echo "kept the existing /etc/deepdockd/deepdockd.toml"; \
	else \
		install -m 0644 systemd/deepdockd.toml /etc/deepdockd/deepdockd.toml; \
	fi
	@if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed /usr/local/bin/deepdockd and deepdock, the unit and /etc/deepdockd/deepdockd.toml."
	@echo "next: systemctl enable --now deepdockd"

# What install put, and the egress rules the daemon leaves in the firewall on purpose (a
# stopped daemon must not open the boundary). The config, the state directory, Docker's
# containers and volumes stay.
uninstall:
	@if [ -d /run/systemd/system ]; then systemctl disable --now deepdockd || true; fi
	if [ -x $(PREFIX)/bin/deepdockd ]; then $(PREFIX)/bin/deepdockd firewall remove; fi
	rm -f /etc/systemd/system/deepdockd.service /usr/local/bin/deepdockd /usr/local/bin/deepdock
	case "$(PREFIX)" in /?*/?*) rm -rf "$(PREFIX)";; *) echo "left $(PREFIX) in place";; esac
	@if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

run: venv ssh-server
	scripts/ensure-docker.sh
	$(BIN)/deepdockd $(ARGS)

# The simulated NVML library (tests/nvml-sim): GPUs for hosts that have none.
$(NVML_SIM): tests/nvml-sim/nvml_sim.c
	@test -e /usr/include/cjson/cJSON.h || scripts/install-test-deps.sh
	mkdir -p $(dir $@)
	gcc -shared -fPIC -O2 -Wall -Wextra -Werror -Wl,-soname,libnvidia-ml.so.1 -o $@ $< -lcjson -pthread

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

# The whole suite on the host's Docker Engine (Debian 12's 20.10), then the core suites again
# on a second Engine, Debian 13's docker.io (26.x, API 1.45), run from a Debian 13 root that the
# rig builds once into its cache (tests/support/engine.py). A run narrowed with PYTEST_ARGS is
# a run of those tests alone: it skips the second Engine (make test-engine2 runs it alone).
ENGINE2 := debian13
ENGINE2_TESTS := tests/test_rig_engine.py tests/test_containers.py tests/test_images.py \
	tests/test_live_view.py tests/test_isolation.py
ENGINE2_ARGS ?=

test:
	scripts/install-test-deps.sh
	$(MAKE) venv nvml-sim ssh-server
	$(BIN)/pytest $(PYTEST_ARGS)
	$(if $(PYTEST_ARGS),,$(MAKE) test-engine2)

test-engine2:
	scripts/install-test-deps.sh
	$(MAKE) venv nvml-sim ssh-server
	DEEPDOCKD_TEST_ENGINE=$(ENGINE2) $(BIN)/pytest $(ENGINE2_TESTS) $(ENGINE2_ARGS)

# The fast lane: every test that needs no dockerd, no root and no browser (the lanes are
# markers, tests/support/lanes.py). It builds the simulated NVML, so it needs gcc and
# libcjson-dev: as root it installs those two where they are missing (make test installs them
# with the rig's packages); as anyone else it says so.
FAST_LANE := -m "not rig and not process and not browser and not gpu"
NEEDS_CJSON = @test -e /usr/include/cjson/cJSON.h || { test "$$(id -u)" = 0 && \
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc libcjson-dev; } || { \
	echo "make $@ builds the simulated NVML: apt-get install gcc libcjson-dev first" >&2; exit 1; }

test-fast: venv
	$(NEEDS_CJSON)
	$(MAKE) nvml-sim
	$(BIN)/pytest $(FAST_LANE) $(PYTEST_ARGS)

# The fast lane again, with aiohttp, aiodocker and marshmallow at the lower bounds setup.cfg
# declares: read from it, so the floors tested are the floors declared.
FLOORS = $(shell sed -n -E 's/^[[:space:]]+(aiohttp|aiodocker|marshmallow)>=([0-9.]+).*/\1==\2/p' setup.cfg)

$(VENV_FLOOR)/.installed: setup.cfg pyproject.toml client/pyproject.toml
	@test "$(words $(FLOORS))" = 3 || { \
		echo "setup.cfg: want a >= floor for each of aiohttp, aiodocker, marshmallow; found: $(FLOORS)" >&2; exit 1; }
	rm -rf $(VENV_FLOOR)
	$(PYTHON) -m venv $(VENV_FLOOR)
	$(VENV_FLOOR)/bin/pip install -q --upgrade pip
	$(VENV_FLOOR)/bin/pip install -q -e ./client -e '.[test]' $(FLOORS)
	touch $@

test-floor: $(VENV_FLOOR)/.installed
	$(NEEDS_CJSON)
	$(MAKE) nvml-sim
	$(VENV_FLOOR)/bin/pip list 2>/dev/null | grep -E '^(aiohttp|aiodocker|marshmallow) '
	$(VENV_FLOOR)/bin/pytest $(FAST_LANE) $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict deepdockd client/deepdock
	$(BIN)/lint-imports  # the layers of docs/architecture.md, from .importlinter

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Benchmarks on the test rig: one table, and bench/results.json.
bench:
	scripts/install-test-deps.sh
	$(MAKE) venv nvml-sim ssh-server
	$(BIN)/python -m bench.run

rig-start: venv
	$(BIN)/python -m tests.support.rig start

rig-stop: venv
	$(BIN)/python -m tests.support.rig stop

clean:
	rm -rf $(VENV) $(VENV_FLOOR) build *.egg-info .pytest_cache .mypy_cache .ruff_cache deepdockd/containers/ssh-server
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
