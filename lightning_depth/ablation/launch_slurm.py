"""Submit an ablation's unfinished trials as one SLURM array job and return at once."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from lightning_depth.ablation.spec import AblationSpec


def launch(spec: AblationSpec, ablation_dir: Path, todo: list[Any], cfg: Any) -> int:
    """Submit ``todo`` (trials not done) with the spec's ``slurm:`` options, overridden by ``--slurm``."""
    from lightning_depth.ablation.run import print_report
    from lightning_depth.ablation.slurm import SlurmOptions, submit
    from lightning_depth.cli import _plain

    options = SlurmOptions.from_mapping({**spec.slurm, **(cfg.get("slurm") or {})})
    if not todo:
        print("every trial is done; nothing to submit", file=sys.stderr)
        print_report(ablation_dir, spec.metric)
        return 0
    job = submit(ablation_dir, [t.dir for t in todo], options, _plain(cfg.trainer))
    where = shlex.quote(str(ablation_dir))
    print(f"submitted array job {job}: {len(todo)} trial(s)\n"
          f"  follow:  squeue -j {job}   or   python -m lightning_depth status {where}\n"
          f"  logs:    {shlex.quote(str(ablation_dir / 'slurm' / 'logs'))}/{job}_<task>.out\n"
          f"  results: python -m lightning_depth compare {where}   (works while trials finish)")
    return 0
