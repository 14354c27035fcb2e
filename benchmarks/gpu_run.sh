#!/usr/bin/env bash
# The GPU check in one command, from a checkout with .whl/ beside it (benchmarks/README.md):
#   bash benchmarks/gpu_run.sh           # one CUDA GPU: environment, a real fit on the GPU, gpu_check.py
#   bash benchmarks/gpu_run.sh --smoke   # the same at tiny sizes on the CPU: does it all run?
# Writes gpu_run.log, gpu_run.json, environment.json, fit_result.json and gpu_check.json into $OUT (default: a new
# temporary directory). Ends within GPU_RUN_BUDGET seconds (default 420); the exit status is 0 when all passed.
set -uo pipefail
cd "$(dirname "$0")/.."

smoke=false
case "${1:-}" in
  "") ;;
  --smoke) smoke=true ;;
  *) echo "usage: bash benchmarks/gpu_run.sh [--smoke]" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_run.XXXXXX")}
BUDGET=${GPU_RUN_BUDGET:-420}
SITE=${GPU_RUN_SITE:-/tmp/site}
FIT_LIMIT=150  # the quick ResNet-20 recipe trains in well under a minute on a GPU
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_run.log") 2>&1
start=$SECONDS
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true

# --- wheels: W&B and jsonargparse are not in the GPU image; benchmarks/gpu_wheels.sh fetched them into .whl/
need="import wandb, jsonargparse, docstring_parser, typeshed_client"
if "$PYTHON" -c "$need" 2>/dev/null; then
  wheels=importable
elif compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || { echo "error: installing .whl/ into $SITE failed"; exit 1; }
  export PYTHONPATH="$SITE:$PYTHONPATH"
  "$PYTHON" -c "$need" || { echo "error: W&B or jsonargparse does not import from $SITE"; exit 1; }
  wheels=installed
else
  echo "error: W&B or jsonargparse is missing and there is no .whl/: run bash benchmarks/gpu_wheels.sh where PyPI" \
       "is reachable, and bring .whl/ along"
  exit 1
fi
echo "== wheels: $wheels"

# --- environment, and any requirement of the carried wheels that this image does not meet
echo "== environment"
"$PYTHON" - "$OUT/environment.json" "$wheels" "$SITE" <<'EOF'
import importlib.metadata as md, json, platform, subprocess, sys
import torch
from packaging.requirements import Requirement

path, wheels, site = sys.argv[1:]
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30).stdout.strip() or None
except (OSError, subprocess.SubprocessError):
    smi = None
cuda = torch.cuda.is_available()
conflicts = []
for dist in md.distributions(path=[site]) if wheels == "installed" else []:
    for req in map(Requirement, dist.requires or []):
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            have = version(req.name)
            if have is None or not req.specifier.contains(have, prereleases=True):
                conflicts.append(f"{dist.metadata['Name']} needs {req}, found {have}")
env = {"gpu": torch.cuda.get_device_name(0) if cuda else None, "nvidia_smi": smi, "torch": torch.__version__,
       "cuda": torch.version.cuda, "cuda_available": cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
       "python": platform.python_version(), "wheels": wheels, "requirement_conflicts": conflicts,
       **{name: version(name) for name in ("lightning", "torchvision", "torchmetrics", "timm", "wandb",
                                           "jsonargparse", "pydantic", "protobuf", "typing_extensions")}}
print(json.dumps(env, indent=2))
open(path, "w").write(json.dumps(env) + "\n")
EOF
[[ $? == 0 ]] || { echo "error: the environment could not be read"; exit 1; }

left() { echo $(( BUDGET - (SECONDS - start) - 15 )); }

# --- a real fit of the quick ResNet-20 recipe through the CLI, W&B offline
echo "== fit (at most ${FIT_LIMIT} s)"
fit=(fit --config experiments/quick/resnet20_digits.yaml --trainer.default_root_dir "$work/fit")
if $smoke; then
  fit+=(--trainer.accelerator cpu --trainer.max_epochs 1 --trainer.limit_train_batches 2
        --trainer.limit_val_batches 1)
else
  fit+=(--trainer.accelerator gpu --trainer.devices 1)
fi
fit_start=$SECONDS
WANDB_DIR="$work" timeout -k 10 "$FIT_LIMIT" "$PYTHON" -m lightning_depth "${fit[@]}"
fit_rc=$?
fit_s=$(( SECONDS - fit_start ))
[[ -f "$work/fit/result.json" ]] && cp "$work/fit/result.json" "$OUT/fit_result.json"

# --- gpu_check.py with what is left of the budget; it saves its JSON after every measurement
limit=$(left)
echo "== gpu_check (at most ${limit} s)"
check=(benchmarks/gpu_check.py --json "$OUT/gpu_check.json")
$smoke && check+=(--smoke)
check_start=$SECONDS
if (( limit > 0 )); then
  timeout -k 10 "$limit" "$PYTHON" "${check[@]}"
  check_rc=$?
else
  check_rc=124
fi
check_s=$(( SECONDS - check_start ))

"$PYTHON" - "$OUT" "$smoke" "$BUDGET" "$(( SECONDS - start ))" "$fit_rc" "$fit_s" "$check_rc" "$check_s" <<'EOF'
import json, sys
from pathlib import Path

out, smoke, budget, elapsed, fit_rc, fit_s, check_rc, check_s = sys.argv[1:]
def read(name):
    path = Path(out) / name
    return json.loads(path.read_text()) if path.is_file() else None
report = {"smoke": smoke == "true", "budget_s": int(budget), "elapsed_s": int(elapsed),
          "environment": read("environment.json"),
          "fit": {"rc": int(fit_rc), "seconds": int(fit_s), "result": read("fit_result.json")},
          "gpu_check": {"rc": int(check_rc), "seconds": int(check_s), "report": read("gpu_check.json")}}
report["ok"] = report["fit"]["rc"] == 0 and report["gpu_check"]["rc"] == 0
(Path(out) / "gpu_run.json").write_text(json.dumps(report, indent=2) + "\n")
print(f"== fit rc {fit_rc} ({fit_s} s), gpu_check rc {check_rc} ({check_s} s); {elapsed} s in all; "
      f"{'ok' if report['ok'] else 'FAILED'}; output in {out}")
sys.exit(0 if report["ok"] else 1)
EOF
