# Two entry points (see README): `make demo` and `make test`.
# Each creates .venv on first use. CPU installs pin torch==2.13.0 (a CPU wheel);
# if the venv already has a torch (e.g. a CUDA build you installed first), it is kept.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.scaletrain-installed
export DS_ACCELERATOR ?= cpu

.PHONY: install demo test test-fast clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# test-only reference implementation; --no-deps keeps torchvision out
	$(PY) -m pip install -q --no-deps torchattacks==3.5.1
	touch $(STAMP)

demo: install
	$(VENV)/bin/scaletrain train

test: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -q -ra

clean:
	rm -rf runs data wandb .pytest_cache
