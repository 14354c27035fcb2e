"""Bad input is refused before anything trains: one line naming the value and what to do, exit code 2, no traceback,
and nothing written. Every case runs the real command line in this process."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml

from lightning_depth.ablation.checks import REPORT_METRICS
from lightning_depth.module import LOGGED_METRICS
from tests.faults.sweeps import experiment, program
from tests.helpers.cli import cli_in_process


def refused(proc, *needles: str) -> str:
    """The command exited 2 with one error line holding every needle, and no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    for needle in needles:
        assert needle in line, line
    return line


def fit(capfd, config, root, *args: str):
    return cli_in_process(capfd, "fit", "--config", str(config), "--trainer.default_root_dir", str(root), *args)


@pytest.mark.parametrize("change, args, needles", [
    ({}, ["--parallel", "0"], ["--parallel 0: run at least 1 trial at a time"]),
    ({}, ["--launcher", "pbs"], ["launcher: expected one of local, slurm, got pbs"]),
    ({"factors": {"model.optimizer.init_args.lr": [1, 1.0]}}, [],
     ["arms 'lr=1' and 'lr=1.0' train the same configuration", "model.optimizer.init_args.lr = 1.0 in both"]),
    ({"factors": {"model.net.init_args.depth": ["8", 8]}}, [],
     ["arms 'depth=\"8\"' and 'depth=8' train the same configuration"]),
    ({"metric": "val/acc9"}, [], ["ablation.metric 'val/acc9' is not logged by ImageClassifier; choose one of "]),
    ({"metric": "test/acc1"}, [], ["ablation.metric test/acc1: trials run fit, which logs no test metrics"]),
], ids=["parallel-0", "unknown-launcher", "arms-equal-as-floats", "arms-equal-as-ints", "metric-typo",
        "test-metric"])
def test_a_bad_ablation_is_refused_before_anything_is_written(capfd, tmp_path, change, args, needles):
    path = experiment(tmp_path / "exp.yaml")
    config = yaml.safe_load(path.read_text())
    config["ablation"].update(change)
    path.write_text(yaml.safe_dump(config))
    refused(fit(capfd, path, tmp_path / "runs", *args), *needles)
    assert not (tmp_path / "runs").exists()


def test_an_output_root_that_cannot_be_written_is_one_line(capfd, tmp_path):
    (tmp_path / "a-file").write_text("in the way")
    refused(fit(capfd, experiment(tmp_path / "exp.yaml"), tmp_path / "a-file" / "runs"),
            f"output directory {tmp_path / 'a-file' / 'runs' / 'abl'} is not writable (a file is in the way")


@pytest.mark.parametrize("data, needles", [
    ({"class_path": "lightning_depth.data.CIFAR10DataModule", "init_args": {"root": "/nonexistent/cifar"}},
     ["CIFAR-10 not found under /nonexistent/cifar", "download is off"]),
    ({"class_path": "lightning_depth.data.ImageFolderDataModule", "init_args": {"root": "no-such-folder"}},
     ["no class folders under {tmp}/no-such-folder/train"]),
], ids=["cifar", "imagefolder-relative"])
def test_data_that_is_not_there_is_found_while_planning(capfd, tmp_path, monkeypatch, data, needles):
    monkeypatch.chdir(tmp_path)
    path = experiment(tmp_path / "exp.yaml", data=data)
    refused(fit(capfd, path, tmp_path / "runs"), *(n.format(tmp=tmp_path) for n in needles))
    assert not (tmp_path / "runs").exists()


def test_the_report_metrics_are_what_the_module_logs():
    assert {"val/acc1", "val/loss", "val/acc1_best", "train/loss", "val/loss_best"} <= set(REPORT_METRICS)
    assert not set(LOGGED_METRICS["test"]) & set(REPORT_METRICS)


@pytest.mark.parametrize("args, message", [
    (["--model.lr_scheduler", '{"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": "x"}}'],
     "error: model.lr_scheduler.init_args.step_size: expected int, got x"),
    (["--data.init_args.batch_size", "zero"], "error: data.init_args.batch_size: expected int, got zero"),
    (["--model.net.init_args.block", "triple"], "error: model.net.init_args.block: expected one of basic, bottleneck"),
    (["--trainer.logger", '{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": ".", '
                          '"flush_logs_every_n_steps": "x"}}'],
     "error: trainer.logger.init_args.flush_logs_every_n_steps: expected int, got x"),
], ids=["scheduler", "data", "net-literal", "logger"])
def test_a_nested_value_names_its_full_key_and_the_reason(capfd, tmp_path, args, message):
    proc = cli_in_process(capfd, "fit", "--config", str(experiment(tmp_path / "exp.yaml")), *args)
    assert refused(proc) == message
    assert "Namespace(" not in proc.stderr


