"""SLURM submission: options and resources are checked before sbatch; the array job runs every trial on a real cluster.

The cluster tests start munged, slurmctld and slurmd on this machine (tests/slurm_cluster.py) and submit exactly
what users submit. They skip only when that cluster cannot start here, and say why.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import slurm_cluster

from lightning_depth.ablation import slurm, trial
from lightning_depth.ablation.slurm import Resources, SlurmOptions, derive_resources, render_script, submit
from lightning_depth.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
CPU1 = {"accelerator": "cpu", "devices": 1, "num_nodes": 1}
# Every character a shell would act on, in one path component.
NASTY = "it's \"q\" $(touch pwned) `touch pwned2` ; & | $HOME %A \\n"
NASTY_NO_BACKSLASH = NASTY.replace("\\", "")


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
    ablation_dir = tmp_path / NASTY_NO_BACKSLASH
    python = str(tmp_path / "my python" / "bin" / "python$(x)")
    script = render_script(ablation_dir, [ablation_dir / "t0"], SlurmOptions(python=python), CPU1)
    # Run the script's own assignments in bash: the values must come back byte for byte, and nothing else runs.
    assignments = [line for line in script.splitlines() if line.startswith("mapfile")]
    trials_path = shlex.split(assignments[0].split("<", 1)[1])[0]
    assert trials_path == str(ablation_dir / "slurm" / "trials.txt")
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
                        "srun {{PYTHON}} -m lightning_depth trial \"${T[$SLURM_ARRAY_TASK_ID]}\"\n")
    script = render_script(tmp_path, [tmp_path / "t"], SlurmOptions(template=template), CPU1)
    assert "--reservation=ml" in script and "{{" not in script
    template.write_text("#!/bin/bash\n{{SBATCH}}\nsrun {{PYTHON}} {{TRIAL}}\n")
    with pytest.raises(UsageError, match=r"missing placeholder\(s\) \{\{TRIALS\}\}"):
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
    assert not (tmp_path / "slurm" / "ablation.sbatch").exists()


def test_trials_sized_differently_from_the_job_are_refused(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "config.yaml").write_text("trainer:\n  devices: 2\n  accelerator: cpu\n")
    with pytest.raises(UsageError, match="t sets trainer.devices=2 but the array job is sized for 1"):
        submit(tmp_path, [tmp_path / "t"], SlurmOptions(), CPU1)


def test_queue_states_without_squeue_is_empty(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert slurm.queue_states(["1"]) == {}


# ---------------------------------------------------------------------------------------------------- cluster


@pytest.fixture(scope="module")
def cluster():
    """A real single-node cluster for this module; SLURM clients find it through SLURM_CONF."""
    try:
        started = slurm_cluster.start()
    except slurm_cluster.ClusterUnavailable as err:
        pytest.skip(f"cannot start a SLURM cluster here: {err}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", str(started.conf))
        # sbatch exports the submitter's environment (--export=ALL): trials log to W&B offline.
        patch.setenv("WANDB_MODE", "offline")
        print(started.run("sinfo").stdout)
        try:
            yield started
        finally:
            started.stop()


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
    ablation_dir = tmp_path / "runs" / NASTY_NO_BACKSLASH
    trials = make_trials(ablation_dir, ["a", "b c", "d'e$(f)"])
    python = stand_in_python(tmp_path)
    job = submit(ablation_dir, trials, SlurmOptions(python=python, max_requeues=5), CPU1)
    assert job.isdigit()
    assert (ablation_dir / "slurm" / "trials.txt").read_text().splitlines() == [str(t) for t in trials]
    states = cluster.wait_job(job, timeout=120)
    assert states == {f"{job}_{i}": "COMPLETED" for i in range(3)}
    assert slurm.queue_states([job]) == states
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
    assert slurm.submitted_jobs(ablation_dir) == [job]


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
    with pytest.raises(UsageError, match="sbatch refused .*ablation.sbatch: .*") as err:
        submit(tmp_path / "abl", trials, SlurmOptions(python="python3", partition="nosuchpartition"), CPU1)
    assert "\n" not in str(err.value)
