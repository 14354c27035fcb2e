"""Submitting an ablation's trials as one SLURM array job: options, resources, the sbatch script, ``squeue`` states.

Each array task runs ``srun <python> -m lightning_depth trial <trial dir>``; the trial reads its own
``config.yaml``, so no configuration value ever reaches a shell. The script is rendered from a template
(``templates/ablation.sbatch`` next to this module, also at ``slurm/ablation.sbatch`` in the repository) whose
``{{...}}`` placeholders are filled here.

Layout under ``<ablation dir>/slurm/``: submission *n* writes ``trials-<n>.txt`` (task *i* runs line *i + 1*) and
``ablation-<n>.sbatch`` (naming that list) before ``sbatch`` runs, and ``jobs.txt`` gains ``<job id> <count>
trials-<n>.txt``. A list is never rewritten, so a task that waits in the queue runs the trial it was submitted for.

The queue is asked before every submission and fails closed: when ``squeue`` is missing, times out or errs while an
earlier job of the ablation may still hold trials, nothing is submitted unless the caller says to go ahead anyway.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

import yaml

from lightning_depth.ablation.slurm_queue import (
    JOBS_FILE,
    check_queue_clear,
    next_submission,
    trial_list,
)
from lightning_depth.atomic import write_atomic
from lightning_depth.errors import UsageError

PLACEHOLDERS = ("SBATCH", "SETUP", "TRIALS", "PYTHON", "MAX_REQUEUES")
# Without MAX_REQUEUES a trial that is preempted on every attempt would requeue itself for ever.
REQUIRED_PLACEHOLDERS = ("SBATCH", "TRIALS", "PYTHON", "MAX_REQUEUES")

_NAME = re.compile(r"[\w.+@:-]+(,[\w.+@:-]+)*")
_TIME = re.compile(r"\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}|UNLIMITED|INFINITE")
_MEM = re.compile(r"\d+[KMGT]?", re.IGNORECASE)
# Strategies that start their own worker processes; under SLURM srun has already started one per task.
_SELF_LAUNCHING = re.compile(r"\w*_(spawn|fork|notebook)(_\w*)?")
# sbatch options this module derives; setting them in extra_sbatch would silently fight the derived value.
_OWNED_FLAGS = {
    **dict.fromkeys(("--array", "-a"), "set slurm.array_throttle instead"),
    **dict.fromkeys(("--output", "-o", "--error", "-e"), "logs always go to <ablation>/slurm/logs"),
    **dict.fromkeys(("--chdir", "-D"), "the job runs in the directory it was submitted from"),
    "--signal": "set slurm.signal_lead_s instead",
    "--no-requeue": "set slurm.max_requeues: 0 instead",
    **dict.fromkeys(("--nodes", "-N"), "set trainer.num_nodes instead"),
    **dict.fromkeys(("--ntasks", "-n", "--ntasks-per-node"), "set trainer.devices (tasks per node) instead"),
    **dict.fromkeys(("--gpus-per-node", "--gpus", "-G", "--gres", "--gpus-per-task"),
                    "set slurm.gpus_per_node instead"),
    **dict.fromkeys(("--partition", "-p"), "set slurm.partition instead"),
    **dict.fromkeys(("--account", "-A"), "set slurm.account instead"),
    **dict.fromkeys(("--qos", "-q"), "set slurm.qos instead"),
    **dict.fromkeys(("--time", "-t"), "set slurm.time instead"),
    **dict.fromkeys(("--cpus-per-task", "-c"), "set slurm.cpus_per_task instead"),
    "--mem": "set slurm.mem instead",
}


@dataclass
class SlurmOptions:
    """How the array job asks for resources; every value is checked when the options are built.

    Args:
        partition: ``--partition``; None = the cluster's default partition.
        account: ``--account`` to charge.
        qos: ``--qos``.
        time: wall-clock limit per trial, in SLURM's formats (``"04:00:00"``, ``"2-00:00:00"``, ``"90"``).
        cpus_per_task: ``--cpus-per-task`` (dataloader workers live here); None = the cluster's default.
        mem: ``--mem`` per node, e.g. ``"16G"``.
        gpus_per_node: ``--gpus-per-node``. None = ``trainer.devices`` when ``trainer.accelerator`` is ``gpu`` or
            ``cuda``, and no GPUs otherwise: with ``auto`` the submitting login node cannot tell what the compute
            nodes have, so set it (or ``accelerator: gpu``) to get GPUs.
        array_throttle: at most this many trials run at once (the array's ``%N``).
        signal_lead_s: seconds before the time limit that SLURM sends USR1, so the trial checkpoints and requeues.
        max_requeues: how many times a trial may requeue itself before it is marked failed.
        extra_sbatch: more ``#SBATCH`` lines, verbatim (``"--constraint=a100"``); options derived here are refused.
        setup: shell lines run before training (``module load cuda``, ``source venv/bin/activate``).
        python: the interpreter on the compute nodes; None = the Python that submits (``sys.executable``).
        template: an sbatch template of your own; None = the one shipped with the package.
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    gpus_per_node: int | None = None
    array_throttle: int | None = None
    signal_lead_s: int = 120
    max_requeues: int = 3
    extra_sbatch: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    python: str | None = None
    template: Path | None = None

    def __post_init__(self) -> None:
        for name in ("partition", "account", "qos"):
            _check_pattern(name, getattr(self, name), _NAME, "a SLURM name without spaces or quotes")
        _check_pattern("time", self.time, _TIME, 'SLURM time like "04:00:00", "2-00:00:00" or "90" (minutes)')
        _check_pattern("mem", self.mem, _MEM, 'a size like "16G" or "4000M"')
        _check_int("cpus_per_task", self.cpus_per_task, 1)
        _check_int("gpus_per_node", self.gpus_per_node, 0)
        _check_int("array_throttle", self.array_throttle, 1)
        _check_int("signal_lead_s", self.signal_lead_s, 1, 65535, optional=False)
        _check_int("max_requeues", self.max_requeues, 0, optional=False)
        limit = _seconds(self.time)
        if limit is not None and self.signal_lead_s >= limit:
            raise UsageError(f"slurm.signal_lead_s={self.signal_lead_s} is not shorter than slurm.time={self.time}: "
                             f"the trial would be told to stop as it starts; lower signal_lead_s")
        for name in ("extra_sbatch", "setup"):
            lines = getattr(self, name)
            if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
                raise UsageError(f"slurm.{name}: expected a list of strings, got {lines!r}")
            if any("\n" in line or "\r" in line for line in lines):
                raise UsageError(f"slurm.{name}: one line per list item, without line breaks")
        self.extra_sbatch = [_extra_flag(line) for line in self.extra_sbatch]
        if self.python is not None and (not isinstance(self.python, str) or not self.python.strip()
                                        or "\n" in self.python):
            raise UsageError(f"slurm.python: expected the path of a Python interpreter, got {self.python!r}")
        if self.template is not None:
            self.template = Path(self.template)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> SlurmOptions:
        """Options from the ablation file's ``slurm:`` section; unknown keys are a one-line error."""
        raw = dict(raw or {})
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise UsageError(f"slurm: unknown option(s) {', '.join(map(str, unknown))}; known: {', '.join(known)}")
        return cls(**raw)


@dataclass(frozen=True)
class Resources:
    """What one array task asks for: Lightning runs one process per device, and srun starts one per task."""

    nodes: int
    ntasks_per_node: int
    gpus_per_node: int


def derive_resources(trainer_cfg: Mapping[str, Any], options: SlurmOptions) -> Resources:
    """Derives nodes, tasks and GPUs from the trial's trainer section; refuses what Lightning cannot run under srun."""
    accelerator = str(trainer_cfg.get("accelerator") or "auto").lower()
    devices = trainer_cfg.get("devices", "auto")
    num_nodes = trainer_cfg.get("num_nodes", 1)
    if isinstance(devices, (list, tuple)) or (isinstance(devices, str) and "," in devices):
        raise UsageError(f"trainer.devices={devices!r} picks device indices, but SLURM assigns the devices: "
                         f"set trainer.devices to a count (e.g. {len(_as_list(devices))})")
    count = _as_count(devices)
    if count is None:
        raise UsageError(f"trainer.devices={devices!r} is not a number of devices: under SLURM set it to the "
                         f"processes per node, e.g. --trainer.devices 1")
    nodes = _as_count(num_nodes)
    if nodes is None:
        raise UsageError(f"trainer.num_nodes={num_nodes!r}: expected a positive number of nodes")
    _check_strategy(trainer_cfg.get("strategy", "auto"))
    gpus = options.gpus_per_node
    if accelerator in ("gpu", "cuda"):
        if gpus is None:
            gpus = count
        elif gpus < count:
            raise UsageError(f"slurm.gpus_per_node={gpus} is fewer than trainer.devices={count}: Lightning runs one "
                             f"process per GPU; set gpus_per_node to {count} or leave it unset")
    elif accelerator == "cpu" and gpus:
        raise UsageError(f"slurm.gpus_per_node={gpus} but trainer.accelerator=cpu: drop gpus_per_node or set "
                         f"trainer.accelerator gpu")
    elif accelerator not in ("cpu", "auto"):
        raise UsageError(f"trainer.accelerator={accelerator!r} is not supported under SLURM; use cpu, gpu or auto")
    return Resources(nodes=nodes, ntasks_per_node=count, gpus_per_node=gpus or 0)


def render_script(ablation_dir: Path, trial_dirs: Sequence[Path], options: SlurmOptions,
                  trainer_cfg: Mapping[str, Any], trials_file: Path | None = None) -> str:
    """The sbatch script for an array over ``trial_dirs``: task i runs line i+1 of ``trials_file`` (by default the
    list of the next submission, ``slurm/trials-<n>.txt``)."""
    if not trial_dirs:
        raise UsageError("nothing to submit: every trial is already done")
    ablation_dir = Path(ablation_dir).absolute()
    trials_file = Path(trials_file or trial_list(ablation_dir, next_submission(ablation_dir))).absolute()
    cwd = Path.cwd()
    for path in (ablation_dir, cwd, *trial_dirs):
        if any(ch in str(path) for ch in "\n\r\\"):
            raise UsageError(f"{str(path)!r}: SLURM cannot carry paths with line breaks or backslashes; rename it")
    res = derive_resources(trainer_cfg, options)
    logs = str(ablation_dir / "slurm" / "logs").replace("%", "%%") + "/%A_%a.out"
    throttle = f"%{options.array_throttle}" if options.array_throttle else ""
    sbatch = [
        f"--job-name={_sbatch_quote('ld-' + ablation_dir.name)}",
        f"--array=0-{len(trial_dirs) - 1}{throttle}",
        f"--output={_sbatch_quote(logs)}",
        # A requeued attempt appends to the same log instead of erasing the one that was preempted.
        "--open-mode=append",
        f"--chdir={_sbatch_quote(str(cwd))}",
        "--requeue",
        f"--signal=USR1@{options.signal_lead_s}",
        f"--nodes={res.nodes}",
        f"--ntasks-per-node={res.ntasks_per_node}",
    ]
    if res.gpus_per_node:
        sbatch.append(f"--gpus-per-node={res.gpus_per_node}")
    for flag, value in (("cpus-per-task", options.cpus_per_task), ("mem", options.mem), ("time", options.time),
                        ("partition", options.partition), ("account", options.account), ("qos", options.qos)):
        if value is not None:
            sbatch.append(f"--{flag}={value}")
    sbatch += options.extra_sbatch
    values = {
        "SBATCH": "\n".join(f"#SBATCH {line}" for line in sbatch),
        "SETUP": "\n".join(options.setup) if options.setup else ":",
        "TRIALS": shlex.quote(str(trials_file)),
        "PYTHON": shlex.quote(options.python or sys.executable),
        "MAX_REQUEUES": str(options.max_requeues),
    }
    # One pass, so a setup line that happens to contain "{{PYTHON}}" stays as written.
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m[1]], _template_text(options.template))