def test_ablation_flags_work_bare_as_the_hints_spell_them(capfd, tmp_path, monkeypatch):
    exp, root = experiment(tmp_path / "exp.yaml"), tmp_path / "runs"
    with pytest.raises(SystemExit):
        fit(capfd, exp, root, "--retry-failed", "--dry-run", "--ignore-queue", "--print_config")
    printed = yaml.safe_load(capfd.readouterr().out)
    assert (printed["retry_failed"], printed["dry_run"], printed["ignore_queue"]) == (True, True, True)
    program(tmp_path / "bin", "sbatch", "echo 4242\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert fit(capfd, exp, root, "--launcher", "slurm", "--retry-failed").returncode == 0


# ------------------------------------------------------------------------------------------------- damaged files


def test_a_damaged_state_is_named_and_the_other_trials_go_on(capfd, tmp_path, monkeypatch):
    """A SLURM submission (its sbatch takes every script): the damaged trial is left out, the others go."""
    bin_dir = tmp_path / "bin"
    program(bin_dir, "sbatch", "echo 4242\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    exp, root = experiment(tmp_path / "exp.yaml"), tmp_path / "runs"
    assert fit(capfd, exp, root, "--launcher", "slurm").returncode == 0
    first, second = sorted(p.parent for p in (root / "abl").glob("*/config.yaml"))
    (first / "state.json").write_text('{"state": "runn')  # cut off mid-write by hand
    (second / "state.json").write_text(json.dumps({"state": "failed", "reason": "CUDA out of memory"}))
    (root / "abl" / "slurm" / "jobs.txt").unlink()  # job 4242 never existed: nothing holds the trials
    proc = fit(capfd, exp, root, "--launcher", "slurm", "--retry-failed")
    refused(proc, f"{first / 'state.json'}: not valid JSON", "fix or delete the file")
    assert "submitted array job 4242: 1 trial(s)" in proc.stdout
    assert (root / "abl" / "slurm" / "trials-2.txt").read_text().splitlines() == [str(second)]
    assert (first / "state.json").read_text() == '{"state": "runn', "the damaged file is evidence: kept as it was"

    trial = cli_in_process(capfd, "trial", str(first))
    refused(trial, f"{first / 'state.json'}: not valid JSON")


def test_a_damaged_manifest_is_one_line_for_status_and_compare(capfd, tmp_path):
    (tmp_path / "abl").mkdir()
    (tmp_path / "abl" / "ablation.json").write_bytes(b"\x89PNG\r\n\x1a\n")
    for command in ("status", "compare"):
        refused(cli_in_process(capfd, command, str(tmp_path / "abl")),
                f"{tmp_path / 'abl' / 'ablation.json'}: not valid JSON")


def test_a_trial_directory_moved_away_from_its_outputs_is_refused(capfd, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    program(bin_dir, "sbatch", "echo 4242\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    exp, root = experiment(tmp_path / "exp.yaml", preact=(False,)), tmp_path / "runs"
    assert fit(capfd, exp, root, "--launcher", "slurm").returncode == 0
    (trial,) = [p.parent for p in (root / "abl").glob("*/config.yaml")]
    copy = shutil.copytree(trial, tmp_path / "copy")
    refused(cli_in_process(capfd, "trial", str(copy)), f"trains into {trial}, not into {copy}")


# ---------------------------------------------------------------------------------------------- configs are code


def test_a_config_may_only_import_what_is_allowed(capfd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # python -m puts the working directory first on sys.path
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = tmp_path / "imported"
    (tmp_path / "lab_nets.py").write_text(f"open({str(marker)!r}, 'w').close()\nfrom torch import nn\n\n\n"
                                          "class Net(nn.Linear):\n    def __init__(self, num_classes: int = 10):\n"
                                          "        super().__init__(64, num_classes)\n")
    refused(cli_in_process(capfd, "fit", "--config", str(experiment(tmp_path / "plain.yaml")), "--model.optimizer",
                           "os.system"),
            "model.optimizer: os.system is not allowed: a config imports only from lightning_depth, torch")
    exp = experiment(tmp_path / "exp.yaml", model={"net": {"class_path": "lab_nets.Net"}})
    refused(cli_in_process(capfd, "fit", "--config", str(exp)), "lab_nets.Net is not allowed", "import_allowlist")
    assert not marker.exists(), "a refused class path was imported"

    config = yaml.safe_load(exp.read_text())
    exp.write_text(yaml.safe_dump({**config, "import_allowlist": ["lab_nets"]}))
    with pytest.raises(SystemExit) as printed:
        cli_in_process(capfd, "fit", "--config", str(exp), "--print_config")
    assert printed.value.code in (0, None) and marker.exists()
    assert "class_path: lab_nets.Net" in capfd.readouterr().out
