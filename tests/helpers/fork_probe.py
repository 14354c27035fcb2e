"""``python -m tests.helpers.fork_probe OUT [MODE [ARGS...]]``: write what the process held when it started to OUT
(JSON), then act as MODE says. Run as a fork of a fork server, its start is the server's state at the fork; it
imports nothing heavy itself, so whatever it finds in ``sys.modules`` the server had imported.

MODE: ``ok`` (exit 0), ``exit N``, ``crash`` (an uncaught error), ``segfault``, ``sleep`` (ten minutes),
``omp`` (one OpenMP parallel torch op), ``trial DIR`` (then the trial command on DIR, recording what it imported).
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
import time
from pathlib import Path


def state() -> dict:
    torch = sys.modules.get("torch")
    return {"pid": os.getpid(), "ppid": os.getppid(), "argv": sys.argv[1:], "cwd": os.getcwd(), "name": __name__,
            "modules": sorted(sys.modules), "env": dict(os.environ),
            "cuda_initialized": torch.cuda.is_initialized() if torch is not None else None,
            "cuda_driver_loaded": "libcuda.so" in Path("/proc/self/maps").read_text(),
            "threads": torch.get_num_threads() if torch is not None else None}


def main(out: Path, mode: str, args: list[str]) -> int:
    found = state()
    out.write_text(json.dumps(found))
    print("to stdout")
    print("to stderr", file=sys.stderr)
    if mode == "exit":
        return int(args[0])
    if mode == "crash":
        raise RuntimeError("this fork crashed on purpose")
    if mode == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if mode == "sleep":
        time.sleep(600)
    if mode == "omp":
        import torch

        torch.set_num_threads(2)
        torch.ones(1 << 18).add_(1)
    if mode == "trial":
        sys.argv = [sys.argv[0], "trial", *args]
        try:
            runpy.run_module("lightning_depth", run_name="__main__", alter_sys=True)
        except SystemExit as end:
            code = end.code or 0
        after = {**found, "imported": sorted(set(sys.modules) - set(found["modules"]))}
        out.write_text(json.dumps(after))
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "ok", sys.argv[3:]))
