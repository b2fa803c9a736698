# One command per job; each installs what it needs. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
RIG ?= sim
RIG_ARGS ?= --soak-seconds 60
RIG_OUT ?= out/rig
DEB_OUT ?= dist

.PHONY: help demo demo-ingest test lint typecheck pytest rig bench deps venv test-venv clean deb fuzz arm64-check image image-check

help:
	@echo "make demo   - simulated devices + local mosquitto + daemon + receiver, verified batches"
	@echo "make demo-ingest - the same, with the embedded fleet ingest storing every reading (SQLite) and its report"
	@echo "make test   - the full suite: lint, type check, tests against real services"
	@echo "make lint   - ruff (with ASYNC rules) and mypy on gateway/"
	@echo "make rig    - the rig scenarios on RIG=sim (or RIG=hil/rigs/bench-pi.yaml); report in out/rig/"
	@echo "make bench  - the end-to-end benchmark (figures in bench/results/)"
	@echo "make deb    - the Debian package (dist/sensegate_*_ARCH.deb); DEB_ARCH=arm64 for a Pi"
	@echo "make fuzz   - every parser's fuzz target for FUZZ_SECONDS each (default 60); finds in out/fuzz/"
	@echo "make arm64-check - the arm64 package installed, provisioned and delivering on arm64 (qemu-user-static)"
	@echo "make image  - the Raspberry Pi image (Debian 12 arm64, sensegate installed): dist/sensegate-pi-arm64.img"
	@echo "make image-check - boot that image under qemu-system-aarch64 with systemd: first boot, watchdog, upgrade"

# Two stamps: the runtime (for demo/bench/deb) and the test tools, which need Debian headers
# (dbus-python for python-dbusmock) installed first by hil/system-deps.sh.
$(BIN)/.installed: setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "sensegate needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[all]'
	@touch $@

$(BIN)/.installed-test: $(BIN)/.installed
	@hil/system-deps.sh test
	$(BIN)/pip install -q -e '.[all,test]'
	@touch $@

venv: $(BIN)/.installed

test-venv: $(BIN)/.installed-test

deps:
	@hil/system-deps.sh test

demo: venv
	@hil/system-deps.sh demo
	$(BIN)/sensegate demo

demo-ingest: venv
	@hil/system-deps.sh demo
	$(BIN)/sensegate demo --ingest

lint: test-venv
	$(BIN)/ruff check gateway drivers hil tests bench
	$(BIN)/mypy

typecheck: lint

pytest: test-venv deps
	$(BIN)/pytest $(PYTEST_ARGS)

# The reliability suite on a rig (hil/README.md): JUnit XML and summary.md in $(RIG_OUT)/.
rig: test-venv deps
	@mkdir -p $(RIG_OUT)
	$(BIN)/pytest tests/rig --rig $(RIG) --rig-report $(RIG_OUT) --junitxml=$(RIG_OUT)/junit.xml $(RIG_ARGS); \
	  status=$$?; cat $(RIG_OUT)/summary.md 2>/dev/null; exit $$status

test: lint pytest rig

bench: venv
	@hil/system-deps.sh demo
	$(BIN)/python -m bench

# The .deb for flashing: agent + dependencies as a wheelhouse, installed offline into a venv.
deb: venv
	deploy/debian/build.sh $(DEB_OUT)

# Coverage-guided fuzzing (tests/fuzz/README.md): new inputs go to out/fuzz/corpus/<target>, crashes
# to out/fuzz/<target>-crash-*; the repository's corpus is read, never written.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= nmea modbus rfid ble camera yaml cose senml remote receiver
fuzz: test-venv
	@mkdir -p out/fuzz; status=0; for t in $(FUZZ_TARGETS); do \
	  mkdir -p out/fuzz/corpus/$$t; \
	  $(BIN)/python -m tests.fuzz.run $$t out/fuzz/corpus/$$t tests/fuzz/corpus/$$t -max_total_time=$(FUZZ_SECONDS) \
	    -artifact_prefix=out/fuzz/$$t- > out/fuzz/$$t.log 2>&1 || status=1; \
	  echo "$$t: $$(grep -E '#[0-9]+[[:space:]]+DONE' out/fuzz/$$t.log | tail -1 || echo 'CRASH, see out/fuzz/'$$t'.log')"; \
	done; exit $$status

# arm64: the package on a Debian 12 arm64 root under qemu-user-static (root file system cached in
# ~/.cache/sensegate, keyed by what goes into it). `make test` runs it too (tests/packaging).
arm64-check: test-venv deps
	$(BIN)/pytest tests/packaging/test_arm64.py $(PYTEST_ARGS)

# The image a technician flashes (docs/deploying.md), and its check booted with real systemd.
image: venv
	@hil/system-deps.sh image
	$(MAKE) -s deb DEB_ARCH=arm64
	deploy/image/build.sh $(DEB_OUT)/sensegate-pi-arm64.img $$(ls -t $(DEB_OUT)/sensegate_*_arm64.deb | head -n 1)

# Not in `make test`: cold (no cached root) it takes longer than CI's budget allows (figures in
# docs/deploying.md); the on-site steps' times go to out/image-check.txt.
image-check: test-venv deps
	@hil/system-deps.sh image
	SENSEGATE_IMAGE_REPORT=out/image-check.txt $(BIN)/pytest tests/packaging/test_image.py -m image $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info bench/results
