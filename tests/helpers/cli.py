"""Run the command line as a user would: a fresh process, or ``main()`` in this process when imports should be
paid once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "tests" / "configs"


def cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m lightning_depth ARGS`` in a fresh process."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "lightning_depth", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}")
    return proc


def cli_in_process(capfd, *args: str) -> subprocess.CompletedProcess:
    """The CLI's main() in this process: the exit code and output the command would give."""
    from lightning_depth.__main__ import main

    code = main(list(args))
    out = capfd.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)
