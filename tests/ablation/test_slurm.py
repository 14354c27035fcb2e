"""SLURM submission: options and resources are checked before sbatch; the array job runs every trial on a real cluster.

The cluster tests start munged, slurmctld and slurmd on this machine (tests/helpers/slurm_cluster.py) and submit exactly
what users submit. They skip only when that cluster cannot start here, and say why.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from lightning_depth.ablation import slurm, slurm_queue
from lightning_depth.ablation.slurm import Resources, SlurmOptions, derive_resources, render_script, submit
from lightning_depth.commands import trial
from lightning_depth.errors import UsageError
from tests.helpers.cli import cli
from tests.helpers.wandb_records import offline_runs, read_run

REPO = Path(__file__).resolve().parents[2]
CPU1 = {"accelerator": "cpu", "devices": 1, "num_nodes": 1}
# Every character a shell would act on, and SLURM's own %A, in one path component.
NASTY = "it's \"q\" $(touch pwned) `touch pwned2` ; & | $HOME %A n"


# ---------------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize("kwargs, message", [
    ({"time": "4h"}, "slurm.time='4h'"),
    ({"time": "04:00:00; rm -rf ~"}, "slurm.time"),
    ({"mem": "lots"}, "slurm.mem='lots'"),
    ({"partition": "gpu a100"}, "slurm.partition"),
    ({"account": "x\n#SBATCH --uid=0"}, "slurm.account"),
    ({"cpus_per_task": 0}, "slurm.cpus_per_task=0"),
    ({"cpus_per_task": True}, "slurm.cpus_per_task=True"),
    ({"gpus_per_node": -1}, "slurm.gpus_per_node=-1"),
    ({"array_throttle": 0}, "slurm.array_throttle=0"),
    ({"signal_lead_s": 0}, "slurm.signal_lead_s=0"),
    ({"max_requeues": -1}, "slurm.max_requeues=-1"),
    ({"extra_sbatch": "--constraint=a100"}, "slurm.extra_sbatch: expected a list"),
    ({"extra_sbatch": ["--constraint=a100\nrm -rf ~"]}, "without line breaks"),
    ({"extra_sbatch": ["constraint=a100"]}, "not an sbatch option"),
    ({"extra_sbatch": ["--array=0-9"]}, "set slurm.array_throttle instead"),
    ({"extra_sbatch": ["#SBATCH --ntasks=4"]}, "set trainer.devices"),
    ({"extra_sbatch": ["-N2"]}, "set trainer.num_nodes"),
    ({"extra_sbatch": ["--gres=gpu:2"]}, "set slurm.gpus_per_node"),
    ({"extra_sbatch": ["--output=x.log"]}, "logs always go to <ablation>/slurm/logs"),
    ({"python": ""}, "slurm.python"),
    ({"time": "02:00", "signal_lead_s": 120}, "signal_lead_s=120 is not shorter than slurm.time=02:00"),
])
def test_bad_options_are_one_line_errors(kwargs, message):
    with pytest.raises(UsageError) as err:
        SlurmOptions(**kwargs)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_good_options_are_kept():
    options = SlurmOptions(partition="gpu", account="proj-1", qos="high", time="2-00:00:00", cpus_per_task=8,
                           mem="64G", array_throttle=4, extra_sbatch=["#SBATCH --constraint=a100", "--gres=nvme:1"])
    assert options.extra_sbatch == ["--constraint=a100", "--gres=nvme:1"]
    assert options.signal_lead_s == 120 and options.max_requeues == 3


@pytest.mark.parametrize("time, seconds", [
    ("90", 5400), ("10:30", 630), ("04:00:00", 14400), ("2-00", 172800), ("1-02:03", 93780),
    ("1-02:03:04", 93784), ("UNLIMITED", None), (None, None),
])
def test_slurm_time_formats(time, seconds):
    assert slurm._seconds(time) == seconds


def test_options_from_the_ablation_file_refuse_unknown_keys():
    assert SlurmOptions.from_mapping({"time": "01:00:00"}).time == "01:00:00"
    assert SlurmOptions.from_mapping(None) == SlurmOptions()
    with pytest.raises(UsageError, match="unknown option.*gpus.*known: partition"):
        SlurmOptions.from_mapping({"gpus": 2})


# -------------------------------------------------------------------------------------------------- resources


@pytest.mark.parametrize("trainer_cfg, options, expected", [
    (CPU1, {}, Resources(1, 1, 0)),
    ({"accelerator": "cpu", "devices": 2, "strategy": "ddp"}, {}, Resources(1, 2, 0)),
    ({"accelerator": "cpu", "devices": "2"}, {}, Resources(1, 2, 0)),
    ({"accelerator": "gpu", "devices": 4, "num_nodes": 2}, {}, Resources(2, 4, 4)),
    ({"accelerator": "cuda", "devices": 1}, {}, Resources(1, 1, 1)),
    ({"accelerator": "gpu", "devices": 2}, {"gpus_per_node": 8}, Resources(1, 2, 8)),
    ({"accelerator": "auto", "devices": 1}, {}, Resources(1, 1, 0)),
    ({"accelerator": "auto", "devices": 2}, {"gpus_per_node": 2}, Resources(1, 2, 2)),
    ({"devices": 1, "strategy": {"class_path": "lightning.pytorch.strategies.DDPStrategy"}}, {}, Resources(1, 1, 0)),
])
def test_resources_follow_the_trainer(trainer_cfg, options, expected):
    assert derive_resources(trainer_cfg, SlurmOptions(**options)) == expected


@pytest.mark.parametrize("trainer_cfg, options, message", [
    ({"accelerator": "cpu"}, {}, "trainer.devices='auto' is not a number of devices"),
    ({"accelerator": "gpu", "devices": -1}, {}, "trainer.devices=-1"),
    ({"accelerator": "gpu", "devices": [0, 1]}, {}, "set trainer.devices to a count (e.g. 2)"),
    ({"accelerator": "gpu", "devices": "0,1"}, {}, "picks device indices"),
    ({"accelerator": "cpu", "devices": 1, "num_nodes": 0}, {}, "trainer.num_nodes=0"),
    ({"accelerator": "cpu", "devices": 1}, {"gpus_per_node": 1}, "trainer.accelerator=cpu"),
    ({"accelerator": "gpu", "devices": 4}, {"gpus_per_node": 2}, "fewer than trainer.devices=4"),
    ({"accelerator": "tpu", "devices": 1}, {}, "not supported under SLURM"),
    ({"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"}, {}, "use trainer.strategy ddp"),
    ({"accelerator": "cpu", "devices": 2, "strategy": "ddp_fork"}, {}, "use trainer.strategy ddp"),
    ({"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn_find_unused_parameters_true"}, {}, "srun starts"),
    ({"devices": 2, "strategy": {"class_path": "DDPStrategy", "init_args": {"start_method": "spawn"}}}, {},
     "start_method='spawn'"),
])
def test_inconsistent_resources_are_refused_before_submitting(trainer_cfg, options, message):
    with pytest.raises(UsageError) as err:
        derive_resources(trainer_cfg, SlurmOptions(**options))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------------- script


def sbatch_lines(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_script_asks_for_what_the_trial_needs(tmp_path):
    options = SlurmOptions(partition="gpu", account="proj", qos="high", time="04:00:00", cpus_per_task=6, mem="32G",
                           array_throttle=2, signal_lead_s=300, extra_sbatch=["--constraint=a100"])
    trials = [tmp_path / f"t{i}" for i in range(5)]
    script = render_script(tmp_path, trials, options, {"accelerator": "gpu", "devices": 4, "num_nodes": 2})
    lines = sbatch_lines(script)
    for expected in ("--array=0-4%2", "--requeue", "--signal=USR1@300", "--nodes=2", "--ntasks-per-node=4",
                     "--gpus-per-node=4", "--cpus-per-task=6", "--mem=32G", "--time=04:00:00", "--partition=gpu",
                     "--account=proj", "--qos=high", "--constraint=a100", "--open-mode=append",
                     f'--output="{tmp_path}/slurm/logs/%A_%a.out"'):
        assert expected in lines
    assert f"export {trial.MAX_REQUEUES_ENV}=3" in script
    assert 'srun --kill-on-bad-exit=1 ' in script and '-m lightning_depth trial "$TRIAL_DIR"' in script
    # sbatch stops reading #SBATCH lines at the first command, so they must all come first.
    first_command = next(i for i, line in enumerate(script.splitlines()) if line and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(script.splitlines()) if line.startswith("#SBATCH"))
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_script_without_options_leaves_the_cluster_defaults(tmp_path):
    lines = sbatch_lines(render_script(tmp_path, [tmp_path / "t"], SlurmOptions(), CPU1))
    flags = {line.split("=")[0] for line in lines}
    assert flags == {"--job-name", "--array", "--output", "--open-mode", "--chdir", "--requeue", "--signal",
                     "--nodes", "--ntasks-per-node"}


def test_setup_lines_run_as_written_before_training(tmp_path):
    setup = ["module load cuda/12.1", "source ~/venvs/ld/bin/activate", "echo {{PYTHON}}"]
    script = render_script(tmp_path, [tmp_path / "t"], SlurmOptions(setup=setup, python="python3"), CPU1)
    body = script.splitlines()
    positions = [body.index(line) for line in setup]
    assert positions == sorted(positions) and positions[-1] < body.index("set -euo pipefail")
    assert "exec srun --kill-on-bad-exit=1 python3 -m lightning_depth" in script


def test_paths_reach_the_job_unchanged(tmp_path):
    """Paths are quoted for bash and for sbatch; a configuration value never appears in the script at all."""
    ablation_dir = tmp_path / NASTY
    python = str(tmp_path / "my python" / "bin" / "python$(x)")
    script = render_script(ablation_dir, [ablation_dir / "t0"], SlurmOptions(python=python), CPU1)
    # Run the script's own assignments in bash: the values must come back byte for byte, and nothing else runs.
    assignments = [line for line in script.splitlines() if line.startswith("mapfile")]
    trials_path = shlex.split(assignments[0].split("<", 1)[1])[0]
    assert trials_path == str(ablation_dir / "slurm" / "trials-1.txt")
    srun = next(line for line in script.splitlines() if line.startswith("exec srun"))
    assert shlex.split(srun)[3] == python
    out = subprocess.run(["bash", "-c", srun.replace("exec srun --kill-on-bad-exit=1", "printf '%s\\n'")],
                         cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "TRIAL_DIR": "x y"})
    assert out.stdout.splitlines() == [python, "-m", "lightning_depth", "trial", "x y"]
    assert not list(tmp_path.rglob("pwned*"))


def test_paths_sbatch_cannot_carry_are_refused(tmp_path):
    with pytest.raises(UsageError, match="line breaks or backslashes"):
        render_script(tmp_path / "a\nb", [tmp_path / "t"], SlurmOptions(), CPU1)


def test_default_template_ships_with_the_package_and_matches_the_repository_copy():
    shipped = slurm.default_template().read_text()
    assert shipped == (REPO / "slurm" / "ablation.sbatch").read_text()
    for key in slurm.PLACEHOLDERS:
        assert "{{" + key + "}}" in shipped


def test_own_template(tmp_path):
    template = tmp_path / "site.sbatch"
    template.write_text("#!/bin/bash\n{{SBATCH}}\n#SBATCH --reservation=ml\nmapfile -t T < {{TRIALS}}\n"
                        "export LIGHTNING_DEPTH_MAX_REQUEUES={{MAX_REQUEUES}}\n"
                        "srun {{PYTHON}} -m lightning_depth trial \"${T[$SLURM_ARRAY_TASK_ID]}\"\n")
    script = render_script(tmp_path, [tmp_path / "t"], SlurmOptions(template=template), CPU1)
    assert "--reservation=ml" in script and "{{" not in script
    template.write_text("#!/bin/bash\n{{SBATCH}}\nsrun {{PYTHON}} {{TRIAL}}\n")
    with pytest.raises(UsageError, match=r"missing placeholder\(s\) \{\{TRIALS\}\}, \{\{MAX_REQUEUES\}\}; "
                                         r"start from .*lightning_depth/ablation/templates/ablation.sbatch"):
        render_script(tmp_path, [tmp_path / "t"], SlurmOptions(template=template), CPU1)
    with pytest.raises(UsageError, match="cannot read"):
        render_script(tmp_path, [tmp_path / "t"], SlurmOptions(template=tmp_path / "nope"), CPU1)


def test_nothing_to_submit(tmp_path):
    with pytest.raises(UsageError, match="nothing to submit"):
        render_script(tmp_path, [], SlurmOptions(), CPU1)


def test_submit_without_sbatch_says_where_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UsageError, match="sbatch not found: submit from a SLURM login node"):
        submit(tmp_path, [tmp_path / "t"], SlurmOptions(), CPU1)
    assert not (tmp_path / "slurm").exists()


def test_trials_sized_differently_from_the_job_are_refused(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "config.yaml").write_text("trainer:\n  devices: 2\n  accelerator: cpu\n")
    with pytest.raises(UsageError, match="t sets trainer.devices=2 but the array job is sized for 1"):
        submit(tmp_path, [tmp_path / "t"], SlurmOptions(), CPU1)


def test_queue_states_without_squeue_is_empty(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert slurm_queue.queue_states(["1"]) == {}


# ---------------------------------------------------------------------------------------------------- cluster


def stand_in_python(tmp_path: Path, seconds: float = 0) -> str:
    """An interpreter stand-in that records what the array task ran, so the submission is tested on its own."""
    path = tmp_path / "bin" / "python"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(f"""\
        #!/usr/bin/env python3
        import json, os, sys, time
        start = time.time()
        time.sleep({seconds})
        trial_dir = sys.argv[-1]
        keys = ("SLURM_ARRAY_TASK_ID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_RESTART_COUNT",
                "{trial.MAX_REQUEUES_ENV}", "WANDB_MODE")
        record = dict(argv=sys.argv[1:], cwd=os.getcwd(), start=start, end=time.time(),
                      env={{k: os.environ.get(k) for k in keys}})
        with open(os.path.join(trial_dir, "ran-%s.json" % os.environ["SLURM_PROCID"]), "w") as f:
            json.dump(record, f)
        """))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def make_trials(root: Path, names: list[str]) -> list[Path]:
    dirs = [root / name for name in names]
    for d in dirs:
        d.mkdir(parents=True)
    return dirs


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_cluster_is_up(cluster):
    out = cluster.run("sinfo", "-h", "-N", "-o", "%N %T %c").stdout.split()
    assert out == [cluster.node, "idle", str(cluster.cpus)]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_array_job_runs_each_trial_once_with_paths_unchanged(cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ablation_dir = tmp_path / "runs" / NASTY
    trials = make_trials(ablation_dir, ["a", "b c", "d'e$(f)"])
    python = stand_in_python(tmp_path)
    job = submit(ablation_dir, trials, SlurmOptions(python=python, max_requeues=5), CPU1)
    assert job.isdigit()
    assert (ablation_dir / "slurm" / "trials-1.txt").read_text().splitlines() == [str(t) for t in trials]
    states = cluster.wait_job(job, timeout=120)
    assert states == {f"{job}_{i}": "COMPLETED" for i in range(3)}
    assert slurm_queue.queue_states([job]) == states
    for index, trial_dir in enumerate(trials):
        record = json.loads((trial_dir / "ran-0.json").read_text())
        assert record["argv"] == ["-m", "lightning_depth", "trial", str(trial_dir)]
        assert record["cwd"] == str(tmp_path)
        assert record["env"]["SLURM_ARRAY_TASK_ID"] == str(index)
        assert record["env"][trial.MAX_REQUEUES_ENV] == "5"
        assert record["env"]["WANDB_MODE"] == "offline"
        log = ablation_dir / "slurm" / "logs" / f"{job}_{index}.out"
        assert f"attempt 1 on {cluster.node}: {trial_dir}" in log.read_text()
    assert not list(tmp_path.rglob("pwned*"))
    assert slurm_queue.submitted_jobs(ablation_dir) == [job]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_throttle_and_no_second_submission_while_queued(cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trials = make_trials(tmp_path / "abl", ["t0", "t1", "t2"])
    options = SlurmOptions(python=stand_in_python(tmp_path, seconds=2), array_throttle=1)
    job = submit(tmp_path / "abl", trials, options, CPU1)
    with pytest.raises(UsageError, match=f"job {job} of this ablation is still queued.*scancel {job}"):
        submit(tmp_path / "abl", trials, options, CPU1)
    cluster.wait_job(job, timeout=120)
    spans = sorted((r["start"], r["end"]) for r in (json.loads((t / "ran-0.json").read_text()) for t in trials))
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), f"overlapping: {spans}"
    # Once the job has left the queue, the next submission goes through.
    assert submit(tmp_path / "abl", trials[:1], options, CPU1) != job


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_tasks_per_node_come_from_trainer_devices(cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trials = make_trials(tmp_path / "abl", ["ddp"])
    job = submit(tmp_path / "abl", trials, SlurmOptions(python=stand_in_python(tmp_path)),
                 {"accelerator": "cpu", "devices": 2, "strategy": "ddp"})
    assert cluster.wait_job(job, timeout=120) == {f"{job}_0": "COMPLETED"}
    records = [json.loads((trials[0] / f"ran-{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["env"]["SLURM_NTASKS"] for r in records] == ["2", "2"]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_sbatch_refusal_is_one_line(cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trials = make_trials(tmp_path / "abl", ["t"])
    with pytest.raises(UsageError, match="sbatch refused .*ablation-1.sbatch: .*") as err:
        submit(tmp_path / "abl", trials, SlurmOptions(python="python3", partition="nosuchpartition"), CPU1)
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "abl" / "slurm").glob("*-1.*")), "a refused script and its trial list are removed"


# ------------------------------------------------------------------------------------------------- end to end
# The real thing: `fit --launcher slurm` plans an ablation and submits it; every array task runs
# `srun python -m lightning_depth trial DIR` on the cluster.

TINY = REPO / "tests" / "configs" / "tiny_resnet.yaml"
PREACT = "model.net.init_args.preact"
# Shell syntax in a W&B note and in every path the job touches: it must reach the trial as written.
NOTE = "a note; with 'quotes' \"both\" $(touch pwned) `touch pwned2` $HOME & | > out"


def write_config(path: Path, name: str, seeds: list[int], preact: list[bool], **trainer: object) -> Path:
    """The tiny ResNet config plus an ablation: section and a W&B note; trainer keys override the tiny ones."""
    config = yaml.safe_load(TINY.read_text())
    config["trainer"].update(trainer)
    config["trainer"]["logger"] = [
        {"class_path": "lightning_depth.loggers.WandbLogger", "init_args": {"notes": NOTE}},
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": ".", "name": "csv"}},
    ]
    config["ablation"] = {"name": name, "factors": {PREACT: preact}, "seeds": seeds}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def fit_on_slurm(config: Path, root: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m lightning_depth fit --config CONFIG --launcher slurm``, as a user types it on a login node."""
    return cli("fit", "--config", str(config), "--trainer.default_root_dir", str(root), "--launcher", "slurm", *args,
               cwd=cwd, timeout=300)


