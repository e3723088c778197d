#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one short run (CI never has one): a session lent a GPU runs this at once.
#
#   bash scripts/gpu_checks.sh OUT [MINUTES] [LONG_MINUTES]
#
# with the device tool: command "bash scripts/gpu_checks.sh $OUT 9 4", timeout_s 580. Uses the machine's own python3
# and torch (genzoo from src/, nothing installed); every step has its own time limit and a failed step does not stop
# the others. MINUTES (default 9; fractions too) is the whole budget; LONG_MINUTES (default 4) the training minutes of each
# likelihood run. Writes OUT/log.txt (everything printed), OUT/gpu_checks.json (one row per step: command, exit
# status, seconds, and the figures it printed), and OUT/runs.tar.gz (split into OUT/runs.tar.gz.part-* of 15 MB:
# `cat runs.tar.gz.part-* | tar -xz`): the run folders (a finished likelihood run's weights, an unfinished one's
# checkpoint to resume on a CPU), and the zoo entries packed from the finished ones.
# Steps:
#   1. the likelihood runs start at once in the background, sharing the GPU with the checks (each alone uses a
#      fraction of it): #14's 64-channel 12-layer PixelCNN (binarised MNIST, nats) and its 256-way softmax head
#      (8-bit MNIST, bits/dim), and RealNVP with 64-channel coupling nets, ActNorm and variational dequantisation;
#      12 epochs each (cosine), scored at the end on all 10,000 test images
#   2. the machine: nvidia-smi, torch, whether bf16 is supported (what --precision auto picks)
#   3. genzoo train vae / ddpm (compiled: triton) / flow / gan --device cuda, a few hundred steps each
#   4. torchrun with the NCCL backend (step train-ddpm-ddp): 1 process on the GPU, the DDP path under NCCL
#   5. the zoo on CUDA: genzoo sample zoo:ddpm-mnist (DPM-Solver++ 20 steps), zoo:flow-mnist, zoo:pixelcnn-mnist
#   6. each finished likelihood run packed into the zoo on the GPU (scripts/zoo_add.py --device cuda: the packed
#      weights' NLL on all test images, FID/KID of 10,000 samples); RealNVP also with 8 dequantisation draws
set -u
OUT=${1:?give the output folder}
MINUTES=${2:-9}
LONG_MINUTES=${3:-4}
mkdir -p "$OUT/runs"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEVICE=${GENZOO_CHECK_DEVICE:-cuda}  # rehearsal without a GPU: GENZOO_CHECK_DEVICE=cpu STEPS=3 bash scripts/...
START=$(date +%s)
exec > >(tee "$OUT/log.txt") 2>&1

TOTAL=$(awk "BEGIN { print int($MINUTES * 60) }")
left() { echo $(( TOTAL - ($(date +%s) - START) )); }

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

