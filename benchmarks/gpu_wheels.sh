#!/usr/bin/env bash
# Fetch into .whl/ the wheels the GPU machine's image lacks for lightning_depth and its checks (W&B, jsonargparse
# with its signatures extras, and what they need beyond the image), for CPython 3.12 on manylinux x86_64; then
# print their size and check that they, with the image's own packages, satisfy every requirement.
# Run from anywhere, where PyPI is reachable:  bash benchmarks/gpu_wheels.sh   (benchmarks/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
DEST=.whl
MAX_MIB=48  # the working tree and the wheels travel together, 64 MiB at most
TOP=("wandb==0.31.0" "jsonargparse[signatures]==4.53.0")
# One version each: the ones the test suite runs with here.
WHEELS=(
  wandb==0.31.0 cwevals==0.0.1b1 distro==1.9.0 sniffio==1.3.1 platformdirs==4.14.8
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2
  opentelemetry-exporter-otlp-proto-http==1.45.2 opentelemetry-exporter-otlp-proto-common==1.45.2
  opentelemetry-exporter-http-transport==0.66b2 opentelemetry-exporter-otlp-common==0.66b2
  opentelemetry-proto==1.45.2 googleapis-common-protos==1.76.0
  jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0
  # The image holds these two, maybe older than pydantic (typing-extensions>=4.16) and googleapis-common-protos
  # (protobuf>=6.33.5) need; the newer releases read everything the older ones did.
  typing_extensions==4.16.0 protobuf==7.36.2
)
# What the set needs that the GPU image already holds (from its package list).
IMAGE_HAS=(anyio certifi charset-normalizer click h11 httpcore httpx idna packaging pyyaml requests urllib3 xxhash)
TARGET=(--python-version 3.12 --implementation cp --only-binary=:all:
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

rm -rf "$DEST"
mkdir -p "$DEST"
"$PYTHON" -m pip download -q --no-deps "${TARGET[@]}" -d "$DEST" "${WHEELS[@]}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '%s\n' "${WHEELS[@]}" >"$work/pins.txt"
# Resolve the top-level requirements for the GPU machine's Python and platform, held to the pinned versions.
"$PYTHON" -m pip install -q --dry-run --ignore-installed --target "$work/site" "${TARGET[@]}" \
  --find-links "$DEST" -c "$work/pins.txt" --report "$work/report.json" "${TOP[@]}"

"$PYTHON" - "$DEST" "$work/report.json" "$MAX_MIB" "${IMAGE_HAS[@]}" <<'EOF'
import json, re, sys
from pathlib import Path

dest, report, max_mib, image = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4:]
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
wheels = {norm(w.name.split("-")[0]): (w.name.split("-")[1], w) for w in dest.glob("*.whl")}
needed = {norm(i["metadata"]["name"]): i["metadata"]["version"] for i in json.load(open(report))["install"]}
image = {norm(n) for n in image}
problems = [f"{n}=={v} is needed but neither carried nor in the image" for n, v in needed.items()
            if n not in wheels and n not in image]
problems += [f"{n}: carried {wheels[n][0]}, resolved {v}" for n, v in needed.items() if n in wheels and
             wheels[n][0] != v]
problems += [f"{n} is carried but nothing needs it" for n in wheels if n not in needed]
mib = sum(w.stat().st_size for _, w in wheels.values()) / 2**20
print(f"{len(wheels)} wheels in {dest}/, {mib:.1f} MiB; from the image: {', '.join(sorted(needed.keys() & image))}")
if mib > max_mib:
    problems.append(f"{mib:.1f} MiB is over {max_mib:.0f} MiB")
for p in problems:
    print(f"error: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
