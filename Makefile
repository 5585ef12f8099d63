# Two entry points, both idempotent: they create .venv (torch first, pinned, so pip never pulls another build),
# install panollava into it, then run.
VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.panollava-installed
DEMO_DIR ?= demo_out

.PHONY: install demo test clean browser

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/panollava-cli demo --output_dir $(DEMO_DIR)

test: $(STAMP) browser
	$(PY) -m pytest -q

# Headless Chromium renders report.html and leaderboard.html in the tests (Debian's package; CI runs as root).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		{ echo "installing chromium (apt-get) for the report tests"; \
		  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -q && \
		  $$( [ "$$(id -u)" = 0 ] || echo sudo ) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

clean:
	rm -rf $(VENV) $(DEMO_DIR)
