"""Tiny ablations for the fault tests, and stand-ins for the programs around them (a queue that cannot answer)."""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import textwrap
from pathlib import Path

import yaml

from tests.helpers.cli import CONFIGS

PREACT = "model.net.init_args.preact"
CSV_ONLY = [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": ".", "name": "csv"}}]


def experiment(path: Path, name: str = "abl", preact: tuple = (False, True), seeds: tuple = (0,),
               slurm: dict | None = None, trainer: dict | None = None, **sections: dict) -> Path:
    """The tiny ResNet on digits for one epoch of two batches, logging to CSV only, with an ablation over
    ``preact``; ``sections`` update the config's sections (``data={...}``) and ``trainer`` the trainer's keys."""
    config = yaml.safe_load((CONFIGS / "tiny_resnet.yaml").read_text())
    config["trainer"].update({"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1, "logger": CSV_ONLY,
                              **(trainer or {})})
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    config["ablation"] = {"name": name, "factors": {PREACT: list(preact)}, "seeds": list(seeds),
                          **({"slurm": slurm} if slurm else {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def program(bin_dir: Path, name: str, body: str, interpreter: str = "/bin/sh") -> Path:
    """An executable ``bin_dir/name`` running ``body``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!{interpreter}\n{textwrap.dedent(body)}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def queue_that(bin_dir: Path, behaviour: str | None) -> str:
    """A PATH on which ``squeue`` errs (``"fails"``), hangs (``"hangs"``) or is missing (None), while ``sbatch`` and
    everything else is the real one."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("sbatch", "scancel", "srun"):
        real = next((Path(d) / name for d in os.environ["PATH"].split(os.pathsep) if (Path(d) / name).is_file()),
                    None)
        if real is not None and not (bin_dir / name).exists():
            (bin_dir / name).symlink_to(real)
    if behaviour == "fails":
        program(bin_dir, "squeue", 'echo "squeue: error: Unable to contact slurm controller" >&2\nexit 1\n')
    elif behaviour == "hangs":
        program(bin_dir, "squeue", "sleep 120\n")
    return str(bin_dir)


def stand_in_python(bin_dir: Path, hold: Path | None = None) -> str:
    """An interpreter for array tasks that records which trial it was given (``ran-<job>_<task>`` in the trial
    directory), waiting first while ``hold`` exists, so a test decides when a task ends."""
    return str(program(bin_dir, "python", f"""\
        import os, sys, time
        while {str(hold)!r} != "None" and os.path.exists({str(hold)!r}):
            time.sleep(0.2)
        task = os.environ["SLURM_ARRAY_JOB_ID"] + "_" + os.environ["SLURM_ARRAY_TASK_ID"]
        with open(os.path.join(sys.argv[-1], "ran-" + task), "w") as f:
            f.write(sys.argv[-1])
        """, interpreter=sys.executable))


def snapshot(root: Path) -> dict[str, str]:
    """Every file the driver wrote under ``root`` with a hash of its content (SLURM's task logs are SLURM's)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "slurm/logs" not in p.relative_to(root).as_posix()}
