"""W&B without a login: the run is written offline (never a prompt, never an error) and says how to sync."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers.wandb_records import offline_runs, read_run

# In a fresh interpreter: W&B keeps process-wide settings, which must not leak into (or from) other tests.
SCRIPT = """
import sys
from lightning_depth.loggers import WandbLogger, wandb_logged_in
assert not wandb_logged_in()
logger = WandbLogger(save_dir=sys.argv[1], id="abc123", group="g", tags=["preact=true"])
print(logger.sync_hint())
logger.log_metrics({"val/acc1": 0.5}, step=1)
logger.experiment.finish()
"""


def test_without_login_or_wandb_mode_a_run_is_written_offline(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    env.update(WANDB_CONFIG_DIR=str(tmp_path / "config"), NETRC=str(tmp_path / "no-netrc"))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wandb sync" in proc.stdout
    (path,) = offline_runs(tmp_path)
    run = read_run(path)
    assert (run.run_id, run.group, run.tags) == ("abc123", "g", ["preact=true"])
    assert any(abs(row.get("val/acc1", -1) - 0.5) < 1e-9 for row in run.history)
