"""Weights & Biases logging with the W&B options an ablation needs as typed, validated arguments."""

from __future__ import annotations

import netrc
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger


def wandb_logged_in() -> bool:
    """Whether an API key is available without asking and without the network: the environment, or the netrc entry
    ``wandb login`` writes for the W&B host. (``wandb.api.api_key`` is deprecated and warns on every use;
    ``wandb.login`` contacts the server.)"""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        entry = netrc.netrc(os.environ.get("NETRC") or Path.home() / ".netrc").authenticators(host or "")
    except (OSError, netrc.NetrcParseError):  # no netrc, or one that cannot be read: not logged in
        return False
    return bool(entry and entry[2])


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger with ``group``, ``job_type``, ``tags``, ``notes`` and extra ``config`` as arguments.

    Lightning passes these through ``**kwargs``, which a configuration file cannot validate; here they are
    named so that ``trainer.logger`` sections are checked like everything else. Without ``WANDB_MODE`` and
    without a W&B login the run is written offline (and the CLI says how to sync it) instead of prompting.

    Args:
        project: W&B project.
        name: display name of the run.
        save_dir: directory under which W&B writes ``wandb/`` (the CLI sets the run's output directory).
        id: run id; the CLI keeps one per output directory so a resumed run continues the same W&B run.
        offline: write the run locally only.
        group: W&B group (an ablation's name, so the dashboard groups its trials).
        job_type: W&B job type (``ablation`` for ablation trials).
        tags: W&B tags (``preact=true`` for each factor of an ablation trial).
        notes: free text shown with the run.
        config: extra flat config keys (an ablation's factors), merged into the run's config.
        log_model: upload checkpoints as W&B artifacts (needs online mode).
    """

    def __init__(
        self,
        project: str = "lightning_depth",
        name: str | None = None,
        save_dir: str = ".",
        id: str | None = None,
        offline: bool = False,
        group: str | None = None,
        job_type: str | None = None,
        tags: list[str] | None = None,
        notes: str | None = None,
        config: dict[str, Any] | None = None,
        log_model: bool = False,
    ) -> None:
        if not offline and "WANDB_MODE" not in os.environ and not wandb_logged_in():
            offline = True
        self.offline_without_login = offline
        quiet = offline or os.environ.get("WANDB_MODE") in ("offline", "dryrun")
        super().__init__(
            project=project,
            name=name,
            save_dir=save_dir,
            id=id,
            offline=offline,
            log_model=log_model and not offline,
            group=group,
            job_type=job_type,
            tags=tags,
            notes=notes,
            config=config,
            # Lightning's offline switch sets WANDB_MODE=dryrun, which current W&B no longer honours (it then asks
            # for a login); the explicit mode works with every W&B release. Offline, W&B's own console lines only say
            # where the files are: the CLI prints that once, with the sync command, when the run ends.
            **({"mode": "offline"} if offline else {}),
            **({"settings": {"silent": True}} if quiet else {}),
        )
        # Lightning always passes ``anonymous`` (None when unset), which current W&B answers with a warning that the
        # setting has no effect; leaving it out when unset changes nothing else.
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    @property
    def started(self) -> bool:
        """Whether the W&B run exists (W&B starts it on first use, so a command that logs nothing starts none)."""
        return self._experiment is not None

    def sync_hint(self) -> str | None:
        """One line telling how to upload an offline run, or None when the run is online."""
        mode = os.environ.get("WANDB_MODE", "offline" if self._offline else "online")
        if mode not in ("offline", "dryrun"):
            return None
        if self.started:
            run_dir = os.path.dirname(os.path.abspath(self.experiment.dir))
            relative = os.path.relpath(run_dir)
            run_dir = run_dir if relative.startswith("..") else relative
        else:
            run_dir = os.path.join(self.save_dir or ".", "wandb", "offline-run-*")
        return f"W&B is offline; upload this run later with: wandb sync {run_dir}"


def print_sync_hint(loggers: list[Any]) -> None:
    """The sync command of every offline W&B run that this process started, one line each."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger.started:
            hint = logger.sync_hint()
            if hint:
                print(hint, file=sys.stderr)


def finish_runs(loggers: list[Any]) -> None:
    """Finish every W&B run this process started, which waits until W&B has written all of it: the run is complete
    on disk when the command ends, even where the W&B service outlives the command (one service for a sweep)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger.started:
            logger.experiment.finish()


def finish_preempted(loggers: list[Any]) -> None:
    """Mark every W&B run as preempted and finish it, which waits until W&B has written everything logged so far.

    Called before a job is requeued: SLURM then ends every process of the job, the W&B service among them, and
    whatever the service had not written yet would be lost. The resumed run continues the same W&B run.
    """
    for logger in loggers:
        if isinstance(logger, _LightningWandbLogger):
            run = logger.experiment
            if hasattr(run, "mark_preempting"):
                run.mark_preempting()
                run.finish(exit_code=1)
