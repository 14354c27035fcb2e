"""W&B without a login: the run is written offline (never a prompt, never an error) and says how to sync."""

from __future__ import annotations

import pytest
from wandb_records import offline_runs, read_run


def test_without_login_or_wandb_mode_a_run_is_written_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))  # no stored credentials
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    from lightning_depth.loggers import WandbLogger, wandb_logged_in

    assert not wandb_logged_in()
    logger = WandbLogger(save_dir=str(tmp_path), id="abc123", group="g", tags=["preact=true"], config={"k": 1})
    assert "wandb sync" in logger.sync_hint()
    logger.log_metrics({"val/acc1": 0.5}, step=1)
    logger.experiment.finish()
    (path,) = offline_runs(tmp_path)
    run = read_run(path)
    assert (run.run_id, run.group, run.tags, run.config["k"]) == ("abc123", "g", ["preact=true"], 1)
    assert any(row.get("val/acc1") == pytest.approx(0.5) for row in run.history)
