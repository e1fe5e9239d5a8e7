#!/usr/bin/env bash
# The GPU check: the first thing to run on a machine with an NVIDIA GPU (H100/H200), offline, in at most 8 minutes.
#
#   bash benchmarks/gpu_check.sh OUT_DIR
#
# It installs this checkout without dependencies (the machine's Python brings torch, triton, timm, safetensors,
# huggingface_hub, scikit-learn, pytest and hypothesis), then runs, each step under its own time limit and each
# writing into OUT_DIR:
#   environment.json   versions, GPU, driver
#   cuda_tests.json    tests/test_kernels_triton.py on the GPU (CUDA tests, Hopper compile), junit XML beside it
#   kernels_gpu.json   vithub bench gpu: Triton vs torch, FlexAttention and timm's Swin attention, bf16
#   kernels_unfused_gpu.json vithub bench kernels --ops unfused: unfused NA (qk, softmax, av) vs the fused op, fp32
#   models_*.json      vithub bench models: bf16 autocast, batch 128, eval and a train step, per backend, against
#                      the timm twin with the same weights where timm has one (Swin, LeViT, EfficientViT-B)
#   detection_gpu.json vithub bench detection: Mask R-CNN train step (batch 8) and latency at 800/1333, bf16, with
#                      vh_swin_tiny against timm's Swin-T features and torchvision's R50-FPN v2
#   segmentation_gpu.json vithub bench segmentation: UPerNet train step (batch 16) and latency at 512x512, bf16,
#                      with vh_swin_tiny and vh_nat_tiny against timm's Swin-T features
#   token_reduction_gpu.json vithub bench tokens: ToMe r in {0, 13} vs the same timm DeiT-S/ViT-B, bf16, batch 256
#   summary.json       every step's exit code, seconds and files
# The step limits add up to 555 s. A step that fails or runs out of time is recorded and the next one runs. Without a GPU it is a dry run: the same
# steps, the CUDA tests skip (and say so), `bench gpu` refuses, and the model rows run on the CPU at batch 2.
set -uo pipefail

out=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
started=$(date +%s)
steps_file="$out/steps.jsonl"
: > "$steps_file"

# run NAME LIMIT_SECONDS COMMAND...: the command's output goes to OUT_DIR/NAME.log; its status to steps.jsonl.
run() {
    local name=$1 limit=$2
    shift 2
    local begin end rc
    begin=$(date +%s)
    echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
    rc=$?
    end=$(date +%s)
    tail -n 25 "$out/$name.log"
    printf '{"step": "%s", "rc": %d, "seconds": %d, "timed_out": %s, "command": "%s"}\n' "$name" "$rc" \
        "$((end - begin))" "$([ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && echo true || echo false)" "$*" \
        >> "$steps_file"
}

has_gpu=$("$python" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)

run install 40 "$python" -m pip install --no-deps --no-build-isolation -e .

run environment 20 "$python" - "$out/environment.json" <<'PY'
import importlib, json, platform, subprocess, sys
import torch
versions = {}
for name in ("torch", "triton", "timm", "safetensors", "huggingface_hub", "sklearn", "transformers", "natten",
             "vithub"):
    try:
        versions[name] = getattr(importlib.import_module(name), "__version__", "unknown")
    except Exception as error:  # noqa: BLE001 - record whatever stops the import
        versions[name] = f"not importable: {error.__class__.__name__}: {error}"
info = {"python": sys.version.split()[0], "platform": platform.platform(), "versions": versions,
        "cuda": torch.version.cuda, "gpu": None}
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    info["gpu"] = {"name": props.name, "capability": list(torch.cuda.get_device_capability(0)),
                   "memory_gib": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count()}
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm",
                                             "--format=csv,noheader"], capture_output=True, text=True,
                                            timeout=20).stdout.strip()
    except Exception as error:  # noqa: BLE001
        info["nvidia_smi"] = f"unavailable: {error}"
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info, indent=2))
PY

if [ "$has_gpu" = 1 ]; then
    tests=(tests/test_kernels_triton.py tests/test_bench_timing.py)
else
    tests=(tests/test_kernels_triton.py -k cuda)  # dry run: only the CUDA tests, which skip here
