"""What a new user meets on the first day, specified by real runs on the embedded digits: ``validate``, ``test`` and
``predict`` evaluate the trained model (the run directory's best checkpoint), predictions land in a CSV, nothing is
started on bad input, a fit prints what a user needs and nothing else, and a dry run never needs the data."""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from lightning_depth import fmt
from lightning_depth.cli import quiet_console
from lightning_depth.data import CIFAR10DataModule, DigitsDataModule, GPUCIFAR10DataModule
from lightning_depth.data.synthetic import write_image_folder, write_synthetic_cifar
from lightning_depth.errors import UsageError
from lightning_depth.models import ResNet
from lightning_depth.models.complexity import profile_model
from lightning_depth.runs import evaluation_checkpoint
from tests.helpers.cli import ROOT, cli, cli_in_process
from tests.helpers.wandb_records import offline_runs, read_run

QUICK = ROOT / "experiments" / "quick" / "resnet20_digits.yaml"


# -- a trained run, evaluated with nothing but its config -----------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    """``fit --config tiny.yaml`` for two epochs, run from a working directory as a user would: (cwd, config, run)."""
    work = tmp_path_factory.mktemp("first-day")
    config = work / "tiny.yaml"
    shutil.copy(ROOT / "tests" / "configs" / "tiny_resnet.yaml", config)
    cli("fit", "--config", str(config), "--trainer.max_epochs", "2", cwd=work)
    return work, config, work / "runs" / "tiny"


def _result(run: Path) -> dict:
    return json.loads((run / "result.json").read_text())


def _best(run: Path) -> Path:
    (best,) = (run / "checkpoints").glob("best-*.ckpt")
    return best