@dataclass(frozen=True)
class Submission:
    """A checked submission, not yet written: the ablation's files stay as they are until :func:`send`."""

    ablation_dir: Path
    trial_dirs: list[Path]
    number: int
    script: str

    @property
    def trials_file(self) -> Path:
        return trial_list(self.ablation_dir, self.number)

    @property
    def script_file(self) -> Path:
        return self.ablation_dir / "slurm" / f"ablation-{self.number}.sbatch"


def prepare(ablation_dir: Path, trial_dirs: Sequence[Path], options: SlurmOptions, trainer_cfg: Mapping[str, Any],
            ignore_queue: bool = False, trial_trainers: Mapping[Path, Mapping[str, Any]] | None = None) -> Submission:
    """Checks everything a submission needs, the queue included, and writes nothing.

    ``trial_trainers`` are the trials' own trainer sections (default: read from their ``config.yaml``).
    """
    ablation_dir = Path(ablation_dir).absolute()
    trial_dirs = [Path(t).absolute() for t in trial_dirs]
    _check_trials_agree(trial_dirs, trainer_cfg, trial_trainers)
    number = next_submission(ablation_dir)
    script = render_script(ablation_dir, trial_dirs, options, trainer_cfg, trial_list(ablation_dir, number))
    if shutil.which("sbatch") is None:
        raise UsageError("sbatch not found: submit from a SLURM login node, or run with --launcher local")
    check_queue_clear(ablation_dir, ignore_queue)
    return Submission(ablation_dir, trial_dirs, number, script)


