# lightning_depth — the two commands a fresh machine needs: `make quickstart` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup system-packages lint test test-fast quickstart clean

# Idempotent: reinstalls only when pyproject.toml or the CI constraints change.
setup: $(STAMP)

$(STAMP): pyproject.toml constraints-ci.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints-ci.txt -e '.[dev]'
	touch $(STAMP)

# The SLURM tests start a real single-node cluster and the HTML comparison page is tested in a real headless browser:
# Debian's slurmctld, slurmd, slurm-client, munge and chromium, installed in one apt-get run when any is missing
# (CI starts bare, as root).
SYSTEM_PACKAGES := slurmctld:slurmctld slurmd:slurmd sinfo:slurm-client munged:munge chromium:chromium  # program:package
system-packages:
	@missing=; for pair in $(SYSTEM_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null || [ -x /usr/sbin/$${pair%%:*} ] || missing="$$missing $${pair##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# ruff, configured in pyproject.toml, on the whole tree.
lint: setup
	$(PY) -m ruff check .

# The linter, then the whole suite, slow tests (training, DDP, SLURM) included, in one pytest-xdist worker per core
# (at most 4). A test file runs whole in one worker (--dist loadfile), so its module fixtures (a sweep, a cluster's
# jobs) are set up once, as in a serial run.
TEST_WORKERS ?= auto
test:
	$(MAKE) -j2 lint system-packages  # the venv and the system packages install side by side
	WANDB_MODE=offline $(PY) -m pytest -q -n $(TEST_WORKERS) --maxprocesses 4 --dist loadfile

# The fast tests only (no training, no cluster).
test-fast: lint
	WANDB_MODE=offline $(PY) -m pytest -q -n $(TEST_WORKERS) --maxprocesses 4 --dist loadfile -m "not slow"

# The headline ablation on the embedded digits: post- vs pre-activation ResNet-20, three seeds, then the table.
quickstart: setup
	$(PY) -m lightning_depth fit --config experiments/preact_ablation.yaml

clean:
	rm -rf $(VENV) runs wandb lightning_logs .pytest_cache
