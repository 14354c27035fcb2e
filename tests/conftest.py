"""Shared test helpers: every run is real (real training, real offline W&B files) and writes under tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = Path(__file__).resolve().parent / "configs"
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m lightning_depth ARGS`` in a fresh process, as a user would."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "lightning_depth", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}")
    return proc


def cli_in_process(capfd, *args: str) -> subprocess.CompletedProcess:
    """The CLI's main() in this process (imports paid once): the exit code and stderr the command would give."""
    from lightning_depth.cli import main

    code = main(list(args))
    out = capfd.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


@pytest.fixture
def tiny_config() -> Path:
    return CONFIGS / "tiny_resnet.yaml"
