# Two entry points (see README): `make demo` and `make test`.
# Each creates .venv on first use. CPU installs pin torch==2.13.0 (a CPU wheel);
# if the venv already has a torch (e.g. a CUDA build you installed first), it is kept.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.scaletrain-installed
# DeepSpeed's CPU accelerator only on machines without a CUDA GPU (nvidia-smi lists one, or the
# venv's torch sees one); on a GPU machine DeepSpeed picks CUDA itself. DS_ACCELERATOR set in the
# environment always wins.
HAS_CUDA := $(shell (nvidia-smi -L >/dev/null 2>&1 && echo 1) || \
	($(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1 && echo 1))
ifeq ($(HAS_CUDA),)
export DS_ACCELERATOR ?= cpu
endif

.PHONY: install demo test test-fast clean accelerator

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

accelerator:  # what `make demo` / `make test` will use
	@echo "CUDA: $(if $(HAS_CUDA),yes,no); DS_ACCELERATOR=$${DS_ACCELERATOR:-auto (DeepSpeed detects)}"

clean:
	rm -rf runs data wandb .pytest_cache