fi
run cuda_tests 100 "$python" -m pytest -q -rs -p no:cacheprovider "${tests[@]}" --junitxml="$out/cuda_tests.xml"
"$python" - "$out/cuda_tests.xml" "$out/cuda_tests.json" <<'PY'
import json, sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError) as error:
    json.dump({"error": f"no junit report: {error}"}, open(sys.argv[2], "w"))
    sys.exit(0)
cases = []
for case in root.iter("testcase"):
    outcome = "passed"
    detail = ""
    for tag in ("failure", "error", "skipped"):
        node = case.find(tag)
        if node is not None:
            outcome, detail = ("skipped" if tag == "skipped" else "failed"), (node.get("message") or "")[:500]
    cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                  "seconds": float(case.get("time") or 0), "detail": detail})
counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "skipped")}
json.dump({"counts": counts, "cases": cases}, open(sys.argv[2], "w"), indent=1)
print(counts)
PY

run bench_gpu 160 "$python" -m vithub bench gpu --repeats 20 --output "$out/kernels_gpu.json"
if [ "$has_gpu" = 1 ]; then
    run bench_unfused 25 "$python" -m vithub bench kernels --ops unfused --device cuda --repeats 10 \
        --output "$out/kernels_unfused_gpu.json"
fi

if [ "$has_gpu" = 1 ]; then
    models_args=(--device cuda --amp bfloat16 --batch-sizes 128 --repeats 5)
    local_backends=(torch triton)
else
    models_args=(--device cpu --amp bfloat16 --batch-sizes 2 --repeats 1)
    local_backends=(torch)  # the Triton kernels need CUDA (or the interpreter, far too slow for whole models)
fi
# Kernel backends for the families whose attention has Triton kernels (window and neighborhood attention).
run models_twins 40 "$python" -m vithub bench models "${models_args[@]}" --modes eval train --twin \
    --models vh_swin_tiny_patch4_window7_224 --backends "${local_backends[@]}" --output "$out/models_swin.json"
run models_no_twin 50 "$python" -m vithub bench models "${models_args[@]}" --modes eval train \
    --models vh_nat_tiny vh_fastervit_0_224 --backends "${local_backends[@]}" --output "$out/models_nat_fastervit.json"
run models_dense 30 "$python" -m vithub bench models "${models_args[@]}" --modes eval train --twin \
    --models vh_levit_256 vh_efficientvit_b1 --backends torch --output "$out/models_levit_efficientvit.json"

if [ "$has_gpu" = 1 ]; then
    detection_args=(--device cuda --repeats 3 --backbones vh_swin_tiny_patch4_window7_224 swin_tiny_patch4_window7_224)
else
    detection_args=(--device cpu --repeats 1 --det-img-size 64 --det-batch-size 1 --backbones vh_efficientvit_m0)
fi
run detection 30 "$python" -m vithub bench detection "${detection_args[@]}" --output "$out/detection_gpu.json"

if [ "$has_gpu" = 1 ]; then
    segmentation_args=(--device cuda --repeats 3 --backbones vh_swin_tiny_patch4_window7_224 vh_nat_tiny
                       swin_tiny_patch4_window7_224)
else
    segmentation_args=(--device cpu --repeats 1 --seg-img-size 64 --seg-batch-size 2 --backbones vh_efficientvit_b0)
fi
run segmentation 30 "$python" -m vithub bench segmentation "${segmentation_args[@]}" \
    --output "$out/segmentation_gpu.json"

if [ "$has_gpu" = 1 ]; then
    tokens_args=(--device cuda --amp bfloat16 --batch-sizes 256 --r 0 13 --repeats 5)
else
    tokens_args=(--device cpu --batch-sizes 2 --r 0 13 --repeats 1 --img-size 64 --vits deit_tiny_patch16_224)
fi
run tokens 30 "$python" -m vithub bench tokens "${tokens_args[@]}" --output "$out/token_reduction_gpu.json"

"$python" - "$steps_file" "$out/summary.json" "$started" "$has_gpu" <<'PY'
import json, os, sys, time
steps = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
folder = os.path.dirname(sys.argv[2])
summary = {"gpu": sys.argv[4] == "1", "seconds": int(time.time() - int(sys.argv[3])), "steps": steps,
           "files": sorted(os.listdir(folder))}
json.dump(summary, open(sys.argv[2], "w"), indent=2)
print(json.dumps({step["step"]: step["rc"] for step in steps}), f"{summary['seconds']} s")
PY
