"""Fixtures every test may use. Every run is real (real training, real offline W&B files) and writes under tmp_path;
shared code lives in tests/helpers/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import slurm_cluster
from tests.helpers.cli import CONFIGS

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


# Files of a minute or more on 2 cores (pytest --durations), run first: `make test` hands whole files to its
# pytest-xdist workers in collection order, and a long file handed out last would run alone at the end.
LONG_FILES = ("tests/ablation/test_slurm.py", "tests/test_experiments.py", "tests/bench/test_bench.py",
              "tests/models/test_registry.py", "tests/ablation/test_run.py")


def pytest_collection_modifyitems(config, items):
    first = {name: rank for rank, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: first.get(item.nodeid.split("::")[0], len(LONG_FILES)))  # stable: files stay whole
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def own_wandb_service(monkeypatch):
    """A sweep run inside this process shares its W&B service with its trials through ``WANDB_SERVICE``; every test
    starts without it, so that its commands start their own service, as a user's commands do."""
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: on a shared CPU a second intra-op thread only adds synchronisation (and spin-waiting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cluster():
    """A real single-node SLURM cluster, started by the first test that asks for it and stopped when the session ends
    (under pytest-xdist: one per worker that runs such a test, each with its own ports, munge socket and state);
    SLURM clients find it through SLURM_CONF."""
    try:
        started = slurm_cluster.start()
    except slurm_cluster.ClusterUnavailableError as err:
        pytest.skip(f"cannot start a SLURM cluster here: {err}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", str(started.conf))
        # sbatch exports the submitter's environment (--export=ALL): trials log to W&B offline.
        patch.setenv("WANDB_MODE", "offline")
        print(started.run("sinfo").stdout)
        try:
            yield started
        finally:
            started.stop()


@pytest.fixture
def tiny_config() -> Path:
    return CONFIGS / "tiny_resnet.yaml"
