"""Checkpoints are written atomically beside their target, never through $TMPDIR; a checkpoint that does not load
is passed over for the newest one that does; a run that failed before its first checkpoint does not claim its
directory; a damaged W&B id file never starts a second W&B run unnoticed."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from lightning_depth.errors import UsageError
from lightning_depth.runs import wandb_id
from tests.helpers.cli import ROOT, cli, cli_in_process


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_whole(tmp_path):
    """The writing process dies (SIGKILL) halfway through serialising the new checkpoint."""
    script = textwrap.dedent(f"""
        import os, signal, torch
        from lightning_depth.checkpoints import AtomicCheckpointIO

        class DiesWhileSaved:
            def __reduce__(self):
                os.kill(os.getpid(), signal.SIGKILL)

        io = AtomicCheckpointIO()
        path = {str(tmp_path / "last.ckpt")!r}
        io.save_checkpoint({{"state_dict": {{"w": torch.ones(1000)}}, "epoch": 1}}, path)
        io.save_checkpoint({{"state_dict": {{"w": torch.zeros(1000)}}, "epoch": 2, "x": DiesWhileSaved()}}, path)
        """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 1 and torch.equal(ckpt["state_dict"]["w"], torch.ones(1000))


@pytest.fixture
def small_tmpdir(tmp_path):
    """A 64 KiB tmpfs as $TMPDIR: another filesystem, too small for one checkpoint (about 600 KiB)."""
    mount = tmp_path / "small-tmp"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs",
                                                         str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_checkpoints_need_no_temporary_directory_and_a_broken_one_is_passed_over(tmp_path, tiny_config, capfd,
                                                                                small_tmpdir):
    run = tmp_path / "run"
    args = ["--config", str(tiny_config), "--trainer.default_root_dir", str(run)]
    cli("fit", *args, "--trainer.max_epochs", "2", env={"TMPDIR": str(small_tmpdir)})
    checkpoints = run / "checkpoints"
    # Training finished, so no save needed the 64 KiB; torch may leave an empty cache folder there, nothing more.
    assert not [p for p in small_tmpdir.rglob("*") if p.is_file()], "a checkpoint was staged in $TMPDIR"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 1
    assert torch.load(checkpoints / "last.previous.ckpt", weights_only=True)["epoch"] == 0

    # last.ckpt truncated (a disk that lied about a write, a copy cut short): resume from the newest that loads.
    last = checkpoints / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    resumed = cli("fit", *args, "--trainer.max_epochs", "3")
    passed_over = [line for line in resumed.stderr.splitlines() if "do not load" in line]
    assert len(passed_over) == 1 and "last.ckpt" in passed_over[0], resumed.stderr[-2000:]
    assert torch.load(last, weights_only=True)["global_step"] == 12

    # Nothing loads: one line naming every file tried and what to do, exit 2, every file left in place.
    for path in checkpoints.glob("*.ckpt"):
        path.write_bytes(b"\0" * 100)
    before = sorted(p.name for p in checkpoints.iterdir())
    proc = cli_in_process(capfd, "fit", *args, "--trainer.max_epochs", "4")
    assert proc.returncode == 2
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert all(name in error for name in before) and "move them aside" in error
    assert sorted(p.name for p in checkpoints.iterdir()) == before


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_run_that_failed_before_its_first_checkpoint_does_not_claim_its_directory(tmp_path, tiny_config):
    run = tmp_path / "run"
    args = ["--config", str(tiny_config), "--trainer.default_root_dir", str(run), "--trainer.max_epochs", "1"]
    failed = cli("fit", *args, "--model.optimizer.init_args.lr", "-0.05", check=False)  # a typo: SGD refuses it
    assert failed.returncode != 0 and (run / "config.yaml").exists()
    failed_wandb_id = (run / "wandb_id").read_text().strip() if (run / "wandb_id").exists() else None
    cli("fit", *args)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert "lr: 0.05" in (run / "config.yaml").read_text()
    assert (run / "wandb_id").read_text().strip() != failed_wandb_id


def test_a_damaged_wandb_id_file_continues_the_run_found_on_disk_or_stops(tmp_path, capsys):
    (tmp_path / "wandb_id").write_text("")
    with pytest.raises(UsageError, match="wandb_id is empty or damaged.*delete it to start a new W&B run"):
        wandb_id(tmp_path)
    (tmp_path / "wandb" / "offline-run-20250101_000000-abc123").mkdir(parents=True)
    assert wandb_id(tmp_path) == "abc123"
    assert "continuing the W&B run abc123" in capsys.readouterr().err
    (tmp_path / "wandb_id").write_bytes(b"\x00\xff garbage\n")
    assert wandb_id(tmp_path) == "abc123"
