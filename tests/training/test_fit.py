"""The training pipeline, specified by real runs: fit, W&B read back, checkpoints, exact resume, DDP, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lightning_depth.evidence import evidence_path, load_evidence
from tests.helpers.cli import ROOT, cli, cli_in_process
from tests.helpers.wandb_records import offline_runs, read_run


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def _learning_metrics(run_dir: Path) -> dict:
    """Every metric except throughput, which measures the machine rather than the run."""
    return {k: v for k, v in _result(run_dir)["metrics"].items() if "samples_per_sec" not in k}


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_fit_writes_everything_a_run_needs_into_its_directory(tmp_path, tiny_config):
    run = tmp_path / "run"
    cli("fit", "--config", str(tiny_config), "--trainer.default_root_dir", str(run))

    result = _result(run)
    assert result["epochs"] == 3 and result["global_step"] == 12
    assert 0.0 <= result["metrics"]["val/acc1"]["final"] <= result["metrics"]["val/acc1"]["best"] <= 1.0
    from lightning_depth.models import ResNet

    assert result["params"] == sum(p.numel() for p in ResNet(depth=8, stem="cifar", num_classes=10).parameters())
    assert result["macs"] > 0
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "checkpoints").glob("best-epoch*.ckpt"))
    assert (run / "config.yaml").is_file()
    assert (run / "csv" / "version_0" / "metrics.csv").read_text().count("\n") > 3

    # Exactly one W&B run, holding the resolved config, the seed, the git revision and the metrics.
    (wandb_file,) = offline_runs(run)
    w = read_run(wandb_file)
    assert w.run_id == (run / "wandb_id").read_text().strip()
    assert w.config["model.net.init_args.depth"] == 8
    assert w.config["seed"] == 0
    assert "git_revision" in w.config and "git_dirty" in w.config
    logged = {k for row in w.history for k in row}
    assert {"train/loss", "val/loss", "val/acc1", "val/acc5", "val/acc1_best", "train/samples_per_sec"} <= logged
    assert any(k.startswith("lr-") for k in logged)
    assert not list(Path(ROOT).glob("wandb/offline-run-*")), "W&B must not write into the current directory"

    # val/acc1 is the accuracy of the saved weights on the validation split, recomputed without Lightning.
    assert result["metrics"]["val/acc1"]["final"] == pytest.approx(_val_acc_by_hand(run), abs=1e-6)


@pytest.mark.slow
def test_same_command_twice_resumes_and_never_trains_an_epoch_twice(tmp_path, tiny_config):
    run = tmp_path / "run"
    cli("fit", "--config", str(tiny_config), "--trainer.default_root_dir", str(run), "--trainer.max_epochs", "2")
    second = cli("fit", "--config", str(tiny_config), "--trainer.default_root_dir", str(run),
                 "--trainer.max_epochs", "3")
    assert "resuming from" in second.stderr
    assert _result(run)["global_step"] == 12  # 2 epochs + 1 more, 4 steps each
    # The continued W&B run has the same id, and its steps continue instead of restarting at 0.
    runs = [read_run(p) for p in offline_runs(run)]
    assert {r.run_id for r in runs} == {(run / "wandb_id").read_text().strip()}
    steps = [row["trainer/global_step"] for r in runs for row in r.history if "train/loss" in row]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) == 12


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run_bit_for_bit(tmp_path, tiny_config):
    """Two independent processes with the same seed, one of them killed and resumed, end identical: this is
    determinism and exact resume at once."""
    args = ["--config", str(tiny_config), "--trainer.max_epochs", "4"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    cli("fit", *args, "--trainer.default_root_dir", str(straight))

    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "lightning_depth", "fit", *args, "--trainer.default_root_dir", str(killed)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.exists():
            epoch = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
            if epoch >= 1:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cli("fit", *args, "--trainer.default_root_dir", str(killed))

    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _learning_metrics(straight) == _learning_metrics(killed)


@pytest.mark.slow
def test_ddp_on_cpu_with_two_processes_trains_with_one_wandb_run(tmp_path, tiny_config):
    run = tmp_path / "ddp"
    cli("fit", "--config", str(tiny_config), "--trainer.default_root_dir", str(run),
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
        "--trainer.max_epochs", "2")
    result = _result(run)
    # Each rank sees half of the 4 limited batches... of its own shard: 4 steps per epoch per rank.
    assert result["global_step"] == 8
    assert 0.0 <= result["metrics"]["val/acc1"]["final"] <= 1.0
    wandb_files = offline_runs(run)
    assert len(wandb_files) == 1, "one W&B run per training run, not one per rank"
    history = read_run(wandb_files[0]).history
    assert any("val/acc1" in row for row in history)
    # Per-example evidence gathered from both ranks: each rank's 2 batches of 32 from its interleaved shard.
    evidence = load_evidence(evidence_path(run, "val_final"))
    assert evidence.index.tolist() == list(range(128))
    assert evidence.hits().mean() == pytest.approx(result["metrics"]["val/acc1"]["final"])


def _val_acc_by_hand(run: Path) -> float:
    """val/acc1 recomputed from the best checkpoint on the full validation split, without Lightning."""
    from lightning_depth.data import DigitsDataModule
    from lightning_depth.models import ResNet

    net = ResNet(depth=8, stem="cifar", num_classes=10)
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    net.eval()
    data = DigitsDataModule(image_size=8, batch_size=32)
    data.setup("fit")
    correct = total = 0
    with torch.no_grad():
        for i, (x, y) in enumerate(data.val_dataloader()):
            if i == 2:  # limit_val_batches: 2
                break
            correct += (net(x).argmax(1) == y).sum().item()
            total += y.numel()
    return correct / total


# -- bad input: one line, exit 2, no traceback, nothing overwritten ----------------------------------------------

def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    if isinstance(proc.args, list):  # a real process; in-process, main() returning 2 already means no exception
        assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.mark.parametrize(
    "override, needles",
    [
        (["--model.net.init_args.depth", "21"], ["depth=21", "6n+2"]),
        (["--model.net.init_args.preactivation", "true"], ["preactivation"]),
        (["--model.net.init_args.depth", "twenty"], ["depth"]),
        (["--trainer.max_epoch", "3"], ["max_epoch"]),  # a prefix of max_epochs is not accepted either
        (["--trainer.epochs", "3"], ["epochs"]),
        (["--data.init_args.image_size", "4"], ["image_size"]),
    ],
    ids=["invalid-toggle-value", "unknown-toggle", "wrong-type", "abbreviated-key", "unknown-trainer-key",
         "invalid-data-value"],
)
def test_bad_config_values_get_one_clear_line(capfd, tmp_path, tiny_config, override, needles):
    proc = cli_in_process(capfd, "fit", "--config", str(tiny_config), "--trainer.default_root_dir",
                          str(tmp_path / "r"), *override)
    _assert_one_line_error(proc, *needles)


def test_unknown_key_in_a_config_file_gets_one_line(tmp_path, tiny_config):
    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_config.read_text().replace("  max_epochs: 3", "  max_epochs: 3\n  epochs_max: 3"))
    proc = cli("fit", "--config", str(bad), "--trainer.default_root_dir", str(tmp_path / "r"), check=False)
    _assert_one_line_error(proc, "epochs_max")


def test_missing_dataset_names_the_path_and_the_fix(capfd, tmp_path, tiny_config):
    proc = cli_in_process(capfd, "fit", "--config", str(tiny_config), "--trainer.default_root_dir",
                          str(tmp_path / "r"), "--data", "lightning_depth.data.CIFAR10DataModule",
                          "--data.init_args.root", str(tmp_path / "none"))
    _assert_one_line_error(proc, str(tmp_path / "none"), "download")


def test_corrupt_checkpoint_gets_one_line_and_is_left_in_place(capfd, tmp_path, tiny_config):
    ckpt = tmp_path / "broken.ckpt"
    ckpt.write_bytes(b"not a checkpoint at all")
    proc = cli_in_process(capfd, "fit", "--config", str(tiny_config), "--trainer.default_root_dir",
                          str(tmp_path / "r"), "--ckpt_path", str(ckpt))
    _assert_one_line_error(proc, "broken.ckpt", "corrupt")
    assert ckpt.read_bytes() == b"not a checkpoint at all"


def test_checkpoints_that_would_run_code_on_load_are_refused(capfd, tmp_path, tiny_config):
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, ckpt)
    proc = cli_in_process(capfd, "fit", "--config", str(tiny_config), "--trainer.default_root_dir",
                          str(tmp_path / "r"), "--ckpt_path", str(ckpt))
    _assert_one_line_error(proc, "evil.ckpt")
    assert not (tmp_path / "pwned").exists()


def test_unwritable_output_directory_gets_one_line(capfd, tmp_path, tiny_config):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = cli_in_process(capfd, "fit", "--config", str(tiny_config), "--trainer.default_root_dir",
                          str(blocker / "run"))
    _assert_one_line_error(proc, "not writable")


@pytest.mark.slow
def test_a_directory_holding_another_run_is_never_overwritten(tmp_path, tiny_config):
    run = tmp_path / "run"
    cli("fit", "--config", str(tiny_config), "--trainer.default_root_dir", str(run), "--trainer.max_epochs", "1")
    before = (run / "checkpoints" / "last.ckpt").read_bytes()
    proc = cli("fit", "--config", str(tiny_config), "--trainer.default_root_dir", str(run),
               "--model.net.init_args.depth", "14", check=False)
    _assert_one_line_error(proc, "different model")
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == before


def test_a_config_without_an_optimizer_uses_sgd_with_momentum_and_prints(capfd, tmp_path):
    """ImageClassifier's default optimizer is the papers' SGD with momentum 0.9, and it serialises as a class."""
    from lightning_depth.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.net", "lightning_depth.models.ResNet", "--model.net.init_args.depth", "8",
              "--data", "lightning_depth.data.DigitsDataModule", "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capfd.readouterr().out)
    assert printed["model"]["optimizer"]["class_path"] == "lightning_depth.module.MomentumSGD"
    assert printed["model"]["optimizer"]["init_args"]["momentum"] == 0.9
