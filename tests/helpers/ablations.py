"""Ablation directories written in the exact on-disk format of real runs, with known numbers, for the tests of
the ledger, compare and status."""

import csv
import json
from datetime import datetime, timezone

PREACT, BLOCK = "model.net.init_args.preact", "model.net.init_args.block"
SEEDS = (0, 1, 2)
# Final val/acc1 per arm and seed (fractions, as torchmetrics logs them).
ACC = {
    "baseline": (0.9130, 0.9152, 0.9141),
    "preact=true": (0.9171, 0.9180, 0.9188),
    "block=bottleneck": (0.9205, 0.9190, 0.9221),
}
OVERRIDES = {
    "baseline": {PREACT: False, BLOCK: "basic"},
    "preact=true": {PREACT: True, BLOCK: "basic"},
    "block=bottleneck": {PREACT: False, BLOCK: "bottleneck"},
}
PARAMS = {"baseline": 272_474, "preact=true": 272_474, "block=bottleneck": 1_730_714}
EPOCHS = 5
CSV_COLUMNS = ["epoch", "step", "lr-SGD", "train/acc1", "train/loss", "val/acc1", "val/acc1_best", "val/acc5",
               "val/loss"]


def curve(final, epoch):
    return final - 0.05 * (EPOCHS - 1 - epoch) / (EPOCHS - 1)


def write_metrics_csv(path, final, epochs, corrupt_last=False):
    """Lightning CSVLogger layout: train and val rows are separate, empty where a metric was not logged."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS)
        writer.writeheader()
        for epoch in epochs:
            acc = 0.1 if corrupt_last and epoch == epochs[-1] else curve(final, epoch)
            step = (epoch + 1) * 390 - 1
            writer.writerow({"epoch": epoch, "step": step, "lr-SGD": 0.1, "train/loss": 1.1 - acc,
                             "train/acc1": acc + 0.02})
            writer.writerow({"epoch": epoch, "step": step, "val/acc1": acc, "val/acc1_best": acc,
                             "val/acc5": min(acc + 0.08, 1.0), "val/loss": 1.2 - acc})


def write_trial_dir(root, arm, seed, state, with_result=None, resumed=False):
    tid = f"{arm.replace('=', '-')}-s{seed}-{abs(hash((arm, seed))) % 16**10:010x}"
    d = root / tid
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(f"seed_everything: {seed}\n")
    (d / "trial.json").write_text(json.dumps({"id": tid, "arm": arm, "seed": seed, "overrides": OVERRIDES[arm],
                                              "is_baseline": arm == "baseline"}))
    # A running trial is alive: it trains on another node and its heartbeat is fresh.
    heartbeat = datetime.now(timezone.utc).isoformat(timespec="seconds") if state == "running" else None
    (d / "state.json").write_text(json.dumps({"state": state, "reason": "CUDA out of memory" if state == "failed"
                                              else None, "attempts": 1, "updated": "2025-01-01T00:00:00+00:00",
                                              "host": "node1", "pid": 123, "slurm_job": None,
                                              "heartbeat": heartbeat}))
    final = ACC[arm][seed]
    if resumed:  # preempted during epoch 2, resumed: epoch 2 appears in both versions, the second one counts
        write_metrics_csv(d / "csv" / "version_0" / "metrics.csv", final, [0, 1, 2], corrupt_last=True)
        write_metrics_csv(d / "csv" / "version_1" / "metrics.csv", final, [2, 3, 4])
    elif state != "pending":
        write_metrics_csv(d / "csv" / "version_0" / "metrics.csv", final, list(range(EPOCHS)))
    if with_result if with_result is not None else state == "done":
        metrics = {"val/acc1": {"best": final + 0.001, "final": final},
                   "val/loss": {"best": 1.2 - final - 0.01, "final": 1.2 - final},
                   "val/acc5": {"best": 0.997, "final": 0.996}, "test/acc1": {"final": final - 0.002}}
        (d / "result.json").write_text(json.dumps({
            "metrics": metrics, "params": PARAMS[arm], "macs": 40_810_000, "wall_time_s": 600.0 + 10 * seed,
            "epochs": EPOCHS, "global_step": EPOCHS * 390, "wandb_run_id": None}))
    return tid


def make_ablation(root, states=None, resumed=()):
    """Three arms (one_at_a_time) × three seeds; ``states`` maps (arm, seed) to a state other than done."""
    root.mkdir(parents=True, exist_ok=True)
    ids = [write_trial_dir(root, arm, seed, (states or {}).get((arm, seed), "done"), resumed=(arm, seed) in resumed)
           for seed in SEEDS for arm in ACC]
    (root / "ablation.json").write_text(json.dumps({
        "name": "preact", "design": "one_at_a_time", "metric": "val/acc1", "baseline": "baseline",
        "factors": {PREACT: [False, True], BLOCK: ["basic", "bottleneck"]}, "trials": ids}))
    return root


PARTIAL = {("baseline", 2): "running", ("preact=true", 1): "failed", ("block=bottleneck", 0): "pending",
           ("block=bottleneck", 1): "pending", ("block=bottleneck", 2): "pending"}