def job_id(proc: subprocess.CompletedProcess) -> str:
    match = re.search(r"submitted array job (\d+)", proc.stdout + proc.stderr)
    assert match, f"no job id in:\n{proc.stdout}\n{proc.stderr}"
    return match.group(1)


def status(ablation_dir: Path) -> dict:
    return json.loads(cli("status", str(ablation_dir), "--format", "json", timeout=120).stdout)


def slurm_logs(ablation_dir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}"
                     for p in sorted((ablation_dir / "slurm" / "logs").glob("*.out")))


def wait_done(cluster, job: str, ablation_dir: Path, timeout: float) -> dict[str, str]:
    states = cluster.wait_job(job, timeout=timeout)
    assert set(states.values()) == {"COMPLETED"}, f"{states}\n{slurm_logs(ablation_dir)}"
    return states


@pytest.fixture(scope="session")
def sweep(cluster, tmp_path_factory):
    """A two-arm ablation submitted from, and written under, directories full of shell syntax, once per session (the
    tests that share it may run in any order: ``status`` is what it was when the job ended)."""
    home = tmp_path_factory.mktemp("sweep") / NASTY
    home.mkdir()
    config = write_config(home / "ablation.yaml", "sweep", seeds=[0], preact=[False, True])
    root = home / "runs"
    start = time.monotonic()
    proc = fit_on_slurm(config, root, home)
    job = job_id(proc)
    print(cluster.run("squeue", "-r", "-j", job).stdout)
    ablation_dir = root / "sweep"
    states = wait_done(cluster, job, ablation_dir, timeout=600)
    print(f"sweep: {len(states)} trials in {time.monotonic() - start:.0f} s\n{proc.stdout}")
    return {"home": home, "config": config, "root": root, "dir": ablation_dir, "job": job, "submit": proc,
            "status": status(ablation_dir), "trials": sorted(p.parent for p in ablation_dir.glob("*/config.yaml"))}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sweep_runs_every_trial_to_done(sweep):
    ablation_dir, job = sweep["dir"], sweep["job"]
    out = sweep["submit"].stdout
    assert f"squeue -j {job}" in out and "lightning_depth status" in out and f"{job}_<task>.out" in out
    report = sweep["status"]
    assert report["totals"]["done"] == 2, report
    for row in report["trials"]:
        assert row["attempts"] == 1 and row["slurm_job"].startswith(f"{job}_"), row
        result = json.loads((ablation_dir / row["id"] / "result.json").read_text())
        assert result["metrics"]["val/acc1"]["final"] > 0
    trials = (ablation_dir / "slurm" / "trials-1.txt").read_text().splitlines()
    assert sorted(Path(t).name for t in trials) == sorted(row["id"] for row in report["trials"])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_config_values_reach_the_trial_unchanged(sweep):
    """The running trial logs its resolved config; shell syntax in paths and values arrives byte for byte."""
    for trial_dir in sweep["trials"]:
        hparams = yaml.safe_load(next(trial_dir.glob("csv/version_*/hparams.yaml")).read_text())
        assert hparams["trainer.default_root_dir"] == str(trial_dir)
        wandb_args = next(lg["init_args"] for lg in hparams["trainer.logger"] if "Wandb" in lg["class_path"])
        assert wandb_args["notes"] == NOTE
    assert not list(sweep["home"].parent.rglob("pwned*"))
    assert not (sweep["home"] / "out").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_resubmission_skips_done_trials(cluster, sweep):
    """A third seed added later: only its two trials are submitted; the first two are not trained again."""
    ablation_dir, home = sweep["dir"], sweep["home"]
    done_before = {p.parent.name: p.stat().st_mtime_ns for p in ablation_dir.glob("*/result.json")}
    config = write_config(home / "ablation.yaml", "sweep", seeds=[0, 1], preact=[False, True])
    job = job_id(fit_on_slurm(config, sweep["root"], home))
    trials = [Path(t) for t in (ablation_dir / "slurm" / "trials-2.txt").read_text().splitlines()]
    assert len(trials) == 2 and not {t.name for t in trials} & set(done_before)
    wait_done(cluster, job, ablation_dir, timeout=600)
    assert status(ablation_dir)["totals"]["done"] == 4
    assert {n: (ablation_dir / n / "result.json").stat().st_mtime_ns for n in done_before} == done_before
    again = fit_on_slurm(config, sweep["root"], home)
    assert "nothing to submit" in again.stderr + again.stdout
    assert slurm_queue.submitted_jobs(ablation_dir) == [sweep["job"], job]