def send(submission: Submission) -> str:
    """Writes the submission's trial list and script, runs sbatch, records the job; returns the job id."""
    slurm_dir = submission.ablation_dir / "slurm"
    (slurm_dir / "logs").mkdir(parents=True, exist_ok=True)
    write_atomic(submission.trials_file, "".join(f"{t}\n" for t in submission.trial_dirs))
    write_atomic(submission.script_file, submission.script)
    sbatch = shutil.which("sbatch") or "sbatch"
    done = subprocess.run([sbatch, "--parsable", str(submission.script_file)], capture_output=True, text=True)
    if done.returncode != 0:
        for path in (submission.trials_file, submission.script_file):
            path.unlink(missing_ok=True)
        reason = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise UsageError(f"sbatch refused {submission.script_file}: {reason}")
    # --parsable prints "<job id>" or "<job id>;<cluster>".
    job_id = done.stdout.strip().split(";")[0]
    with open(slurm_dir / JOBS_FILE, "a") as jobs:
        jobs.write(f"{job_id}\t{len(submission.trial_dirs)}\t{submission.trials_file.name}\n")
    return job_id


def submit(ablation_dir: Path, trial_dirs: Sequence[Path], options: SlurmOptions,
           trainer_cfg: Mapping[str, Any], ignore_queue: bool = False) -> str:
    """Submits ``trial_dirs`` as one array job (:func:`prepare`, then :func:`send`); returns the job id."""
    return send(prepare(ablation_dir, trial_dirs, options, trainer_cfg, ignore_queue))


