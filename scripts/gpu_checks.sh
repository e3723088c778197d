#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one short run (CI never has one): a session lent a GPU runs this at once.
#
#   bash scripts/gpu_checks.sh OUT [MINUTES]
#
# with the device tool: command "bash scripts/gpu_checks.sh $OUT 7", timeout_s 560. Uses the machine's own python3
# and torch (genzoo from src/, nothing installed); every step has its own time limit and a failed step does not stop
# the others. MINUTES (default 7) is the whole budget; the likelihood runs get what the quick checks leave.
# Writes OUT/log.txt (everything printed), OUT/gpu_checks.json (one row per step: command, exit status, seconds,
# and the figures it printed), and OUT/runs.tar.gz (the run folders, for the zoo or a benchmark's record).
# Steps:
#   1. the machine: nvidia-smi, torch, whether bf16 is supported (what --precision auto picks)
#   2. genzoo train vae / ddpm / flow / gan --device cuda, a few hundred steps each (the first line names precision)
#   3. torchrun with the NCCL backend (step train-ddpm-ddp): 1 process on the GPU, the DDP path under NCCL
#   4. the zoo on CUDA: genzoo sample zoo:ddpm-mnist (DPM-Solver++ 20 steps), zoo:flow-mnist, zoo:pixelcnn-mnist
#   5. #14's likelihood figures where a CPU cannot reach them: a 64-channel 12-layer PixelCNN (binarised MNIST,
#      nats) and the 256-way softmax head (8-bit MNIST, bits/dim), trained within the minutes left, each scored on
#      all 10,000 test images.
set -u
OUT=${1:?give the output folder}
MINUTES=${2:-7}
mkdir -p "$OUT/runs"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEVICE=${GENZOO_CHECK_DEVICE:-cuda}  # rehearsal without a GPU: GENZOO_CHECK_DEVICE=cpu STEPS=3 bash scripts/...
START=$(date +%s)
exec > >(tee "$OUT/log.txt") 2>&1

left() { echo $(( MINUTES * 60 - ($(date +%s) - START) )); }

step() {  # step NAME SECONDS COMMAND...: run with a time limit, record exit status and seconds
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "=== $name: exit $rc after $(( $(date +%s) - t0 )) s"
  local command="$*"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "${command//$'\n'/ }" >> "$OUT/steps.tsv"
}

step machine 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c \"
import torch, platform
print('torch', torch.__version__, 'python', platform.python_version(), 'cuda', torch.version.cuda)
print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none',
      'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())\""

for family in vae ddpm flow gan; do
  step "train-$family" 90 $PY -m genzoo train $family --device $DEVICE --max-steps ${STEPS:-300} --final-eval quick \
    --out "$OUT/runs/$family"
done

step train-ddpm-ddp 120 $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m genzoo train ddpm \
  --device $DEVICE --max-steps ${STEPS:-100} --final-eval skip --out "$OUT/runs/ddpm-ddp"

step zoo-ddpm 60 $PY -m genzoo sample zoo:ddpm-mnist --device $DEVICE --class 3 --n 64 --sampler dpm++2m --steps 20 \
  --out "$OUT/runs/zoo-ddpm-3s.png"
step zoo-flow 60 $PY -m genzoo sample zoo:flow-mnist --device $DEVICE --n 64 --out "$OUT/runs/zoo-flow.png"
step zoo-pixelcnn 90 $PY -m genzoo sample zoo:pixelcnn-mnist --device $DEVICE --n 64 --out "$OUT/runs/zoo-pixelcnn.png"

# the likelihood runs share what is left, minus a minute for scoring each and for packing the results
remaining=$(left)
train_min=$(( (remaining - 150) / 2 / 60 ))
if [ "$train_min" -ge 1 ]; then
  step pixelcnn-large $(( train_min * 60 + 75 )) $PY -m genzoo train pixelcnn --device $DEVICE --channels 64 \
    --layers 12 --epochs 12 --time-limit $train_min --eval-n 0 --out "$OUT/runs/pixelcnn-large"
  step pixelcnn-softmax $(( train_min * 60 + 75 )) $PY -m genzoo train pixelcnn --device $DEVICE --head softmax \
    --channels 64 --layers 12 --epochs 12 --time-limit $train_min --eval-n 0 \
    --out "$OUT/runs/pixelcnn-softmax"
else
  echo "=== no time left for the likelihood runs ($remaining s)"
fi

$PY - "$OUT" <<'EOF'
import json, pathlib, re, sys
out = pathlib.Path(sys.argv[1])
rows = []
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, seconds, command = line.split("\t", 3)
    row = {"step": name, "exit": int(rc), "seconds": int(seconds), "command": command}
    summary = out / "runs" / name.removeprefix("train-") / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        row.update({k: s.get(k) for k in ("device", "precision", "images_per_s", "steps", "train_wall_time_s")})
        row["eval"] = s.get("eval")
    rows.append(row)
(out / "gpu_checks.json").write_text(json.dumps(rows, indent=1))
print(json.dumps([{k: r.get(k) for k in ("step", "exit", "seconds", "precision", "images_per_s")} for r in rows]))
EOF
# what comes back is at most 16 MiB a file: the likelihood runs' weights (for the zoo or a record), and of the
# quick runs only their JSON and pictures
find "$OUT/runs" -name checkpoint.safetensors -delete
find "$OUT/runs" -name model.safetensors -not -path "*/pixelcnn-*" -delete
tar -czf "$OUT/runs.tar.gz" -C "$OUT" runs && rm -rf "$OUT/runs" "$OUT/steps.tsv"