def wait_for_steps(trial_dir: Path, steps: int, timeout: float, logs: Path) -> None:
    """Until the trial's CSV log (flushed every step) holds ``steps`` training steps."""
    deadline = time.monotonic() + timeout
    log = trial_dir / "csv" / "version_0" / "metrics.csv"
    while True:
        assert time.monotonic() < deadline, f"not {steps} steps trained yet\n{slurm_logs(logs)}"
        assert not (trial_dir / "result.json").exists(), "the trial finished before it was signalled"
        if log.exists() and sum(1 for line in log.read_text().splitlines()[1:] if line.split(",")[0]) >= steps:
            return
        time.sleep(0.02)


def trained_steps(trial_dir: Path) -> list[int]:
    """The step of every training row in every W&B segment of a trial, read back from its .wandb files."""
    return sorted(int(row["trainer/global_step"]) for path in offline_runs(trial_dir)
                  for row in read_run(path).history if "train/loss" in row)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_usr1_in_the_first_epoch_requeues_and_continues_that_epoch_bit_for_bit(cluster, tmp_path, monkeypatch):
    """scancel --signal=USR1 before the first epoch ends: checkpoint at the next batch, W&B flushed and finished,
    requeue, resume mid-epoch. The weights equal an unsignalled run's bit for bit, and the W&B segments together
    hold every step once."""
    import torch

    monkeypatch.chdir(tmp_path)
    steps_per_epoch = 16
    config = write_config(tmp_path / "usr1.yaml", "usr1", seeds=[0], preact=[False], max_epochs=2,
                          limit_train_batches=steps_per_epoch)
    data = yaml.safe_load(config.read_text())
    data["data"]["init_args"].update(image_size=32, augment=True)  # steps of tens of ms, random crops
    data["trainer"]["logger"][1]["init_args"]["flush_logs_every_n_steps"] = 1  # the test watches the CSV log
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    reference = job_id(fit_on_slurm(config, tmp_path / "reference", tmp_path))
    signalled = job_id(fit_on_slurm(config, tmp_path / "signalled", tmp_path))
    ablation_dir = tmp_path / "signalled" / "usr1"
    trial_dir = next(p.parent for p in ablation_dir.glob("*/config.yaml"))
    wait_for_steps(trial_dir, 3, timeout=400, logs=ablation_dir)
    cluster.run("scancel", "--signal=USR1", f"{signalled}_0")
    wait_done(cluster, signalled, ablation_dir, timeout=600)
    wait_done(cluster, reference, tmp_path / "reference" / "usr1", timeout=600)

    log = slurm_logs(ablation_dir)
    assert "attempt 1 on" in log and "attempt 2 on" in log, log
    assert "signal received: checkpoint written to" in log and "resuming from" in log, log
    resumed_from = re.search(r"resuming from \S*preempted-step0*(\d+)\.ckpt", log)
    assert resumed_from and 0 < int(resumed_from[1]) < steps_per_epoch, log  # inside the first epoch
    assert "not resumable" not in log, log
    state = json.loads((trial_dir / "state.json").read_text())
    assert state["state"] == "done" and state["attempts"] == 2, state
    result = json.loads((trial_dir / "result.json").read_text())
    ref_dir = tmp_path / "reference" / "usr1" / trial_dir.name
    expected = json.loads((ref_dir / "result.json").read_text())
    learnt = [k for k in expected["metrics"] if not k.endswith("samples_per_sec")]  # throughput is wall clock
    assert {k: result["metrics"][k] for k in learnt} == {k: expected["metrics"][k] for k in learnt}
    assert (result["epochs"], result["global_step"]) == (expected["epochs"], expected["global_step"])
    a, b = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for d in (ref_dir, trial_dir))
    assert all(torch.equal(a[k], b[k]) for k in a), "resume after USR1 is not bit-exact"

    segments = offline_runs(trial_dir)
    assert len(segments) == 2 and {read_run(p).run_id for p in segments} == {result["wandb_run_id"]}, segments
    assert all(read_run(p).history for p in segments), "a W&B segment lost what it logged"
    assert trained_steps(trial_dir) == list(range(2 * steps_per_epoch)) == trained_steps(ref_dir)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_task_ddp_trial_runs_through_srun(cluster, tmp_path, monkeypatch):
    """devices 2 + ddp on CPU: srun starts both processes and Lightning takes its ranks from SLURM."""
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "ddp.yaml", "ddp", seeds=[0], preact=[False])
    job = job_id(fit_on_slurm(config, tmp_path / "runs", tmp_path, "--trainer.devices", "2",
                              "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"))
    ablation_dir = tmp_path / "runs" / "ddp"
    assert "#SBATCH --ntasks-per-node=2" in (ablation_dir / "slurm" / "ablation-1.sbatch").read_text()
    wait_done(cluster, job, ablation_dir, timeout=600)
    log = slurm_logs(ablation_dir)
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log, log
    # Both processes found SLURM themselves: srun started them, Lightning did not launch the second one.
    assert log.count("SLURM auto-requeueing enabled") == 2, log
    assert status(ablation_dir)["totals"]["done"] == 1