def _template_text(template: Path | None) -> str:
    if template is None:
        text = default_template().read_text()
    else:
        try:
            text = Path(template).read_text()
        except OSError as err:
            raise UsageError(f"slurm.template: cannot read {template}: {err.strerror}") from None
    missing = [key for key in REQUIRED_PLACEHOLDERS if "{{" + key + "}}" not in text]
    if missing:
        raise UsageError(f"slurm.template {template}: missing placeholder(s) "
                         f"{', '.join('{{' + k + '}}' for k in missing)}; start from {default_template()}")
    unknown = sorted(set(re.findall(r"\{\{(\w+)\}\}", text)) - set(PLACEHOLDERS))
    if unknown:
        raise UsageError(f"slurm.template {template}: unknown placeholder(s) {', '.join(unknown)}; "
                         f"known: {', '.join(PLACEHOLDERS)}")
    return text


def default_template():
    """The sbatch template shipped with the package (a Traversable: read it with ``read_text()``)."""
    return importlib_resources.files("lightning_depth.ablation").joinpath("templates", "ablation.sbatch")


def _check_trials_agree(trial_dirs: Sequence[Path], trainer_cfg: Mapping[str, Any],
                        trial_trainers: Mapping[Path, Mapping[str, Any]] | None = None) -> None:
    """One array job has one shape; a trial whose own config asks for other resources must go separately."""
    keys = ("accelerator", "devices", "num_nodes", "strategy")
    for trial in trial_dirs:
        if trial_trainers is not None:
            trainer = trial_trainers.get(trial) or {}
        elif (trial / "config.yaml").exists():
            trainer = (yaml.safe_load((trial / "config.yaml").read_text()) or {}).get("trainer") or {}
        else:
            continue
        for key in keys:
            if key in trainer and key in trainer_cfg and trainer[key] != trainer_cfg[key]:
                raise UsageError(f"{trial.name} sets trainer.{key}={trainer[key]!r} but the array job is sized for "
                                 f"{trainer_cfg[key]!r}: trials with different resources need separate ablations")


