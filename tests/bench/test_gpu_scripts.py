"""benchmarks/: gpu_check.py and gpu_run.sh run end to end at tiny sizes on the CPU (--smoke) and write the JSON
their readers expect, so the GPU check is known to run before a GPU is at hand."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK_KEYS = {"device", "torch", "smoke", "environment", "complete", "elapsed_s", "resnet50_eager", "cifar_data",
              "resnet20_cifar", "resnet110_cifar", "resnet20_plain_loop", "resnet164_cifar", "ablation_projection"}


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_smoke_report(report: dict) -> None:
    assert set(report) == CHECK_KEYS
    assert report["smoke"] is True and report["complete"] is True
    assert report["resnet50_eager"]["images_per_s"] > 0
    for key in ("resnet20_cifar", "resnet110_cifar"):
        assert report[key]["epoch_s"] > 0 and report[key]["steps"] == 2
    assert report["resnet20_plain_loop"]["pipeline_over_plain"] > 0
    assert set(report["resnet164_cifar"]) == {"post", "pre"}
    assert report["ablation_projection"]["hours"] > 0


def test_gpu_check_without_a_gpu_says_so_and_exits_cleanly(monkeypatch, capsys):
    gpu_check = load_gpu_check()
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    assert "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["gpu_run.sh", "gpu_wheels.sh"])
def test_shell_scripts_parse(script):
    done = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_gpu_run_refuses_unknown_options(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_run.sh"), "--fast"], capture_output=True,
                          text=True, env={**os.environ, "OUT": str(tmp_path / "out")}, timeout=60)
    assert done.returncode == 2 and "usage:" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a one-epoch fit through the CLI, then gpu_check.py --smoke (ResNet-50, -20, -110, -164): 40 s
def test_gpu_run_smoke_fits_checks_and_writes_its_report(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_run.sh"), "--smoke"], capture_output=True,
                          text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["environment.json", "fit_result.json", "gpu_check.json",
                                                      "gpu_run.json", "gpu_run.log"]
    report = json.loads((out / "gpu_run.json").read_text())
    assert set(report) == {"smoke", "budget_s", "elapsed_s", "environment", "fit", "gpu_check", "ok"}
    assert report["ok"] is True and report["smoke"] is True and report["elapsed_s"] <= report["budget_s"]
    env_keys = {"gpu", "nvidia_smi", "torch", "cuda", "cuda_available", "cudnn", "python", "wheels",
                "requirement_conflicts", "lightning", "wandb", "jsonargparse"}
    assert env_keys <= set(report["environment"]) and report["environment"]["wheels"] == "importable"
    fit = report["fit"]
    assert fit["rc"] == 0 and fit["result"]["global_step"] == 2 and "val/acc1" in fit["result"]["metrics"]
    assert report["gpu_check"]["rc"] == 0
    check_smoke_report(report["gpu_check"]["report"])
    assert report["gpu_check"]["report"] == json.loads((out / "gpu_check.json").read_text())
    log = (out / "gpu_run.log").read_text()
    assert "ablation projection" in log and "ok; output in" in log
    assert not list(tmp_path.glob("*wandb*")) and not (tmp_path / "runs").exists()
