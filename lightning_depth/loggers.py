"""Weights & Biases logging with the W&B options an ablation needs as typed, validated arguments."""

from __future__ import annotations

import os
import sys
from typing import Any

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger


def wandb_logged_in() -> bool:
    """Whether an API key is available without asking (environment, netrc or the W&B settings file)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import wandb

        return bool(wandb.api.api_key)
    except Exception:  # noqa: BLE001 - W&B settings that cannot be read mean: not logged in
        return False


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
            # for a login); the explicit mode works with every W&B release.
            **({"mode": "offline"} if offline else {}),
        )

    def sync_hint(self) -> str | None:
        """One line telling how to upload an offline run, or None when the run is online."""
        mode = os.environ.get("WANDB_MODE", "offline" if self._offline else "online")
        if mode not in ("offline", "dryrun"):
            return None
        run_dir = os.path.join(self.save_dir or ".", "wandb")
        return f"W&B is offline; upload this run later with: wandb sync {run_dir}/offline-run-*"


def print_sync_hint(loggers: list[Any]) -> None:
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            hint = logger.sync_hint()
            if hint:
                print(hint, file=sys.stderr)