def _probabilities(ckpt: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax outputs and labels of a checkpoint on a digits split, computed without Lightning (tiny_resnet.yaml's
    ResNet-8 on 8x8 digits)."""
    net = ResNet(depth=8, stem="cifar", num_classes=10)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    net.eval()
    data = DigitsDataModule(image_size=8, batch_size=32)
    data.setup("predict")
    dataset = getattr(data, f"{split}_dataset")
    with torch.no_grad():
        x, y = map(torch.stack, zip(*dataset.__getitems__(list(range(len(dataset))))))
        return net(x).softmax(-1), y


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _one_line(stderr: str, start: str) -> str:
    (line,) = [line for line in stderr.splitlines() if line.startswith(start)]
    return line


@pytest.mark.slow
def test_test_without_a_checkpoint_path_tests_the_best_checkpoint_and_records_it(trained):
    work, config, run = trained
    fitted = _result(run)
    proc = cli("test", "--config", str(config), cwd=work)

    line = _one_line(proc.stderr, "testing ")
    assert _best(run).name in line and "the best by val/acc1" in line
    result = _result(run)
    probs, labels = _probabilities(_best(run), "test")
    by_hand = (probs.argmax(1) == labels).float().mean().item()
    assert result["metrics"]["test/acc1"]["final"] == pytest.approx(by_hand, abs=1e-6)
    assert by_hand != pytest.approx(0.1, abs=0.02), "the trained weights, not a fresh initialisation"
    # The training record stays as fit wrote it; the test names its checkpoint.
    assert {k: v for k, v in result.items() if k not in ("metrics", "test_checkpoint")} == \
        {k: v for k, v in fitted.items() if k != "metrics"}
    assert {k: v for k, v in result["metrics"].items() if not k.startswith("test/")} == fitted["metrics"]
    assert Path(result["test_checkpoint"]).name == _best(run).name
    # ... and the metrics are in the run's own W&B run.
    run_id = (run / "wandb_id").read_text().strip()
    logged = [row["test/acc1"] for path in offline_runs(run) if (w := read_run(path)).run_id == run_id
              for row in w.history if "test/acc1" in row]
    assert logged == [pytest.approx(by_hand, abs=1e-6)]


@pytest.mark.slow
def test_validate_without_a_checkpoint_path_validates_the_best_checkpoint(trained):
    work, config, run = trained
    before = set(offline_runs(run))
    proc = cli("validate", "--config", str(config), cwd=work)

    assert _best(run).name in _one_line(proc.stderr, "validating ")
    (new,) = set(offline_runs(run)) - before
    w = read_run(new)
    assert w.run_id == (run / "wandb_id").read_text().strip()
    (acc,) = [row["val/acc1"] for row in w.history if "val/acc1" in row]
    assert acc == pytest.approx(_result(run)["metrics"]["val/acc1"]["best"], abs=1e-6)


def _check_predictions(rows: list[dict[str, str]], probs: torch.Tensor, labels: torch.Tensor) -> None:
    """One row per input, in order, each the input's label and the top five classes with names and probabilities."""
    assert [int(r["index"]) for r in rows] == list(range(len(labels)))
    top = probs.topk(5, dim=1)
    for row, y, p, c in zip(rows, labels.tolist(), top.values.tolist(), top.indices.tolist()):
        assert int(row["label"]) == y and row["label_name"] == str(y)
        assert [int(row[f"top{k}"]) for k in range(1, 6)] == c
        assert [row[f"top{k}_name"] for k in range(1, 6)] == [str(k) for k in c]
        assert [float(row[f"top{k}_prob"]) for k in range(1, 6)] == pytest.approx(p, abs=1e-5)


@pytest.mark.slow
def test_predict_writes_the_test_split_s_top_five_per_image_to_the_run_directory(trained):
    work, config, run = trained
    proc = cli("predict", "--config", str(config), cwd=work)

    assert _best(run).name in _one_line(proc.stderr, "predicting with ")
    path = run / "predictions.csv"
    assert f"predictions: {path.relative_to(work)} (270 rows)" in proc.stderr
    probs, labels = _probabilities(_best(run), "test")
    _check_predictions(_read_csv(path), probs, labels)
    assert not list(run.glob(".predictions.csv.*")), "written atomically: no temporary file is left"


@pytest.mark.slow
def test_predict_under_ddp_gathers_every_rank_s_rows_into_one_file(trained):
    """1,257 training images on two ranks: each image exactly once, in order, as one process would predict it."""
    work, config, run = trained
    cli("predict", "--config", str(config), "--data.init_args.predict_split", "train",
        "--trainer.strategy", "ddp", "--trainer.devices", "2", cwd=work)
    probs, labels = _probabilities(_best(run), "train")
    _check_predictions(_read_csv(run / "predictions.csv"), probs, labels)


@pytest.mark.slow
def test_predict_on_cifar_names_its_split_and_the_release_s_class_names(trained, tmp_path):
    work, config, run = trained
    root = write_synthetic_cifar(tmp_path / "cifar", per_file=8, test=20)
    names = [f"name{i}" for i in range(10)]
    (root / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps({b"label_names": [n.encode()
                                                                                                for n in names]}))
    out = tmp_path / "out"
    shutil.copytree(run, out, symlinks=True)
    cli("predict", "--config", str(config), "--trainer.default_root_dir", str(out),
        "--data", "lightning_depth.data.CIFAR10DataModule", "--data.init_args.root", str(root),
        "--data.init_args.val_split", "10", "--data.init_args.predict_split", "val",
        "--data.init_args.num_workers", "0", "--data.init_args.persistent_workers", "false", cwd=work)
    rows = _read_csv(out / "predictions.csv")
    assert len(rows) == 10
    assert all(r["label_name"] == names[int(r["label"])] and r["top1_name"] == names[int(r["top1"])] for r in rows)


@pytest.mark.parametrize("module", [CIFAR10DataModule, GPUCIFAR10DataModule])
@pytest.mark.parametrize("split, size", [(None, 20), ("test", 20), ("val", 10), ("train", 30)])
def test_cifar_modules_predict_the_named_split_in_order_without_augmentation(tmp_path, module, split, size):
    root = write_synthetic_cifar(tmp_path, per_file=8, test=20)
    extra = {"device": "cpu"} if module is GPUCIFAR10DataModule else {"num_workers": 0}
    data = module(root=str(root), val_split=10, augment=True, batch_size=7, predict_split=split, **extra)
    data.setup("predict")
    first, again = (torch.cat([x for x, _ in data.predict_dataloader()]) for _ in range(2))
    assert len(first) == size and torch.equal(first, again)  # no crops, no flips, no shuffling


@pytest.mark.slow
def test_image_folder_predicts_a_folder_of_images_without_class_sub_folders(tmp_path, tiny_config):
    root = write_image_folder(tmp_path / "images", classes=2, per_class=6, val_per_class=2, size=(24, 20))
    new = tmp_path / "new"
    new.mkdir()
    for i, image in enumerate(sorted((root / "val").rglob("*.jpg"))[:3]):
        shutil.copy(image, new / f"photo{i}.jpg")
    run = tmp_path / "run"
    data = ["--data", "lightning_depth.data.ImageFolderDataModule", "--data.init_args.root", str(root),
            "--data.init_args.image_size", "16", "--data.init_args.batch_size", "4",
            "--data.init_args.num_workers", "0", "--data.init_args.persistent_workers", "false"]
    cli("fit", "--config", str(tiny_config), "--trainer.default_root_dir", str(run), "--trainer.max_epochs", "1",
        *data)
    cli("predict", "--config", str(tiny_config), "--trainer.default_root_dir", str(run), *data,
        "--data.init_args.predict_root", str(new))

    rows = _read_csv(run / "predictions.csv")
    assert [r["path"] for r in rows] == [str(new / f"photo{i}.jpg") for i in range(3)]
    assert "label" not in rows[0]  # new images have none
    assert all(r["top1_name"] in ("class0", "class1") and r["top1_name"] == f"class{r['top1']}" for r in rows)
    assert all(float(r["top1_prob"]) + float(r["top2_prob"]) == pytest.approx(1, abs=1e-4) for r in rows)


# -- which checkpoint an evaluation loads ----------------------------------------------------------------------------

def _cfg(root: Path, ckpt_path: str | None = None):
    from jsonargparse import Namespace

    return Namespace(ckpt_path=ckpt_path, config=None, trainer=Namespace(default_root_dir=str(root)),
                     checkpoint=Namespace(dirpath=None, monitor="val/acc1", filename="best-epoch{epoch:03d}"))


@pytest.mark.parametrize(
    "files, asked, chosen, said",
    [
        (["last.ckpt", "best-epoch002.ckpt"], None, "best-epoch002.ckpt", "the best by val/acc1"),
        (["last.ckpt"], None, "last.ckpt", "the last; no best checkpoint was saved"),
        (["last.ckpt", "best-epoch002.ckpt"], "last", "last.ckpt", "the last"),
        (["last.ckpt", "best-epoch002.ckpt"], "best", "best-epoch002.ckpt", "the best by val/acc1"),
    ],
    ids=["best-first", "falls-back-to-last", "last-on-request", "best-on-request"],
)
def test_evaluations_load_the_run_s_best_checkpoint_else_its_last(tmp_path, files, asked, chosen, said):
    for name in files:
        (tmp_path / "checkpoints").mkdir(exist_ok=True)
        torch.save({"state_dict": {}}, tmp_path / "checkpoints" / name)
    path, which = evaluation_checkpoint(_cfg(tmp_path, asked), "test")
    assert (path.name, which) == (chosen, said)


def test_asking_for_a_best_checkpoint_that_was_never_saved_is_one_line(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    torch.save({"state_dict": {}}, tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(UsageError, match="no best checkpoint; pass --ckpt_path last"):
        evaluation_checkpoint(_cfg(tmp_path, "best"), "test")


def test_of_several_best_checkpoints_the_one_the_last_checkpoint_names_is_loaded(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for epoch in (3, 7):
        torch.save({"state_dict": {}}, folder / f"best-epoch{epoch:03d}.ckpt")
    os.utime(folder / "best-epoch003.ckpt", (2e9, 2e9))  # newer on disk, yet not the best
    state = {"best_model_path": str(folder / "best-epoch007.ckpt")}
    torch.save({"state_dict": {}, "callbacks": {"ModelCheckpoint{'monitor': 'val/acc1'}": state}},
               folder / "last.ckpt")
    assert evaluation_checkpoint(_cfg(tmp_path), "test")[0].name == "best-epoch007.ckpt"


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_an_evaluation_without_a_trained_run_is_refused_in_one_line(capfd, tmp_path, monkeypatch, tiny_config,
                                                                    command):
    monkeypatch.chdir(tmp_path)
    proc = cli_in_process(capfd, command, "--config", str(tiny_config))
    assert proc.returncode == 2
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "runs/tiny_resnet holds no checkpoint" in error and "fit" in error
    assert not (tmp_path / "runs").exists()


# -- nothing is started before the input is known good ---------------------------------------------------------------

def _corrupt_cifar(tmp_path: Path) -> Path:
    root = write_synthetic_cifar(tmp_path / "cifar", per_file=8, test=20)
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04 truncated")
    return root


BAD_INPUT = {
    "missing-cifar": (lambda tmp: ["--data", "lightning_depth.data.CIFAR10DataModule", "--data.init_args.root",
                                   str(tmp / "nowhere")], "not found"),
    "unreadable-cifar": (lambda tmp: ["--data", "lightning_depth.data.CIFAR10DataModule", "--data.init_args.root",
                                      str(_corrupt_cifar(tmp)), "--data.init_args.num_workers", "0"], "unreadable"),
    "missing-image-folder": (lambda tmp: ["--data", "lightning_depth.data.ImageFolderDataModule",
                                          "--data.init_args.root", str(tmp / "nowhere")], "no class folders"),
    "invalid-toggle": (lambda tmp: ["--model.net.init_args.depth", "21"], "6n+2"),
    "invalid-data-value": (lambda tmp: ["--data.init_args.image_size", "4"], "image_size=4"),
    "unwritable-directory": (lambda tmp: ["--trainer.default_root_dir", str(tmp / "a-file" / "run")],
                             "not writable"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_refused_before_any_directory_logger_or_wandb_run_exists(capfd, tmp_path, monkeypatch,
                                                                              tiny_config, case):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    (tmp_path / "a-file").write_text("")
    overrides, needle = BAD_INPUT[case]
    args = overrides(tmp_path)
    proc = cli_in_process(capfd, "fit", "--config", str(tiny_config), "--trainer.default_root_dir",
                          str(tmp_path / "run"), *args)
    assert proc.returncode == 2
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert needle in error
    assert not (tmp_path / "run").exists() and not (tmp_path / "a-file" / "run").exists()
    assert not (tmp_path / "wandb").exists() and not list(tmp_path.rglob("*wandb*"))


# -- a quiet console -------------------------------------------------------------------------------------------------

NOISE = ["srun", "litlogger", "Tip:", "LeafSpec", "anonymous", "FLOPs", "┃", "wandb:", "GPU available",
         "Seed set to", "deprecated"]


@pytest.mark.slow
def test_a_quick_fit_prints_what_a_user_needs_and_nothing_else(tmp_path):
    """A new user's machine: no W&B login, no WANDB_MODE, Python's default warnings, and SLURM's srun installed
    (a stand-in here) while no SLURM job runs. One warning is the user's to act on, and it stays."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SLURM_"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", PYTHONWARNINGS="", NETRC=str(tmp_path / "no-netrc"),
               WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"), HOME=str(tmp_path))
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "lightning_depth", "fit", "--config", str(QUICK),
                           "--trainer.default_root_dir", str(run), "--trainer.max_epochs", "1",
                           "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (proc.stdout + proc.stderr).splitlines()
    assert not [line for line in lines for noise in NOISE if noise in line]

    net = ResNet(depth=20, stem="cifar", num_classes=10)
    expected = [
        f"run: {run} (fit, seed 0, 1 cpu device)",
        f"model: {profile_model(net, 16).line()}",
        "data: DigitsDataModule: 10 classes; 3x16x16 images; 1,257 train, 270 val, 270 test; batch 64",
    ]
    assert lines[:3] == expected
    # The one warning a user can act on: four batches cannot log every fifth step.
    (warning,) = [line for line in lines if "smaller than the logging interval" in line]
    epoch = _one_line(proc.stderr, "epoch 1/1 step 4: ")
    result = _one_line(proc.stderr, "result after 1 epoch: val/acc1 ")
    (hint,) = [line for line in lines if "wandb sync" in line]
    assert hint.startswith("W&B is offline; upload this run later with: wandb sync ")
    (offline,) = offline_runs(run)
    assert (tmp_path / hint.split("wandb sync ")[1]).resolve() == offline.parent.resolve()  # the run's own files
    assert lines[3:] == [warning, epoch, result, hint]
    assert f"params {fmt.count(sum(p.numel() for p in net.parameters()))}, multiply-adds " in lines[1]


def test_srun_s_hint_is_left_out_outside_a_slurm_job_only(monkeypatch):
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    message = "The `srun` command is available on your system but is not used. HINT: ..."
    for job, shown in ((None, False), ("42", True)):
        if job is None:
            monkeypatch.delenv("SLURM_JOB_ID", raising=False)
        else:
            monkeypatch.setenv("SLURM_JOB_ID", job)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_console()
            warnings.warn(message, PossibleUserWarning, stacklevel=1)
            warnings.warn("Set a lower value for log_every_n_steps", PossibleUserWarning, stacklevel=1)
        assert [str(w.message) for w in caught] == [message] * shown + ["Set a lower value for log_every_n_steps"]


# -- a dry run never needs the data ----------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment, data",
    # CIFAR-10: the module is built, its files are missing. The paper's ResNet-164 is cut to 11 layers (n=1) to keep
    # the probe's steps short; the path without the data is the same.
    [("paper/preact_ablation.yaml", ["--model.net.init_args.depth", "11"]),
     ("preact_ablation.yaml", ["--data", "lightning_depth.data.ImageFolderDataModule"])],  # not even built
    ids=["paper-scale-cifar", "image-folder"],
)
def test_a_dry_run_without_its_data_prints_the_matrix_and_says_the_total_needs_it(tmp_path, experiment, data):
    root = tmp_path / "runs"
    proc = cli("fit", "--config", str(ROOT / "experiments" / experiment), "--dry-run", "true", *data,
               "--trainer.default_root_dir", str(root), "--data.init_args.root", str(tmp_path / "not-fetched"),
               "--data.init_args.batch_size", "2")
    body = [line for line in proc.stdout.splitlines() if line.endswith("needs data")]
    assert len(body) == 6  # two arms, three seeds
    for line in body:
        params, macs = line.split()[-6:-4]
        assert params[-1] in "KMG" and macs[-1] in "KMG" and float(macs[:-1]) > 0
    assert "The data is not there" in proc.stdout and str(tmp_path / "not-fetched") in proc.stdout
    assert "random 2x3x" in proc.stdout and "Nothing was trained" in proc.stdout
    assert not root.exists() and not (tmp_path / "not-fetched").exists()


def test_the_quick_config_is_what_the_readme_runs():
    readme = (ROOT / "README.md").read_text()
    for command in ("fit", "test", "predict"):
        assert f"python -m lightning_depth {command} --config experiments/quick/resnet20_digits.yaml" in readme
    assert yaml.safe_load(QUICK.read_text())["data"]["class_path"].endswith("DigitsDataModule")
