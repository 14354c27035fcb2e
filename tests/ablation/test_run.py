"""The ablation runner end to end: real trials in real processes, W&B runs read back, kill and relaunch."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lightning_depth.ablation.probe import sweep_seconds
from tests.helpers.cli import CONFIGS, ROOT, cli, cli_in_process
from tests.helpers.wandb_records import connected_to_a_running_service, offline_runs, read_run, service_log


def _experiment(tmp_path: Path, ablation: dict, **trainer: object) -> Path:
    """The tiny ResNet config plus an ablation section, written where the test can edit it."""
    config = yaml.safe_load((CONFIGS / "tiny_resnet.yaml").read_text())
    config["trainer"].update(trainer)
    config["ablation"] = ablation
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


PREACT = {"name": "preact", "design": "factorial", "factors": {"model.net.init_args.preact": [False, True]},
          "baseline": {"model.net.init_args.preact": False}, "seeds": [0, 1]}


def _results(ablation_dir: Path) -> dict[str, dict]:
    out = {}
    for trial in sorted(p for p in ablation_dir.iterdir() if (p / "trial.json").is_file()):
        metrics = json.loads((trial / "result.json").read_text())["metrics"]
        out[trial.name] = {k: v for k, v in metrics.items() if "samples_per_sec" not in k}
    return out


def _states(ablation_dir: Path) -> dict[str, str]:
    return {p.parent.name: json.loads(p.read_text())["state"] for p in ablation_dir.glob("*/state.json")}


def _logged_losses(trial: Path) -> list[float]:
    """Every train/loss value the trial's CSV logger wrote, in order."""
    with open(next(trial.glob("csv/version_*/metrics.csv")), newline="") as f:
        return [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"  # a zombie has ended
    except (FileNotFoundError, IndexError):
        return True


@pytest.mark.slow
def test_an_ablation_trains_every_arm_and_seed_reports_and_a_rerun_trains_nothing(tmp_path):
    experiment = _experiment(tmp_path, PREACT, max_epochs=2)
    root = tmp_path / "runs"
    first = cli("fit", "--config", str(experiment), "--trainer.default_root_dir", str(root))
    ablation = root / "preact"

    manifest = json.loads((ablation / "ablation.json").read_text())
    assert len(manifest["trials"]) == 4 and manifest["baseline"] == "preact=false"
    assert set(_states(ablation).values()) == {"done"}
    for trial_id in manifest["trials"]:
        trial = ablation / trial_id
        config = yaml.safe_load((trial / "config.yaml").read_text())
        info = json.loads((trial / "trial.json").read_text())
        assert config["seed_everything"] == info["seed"]
        assert config["model"]["net"]["init_args"]["preact"] == info["overrides"]["model.net.init_args.preact"]
        assert "ablation" not in config or config["ablation"] is None

        # One W&B run per trial: group = ablation, name = arm and seed, factors as config keys and tags.
        (wandb_file,) = offline_runs(trial)
        run = read_run(wandb_file)
        assert run.group == "preact" and run.job_type == "ablation"
        assert run.name == f"{info['arm']}-s{info['seed']}"
        assert f"preact={'true' if info['overrides']['model.net.init_args.preact'] else 'false'}" in run.tags
        assert run.config["preact"] == info["overrides"]["model.net.init_args.preact"]
        assert run.config["seed"] == info["seed"]
        # Its own run, finished, with every step, though every trial logged through the launcher's W&B service.
        assert run.run_id == (trial / "wandb_id").read_text().strip() and run.exit_code == 0
        assert [row["train/loss"] for row in run.history if "train/loss" in row] == \
            pytest.approx(_logged_losses(trial))
        assert connected_to_a_running_service(wandb_file)
    services = {service_log(f) for t in manifest["trials"] for f in offline_runs(ablation / t)}
    assert len(services) == 1, "one W&B service for the whole sweep"
    assert "forks of a fork server" in first.stderr and "start-up" in first.stderr

    table = first.stdout
    assert "preact=false (baseline)" in table and "preact=true" in table and "±" in table
    assert list(ablation.glob("*.png")), "learning curves are written next to the results"

    before = {p: p.stat().st_mtime_ns for p in ablation.glob("*/result.json")}
    second = cli("fit", "--config", str(experiment), "--trainer.default_root_dir", str(root))
    assert "4 done, 0 to run" in second.stderr
    assert {p: p.stat().st_mtime_ns for p in ablation.glob("*/result.json")} == before
    assert second.stdout == first.stdout

    compare = cli("compare", str(ablation), "--format", "json")
    report = json.loads(compare.stdout)
    assert report["baseline"] == "preact=false"
    assert [a["n"] for a in report["arms"]] == [2, 2]


@pytest.mark.slow
def test_one_failing_trial_does_not_stop_the_others_and_the_exit_code_says_so(tmp_path):
    spec = {"name": "lr", "design": "list", "seeds": [0],
            "arms": {"good": {"model.optimizer.init_args.lr": 0.05},
                     "broken": {"model.optimizer.init_args.lr": -1.0}},  # SGD refuses it when training starts
            "baseline": "good"}
    experiment = _experiment(tmp_path, spec, max_epochs=1)
    root = tmp_path / "runs"
    proc = cli("fit", "--config", str(experiment), "--trainer.default_root_dir", str(root), check=False)
    assert proc.returncode == 1
    states = _states(root / "lr")
    assert sorted(states.values()) == ["done", "failed"]
    failed = next(p for p in (root / "lr").glob("broken*/state.json"))
    assert "learning rate" in json.loads(failed.read_text())["reason"].lower()

    # A relaunch leaves the failed trial alone unless asked to retry it.
    again = cli("fit", "--config", str(experiment), "--trainer.default_root_dir", str(root), check=False)
    assert "1 failed before: pass --retry-failed" in again.stderr
    status = cli("status", str(root / "lr"))
    assert "failed" in status.stdout and "done" in status.stdout


@pytest.mark.slow
def test_a_killed_sweep_resumes_and_ends_exactly_like_an_uninterrupted_one(tmp_path):
    spec = {**PREACT, "seeds": [0]}
    experiment = _experiment(tmp_path, spec, max_epochs=3)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # Uninterrupted, each trial a fresh interpreter with its own W&B service (as on SLURM); then forked.
    plain = cli("fit", "--config", str(experiment), "--trainer.default_root_dir", str(straight),
                "--fork-server", "false")
    assert "a fresh interpreter per trial" in plain.stderr
    assert not any(connected_to_a_running_service(f) for f in offline_runs(straight / "preact"))

    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "lightning_depth", "fit", "--config", str(experiment),
           "--trainer.default_root_dir", str(killed)]
    sweep = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    first_done = None
    while time.time() < deadline and sweep.poll() is None:
        states = _states(killed / "preact") if (killed / "preact").exists() else {}
        done = [t for t, s in states.items() if s == "done"]
        second_started = [t for t, s in states.items() if s == "running" and t not in done]
        if done and second_started and list((killed / "preact" / second_started[0] / "checkpoints").glob("*.ckpt")):
            first_done = done[0]
            break
        time.sleep(0.05)
    assert sweep.poll() is None and first_done, "the sweep finished before it could be interrupted"
    trial_pid = json.loads((killed / "preact" / second_started[0] / "state.json").read_text())["pid"]
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    deadline = time.monotonic() + 30
    while not _gone(trial_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(trial_pid), "a trial dies with its launcher"
    done_mtime = (killed / "preact" / first_done / "result.json").stat().st_mtime_ns
    # The finished trial's W&B run was complete on disk before it counted as done, whatever the service did next.
    (done_run,) = offline_runs(killed / "preact" / first_done)
    finished = read_run(done_run)
    assert finished.exit_code == 0
    assert [r["train/loss"] for r in finished.history if "train/loss" in r] == \
        pytest.approx(_logged_losses(killed / "preact" / first_done))

    relaunch = cli("fit", "--config", str(experiment), "--trainer.default_root_dir", str(killed))
    assert "1 done, 1 to run" in relaunch.stderr
    assert (killed / "preact" / first_done / "result.json").stat().st_mtime_ns == done_mtime, "done is never redone"
    # Trial ids are content-addressed, so both sweeps name the same trials; their results are identical: a forked
    # trial trains exactly as a fresh interpreter does.
    assert _results(straight / "preact") == _results(killed / "preact")


def test_the_dry_run_estimate_adds_each_trials_start_up_and_starts_trials_as_slots_free_up():
    startup, trials = {"per_trial_s": 2.0, "once_s": 3.0}, [10.0, 10.0, 20.0, 20.0]
    assert sweep_seconds(trials, startup, slots=1) == 3 + 60 + 4 * 2
    # Two slots: the first two trials start at once, the last two as those end.
    assert sweep_seconds(trials, startup, slots=2) == 3 + (10 + 2) + (20 + 2)
    assert sweep_seconds([30.0, 10.0, 10.0], startup, slots=2) == 3 + (30 + 2)  # the short ones run beside the long
    assert sweep_seconds(trials, {"error": "the data is not there"}, slots=1) == 60


def test_dry_run_prints_the_matrix_and_trains_nothing(tmp_path):
    experiment = _experiment(tmp_path, PREACT, max_epochs=2)
    root = tmp_path / "runs"
    proc = cli("fit", "--config", str(experiment), "--trainer.default_root_dir", str(root), "--dry-run", "true")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("preact-")]
    assert len(lines) == 4
    assert "preact=false (baseline)" in proc.stdout and "est. time" in proc.stdout
    assert "Start-up per trial:" in proc.stdout and "measured" in proc.stdout and "With --parallel 2" in proc.stdout
    assert not list(root.rglob("*.ckpt")) and not list(root.rglob("result.json"))


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"factors": {"model.net.init_args.preactivation": [False, True]}}, "preactivation"),
        ({"factors": {"model.net.init_args.preact": []}}, "empty"),
        ({"seeds": [0, 1.5]}, "seeds"),
        ({"design": "grid"}, "design"),
        ({"factors": {"model.net.init_args.depth": [8, 21]}, "baseline": None}, "depth=21"),
    ],
    ids=["unknown-factor-key", "empty-values", "non-integer-seed", "unknown-design", "invalid-arm"],
)
def test_bad_ablation_specs_fail_before_any_trial_starts(capfd, tmp_path, change, needle):
    spec = {**PREACT, **change}
    spec = {k: v for k, v in spec.items() if v is not None}
    experiment = _experiment(tmp_path, spec)
    root = tmp_path / "runs"
    proc = cli_in_process(capfd, "fit", "--config", str(experiment), "--trainer.default_root_dir", str(root))
    assert proc.returncode == 2
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert needle in error
    assert not root.exists() or not list(root.rglob("config.yaml"))
