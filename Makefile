# The README's two commands. Each creates .venv/ on first use. `make demo` installs the package and its core
# dependencies only; `make test` adds the [test] extra (timm, transformers, Lightning, TensorBoard, W&B, Ray,
# Playwright, pytest). Both install torch and torchvision at the versions pinned in $(CONSTRAINTS), and reinstall
# only when pyproject.toml or $(CONSTRAINTS) changed since the last install (the stamps below), so a second
# `make demo` goes straight to the demo.
PYTHON      ?= python3
VENV        := .venv
BIN         := $(VENV)/bin
PIP         := $(BIN)/python -m pip
CONSTRAINTS := constraints/ci.txt
CORE_STAMP  := $(VENV)/.installed-core
TEST_STAMP  := $(VENV)/.installed-test
# Measured on a 2-core VM from a fresh clone (the table at the top of README.md); printed before pip starts.
INSTALL_ESTIMATE := about 5 minutes and a 3.2 GB download into a 6.2 GB .venv
DEMO_ESTIMATE    := about 4 minutes on 2 CPU cores; seconds when runs/demo holds them already

.PHONY: demo test install clean

$(CORE_STAMP): pyproject.toml $(CONSTRAINTS)
	@echo "make: installing resviz and its core dependencies into $(VENV)/ ($(INSTALL_ESTIMATE));" \
	      "only on the first run and after pyproject.toml or $(CONSTRAINTS) change"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c $(CONSTRAINTS) -e .
	@touch $@

$(TEST_STAMP): $(CORE_STAMP)
	@echo "make: adding the [test] extra to $(VENV)/ (timm, transformers, Lightning, TensorBoard, W&B, Ray, Playwright, pytest)"
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[test]"
	@touch $@

install: $(CORE_STAMP)

demo:
	@echo "make demo: $(if $(wildcard $(CORE_STAMP)),$(VENV)/ exists,first run: create $(VENV)/ and install resviz ($(INSTALL_ESTIMATE))), then train 4 nets on the built-in digits and write runs/demo/report/ ($(DEMO_ESTIMATE))"
	@$(MAKE) --no-print-directory --silent $(CORE_STAMP)
	$(BIN)/resviz demo

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