JOBS=()
background() {  # background NAME SECONDS COMMAND...: a step in the background, its output in OUT/bg/NAME.log
  mkdir -p "$OUT/bg"
  step "$@" > "$OUT/bg/$1.log" 2>&1 &
  JOBS+=($!)
}
wait_jobs() { [ ${#JOBS[@]} -gt 0 ] && wait "${JOBS[@]}"; JOBS=(); }  # not `wait`: it would wait for the tee too

finished() {  # finished RUN: the run's summary says it trained to its end
  $PY -c "import json,sys; sys.exit(0 if json.load(open('$1/summary.json')).get('finished') else 1)" 2>/dev/null
}

# 1. the likelihood runs, in the background from the start; their time limit leaves the scoring its minutes
LIMIT=$(awk "BEGIN { print int($LONG_MINUTES * 60 + 150) }")  # training, then the final evaluation on all test images
LONG="--device $DEVICE --epochs ${LONG_EPOCHS:-12} --time-limit $LONG_MINUTES --eval-n 0 --final-eval full"
REHEARSAL=${REHEARSAL:-}  # e.g. "--subset 512" to rehearse on a CPU
background pixelcnn-large $LIMIT $PY -m genzoo train pixelcnn $LONG --channels 64 --layers 12 $REHEARSAL \
  --out "$OUT/runs/pixelcnn-large"
background pixelcnn-softmax $LIMIT $PY -m genzoo train pixelcnn $LONG --head softmax --channels 64 --layers 12 \
  $REHEARSAL --out "$OUT/runs/pixelcnn-softmax"
background realnvp-large $LIMIT $PY -m genzoo train realnvp $LONG --hidden 64 --actnorm true \
  --dequantisation variational $REHEARSAL --out "$OUT/runs/realnvp-large"

# 2-5. the checks
step machine 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c \"
import torch, platform
print('torch', torch.__version__, 'python', platform.python_version(), 'cuda', torch.version.cuda)
print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none',
      'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())\""

step train-ddpm 120 $PY -m genzoo train ddpm --device $DEVICE --compile true --max-steps ${STEPS:-300} \
  --final-eval quick --out "$OUT/runs/ddpm"
for family in vae flow gan; do
  step "train-$family" 90 $PY -m genzoo train $family --device $DEVICE --max-steps ${STEPS:-300} --final-eval quick \
    --out "$OUT/runs/$family"
done

step train-ddpm-ddp 90 $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m genzoo train ddpm \
  --device $DEVICE --max-steps ${STEPS:-100} --final-eval skip --out "$OUT/runs/ddpm-ddp"

step zoo-ddpm 60 $PY -m genzoo sample zoo:ddpm-mnist --device $DEVICE --class 3 --n 64 --sampler dpm++2m --steps 20 \
  --out "$OUT/runs/zoo-ddpm-3s.png"
step zoo-flow 60 $PY -m genzoo sample zoo:flow-mnist --device $DEVICE --n 64 --out "$OUT/runs/zoo-flow.png"
step zoo-pixelcnn 60 $PY -m genzoo sample zoo:pixelcnn-mnist --device $DEVICE --n 64 --out "$OUT/runs/zoo-pixelcnn.png"

# 6. the finished likelihood runs into the zoo, scored on the GPU within what is left (a minute kept for packing)
wait_jobs
budget=$(( $(left) - 60 ))
echo "=== scoring with ${budget}s left"
if [ "$budget" -gt 30 ]; then
  if finished "$OUT/runs/pixelcnn-large"; then
    background zoo-pixelcnn-large $budget $PY scripts/zoo_add.py "$OUT/runs/pixelcnn-large" pixelcnn-mnist-large \
      --device $DEVICE --fid-n ${FID_N:-10000} \
      --command "genzoo train pixelcnn $LONG --channels 64 --layers 12 --out runs/pixelcnn-large"
  fi
  if finished "$OUT/runs/realnvp-large"; then
    background zoo-realnvp-large $budget $PY scripts/zoo_add.py "$OUT/runs/realnvp-large" realnvp-mnist-large \
      --device $DEVICE --fid-n ${FID_N:-10000} --command "genzoo train realnvp $LONG --hidden 64 --actnorm true \
--dequantisation variational --out runs/realnvp-large"
    background realnvp-draws8 $budget $PY -m genzoo eval "$OUT/runs/realnvp-large" --device $DEVICE \
      --dequant-draws 8 --n 0
  fi
  wait_jobs
fi
for log in "$OUT"/bg/*.log; do echo "##### $log"; tail -n 40 "$log"; done

$PY - "$OUT" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = []
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, seconds, command = line.split("\t", 3)
    row = {"step": name, "exit": int(rc), "seconds": int(seconds), "command": command}
    summary = out / "runs" / name.removeprefix("train-") / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        row.update({k: s.get(k) for k in ("device", "precision", "images_per_s", "steps", "train_wall_time_s",
                                          "finished")})
        row["eval"] = s.get("eval")
    rows.append(row)
(out / "gpu_checks.json").write_text(json.dumps(rows, indent=1))
print(json.dumps([{k: r.get(k) for k in ("step", "exit", "seconds", "precision", "images_per_s")} for r in rows]))
EOF
# what comes back: the likelihood runs (a finished one without its checkpoint, an unfinished one with it and
# without model.safetensors, which the checkpoint holds), the zoo entries packed here, the background steps' logs,
# and of the quick runs only their JSON and pictures; in parts of 15 MB (a file comes back only under 16 MiB)
for run in "$OUT"/runs/*/; do
  case "$run" in
    */pixelcnn-large/|*/pixelcnn-softmax/|*/realnvp-large/)
      if finished "$run"; then rm -f "$run/checkpoint.safetensors"; else rm -f "$run/model.safetensors"; fi
      case "$run" in */pixelcnn-softmax/) finished "$run" || rm -f "$run/checkpoint.safetensors" ;; esac ;;  # 64 MiB
    *) rm -f "$run"/*.safetensors ;;
  esac
done
mkdir -p "$OUT/runs/zoo"
for entry in src/genzoo/weights/zoo/*-large; do [ -d "$entry" ] && cp -r "$entry" "$OUT/runs/zoo/"; done
mv "$OUT/bg" "$OUT/runs/logs" 2>/dev/null
tar -czf "$OUT/runs.tar.gz" -C "$OUT" runs && rm -rf "$OUT/runs" "$OUT/steps.tsv"
split -b 15000000 "$OUT/runs.tar.gz" "$OUT/runs.tar.gz.part-" && rm "$OUT/runs.tar.gz"
ls -la "$OUT"