def _check_strategy(strategy: Any) -> None:
    if isinstance(strategy, Mapping):
        init = strategy.get("init_args") or {}
        start = init.get("start_method", "popen")
        if start != "popen":
            raise UsageError(f"trainer.strategy start_method={start!r} starts its own processes, but under SLURM "
                             f"srun starts one per task: remove start_method (or use trainer.strategy ddp)")
        return
    if isinstance(strategy, str) and _SELF_LAUNCHING.fullmatch(strategy):
        raise UsageError(f"trainer.strategy={strategy} starts its own processes, but under SLURM srun starts one "
                         f"per task: use trainer.strategy ddp")


def _extra_flag(line: str) -> str:
    flag = line.strip()
    if flag.upper().startswith("#SBATCH"):
        flag = flag[len("#SBATCH"):].strip()
    if not flag.startswith("-"):
        raise UsageError(f"slurm.extra_sbatch: {line!r} is not an sbatch option (expected e.g. --constraint=a100)")
    name = re.split(r"[=\s]", flag, maxsplit=1)[0]
    if name == "--gres" and "gpu" not in flag:
        return flag
    if name in _OWNED_FLAGS or (len(name) > 2 and not name.startswith("--") and name[:2] in _OWNED_FLAGS):
        advice = _OWNED_FLAGS.get(name) or _OWNED_FLAGS[name[:2]]
        raise UsageError(f"slurm.extra_sbatch: {name} is derived by the ablation runner; {advice}")
    return flag


def _sbatch_quote(value: str) -> str:
    # sbatch reads #SBATCH arguments with its own quoting: double quotes group, a backslash escapes.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_pattern(name: str, value: Any, pattern: re.Pattern, expected: str) -> None:
    if value is not None and not (isinstance(value, str) and pattern.fullmatch(value)):
        raise UsageError(f"slurm.{name}={value!r}: expected {expected}")


def _check_int(name: str, value: Any, low: int, high: int | None = None, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise UsageError(f"slurm.{name}={value!r}: expected a whole number {bound}")


def _seconds(time: str | None) -> int | None:
    """SLURM's time formats in seconds: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S; None when unlimited or unset."""
    if time is None or time in ("UNLIMITED", "INFINITE"):
        return None
    days, _, clock = time.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:
        hours, minutes, seconds = (parts + [0, 0])[:3]
    else:
        hours, minutes, seconds = {1: (0, parts[0], 0), 2: (0, *parts), 3: tuple(parts)}[len(parts)]
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def _as_count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    return value if isinstance(value, int) and value > 0 else None


def _as_list(devices: Any) -> list:
    return list(devices) if isinstance(devices, (list, tuple)) else [d for d in str(devices).split(",") if d.strip()]
