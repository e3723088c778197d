#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one short run (CI never has one): a session lent a GPU runs this at once.
#
#   bash scripts/gpu_checks.sh OUT [MINUTES] [LONG_MINUTES]
#
# with the device tool: command "bash scripts/gpu_checks.sh $OUT 9.5 6.5", timeout_s 595. Uses the machine's own python3
# and torch (genzoo from src/, nothing installed); every step has its own time limit and a failed step does not stop
# the others. MINUTES (default 9; fractions too) is the whole budget; LONG_MINUTES (default 4) the training minutes of each
# long run. Writes OUT/log.txt (everything printed), OUT/gpu_checks.json (one row per step: command, exit
# status, seconds, and the figures it printed), and OUT/runs.tar.gz (split into OUT/runs.tar.gz.part-* of 15 MB:
# `cat runs.tar.gz.part-* | tar -xz`): the run folders (a finished long run's weights, an unfinished one's
# checkpoint to resume on a CPU), and the zoo entries packed from the finished ones.
# Steps:
#   1. the long runs start at once in the background, sharing the GPU with the checks: what is left of #15, the
#      EBM (FID <= 250; zoo:ebm-mnist 407.6 after 7 CPU epochs, 405.9 after 4 GPU epochs of the same recipe, while
#      that run's replay buffer scored 233.8: BENCHMARKS.md, "EBM samples by chain length"). Two recipes for 12
#      epochs each: the zoo's buffer recipe (ebm-zoo) and the same net trained short-run (ebm-shortrun: every
#      chain from noise for 60 steps, sampled with the same 60 steps, Nijkamp et al. 2019)
#   2. the machine: nvidia-smi, torch, whether bf16 is supported (what --precision auto picks)
#   3. genzoo train vae / ddpm (compiled: triton) / flow / gan --device cuda, a few hundred steps each
#   4. torchrun with the NCCL backend (step train-ddpm-ddp): 1 process on the GPU, the DDP path under NCCL
#   5. the zoo on CUDA: genzoo sample zoo:ddpm-mnist (DPM-Solver++ 20 steps), zoo:flow-mnist, zoo:pixelcnn-mnist
#   6. both EBMs packed into the zoo on the GPU as ebm-mnist-gpu and ebm-mnist-shortrun-gpu (scripts/zoo_add.py --device
#      cuda: FID/KID of 10,000 samples of the packed weights), even if the time limit cut them, and the buffer
#      recipe's replay buffer scored (benchmarks/ebm_sampling.py)
# Session 19 ran it with the likelihood runs of #14 (`bash scripts/gpu_checks.sh $OUT 9.5 3.5`; a resumed run then
# needed the layout mend of runs.match_layouts), session 20 with the EBM's 4 epochs, the ODE rescorings of #15 and
# #14's follow-ups (`... 9.5 4`): every check passed both times. BENCHMARKS.md has it all.
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

# 1. the long runs, in the background from the start; their time limit leaves the scoring its minutes
LIMIT=$(awk "BEGIN { print int($LONG_MINUTES * 60 + 60) }")  # training, its pictures and its last checkpoint
LONG="--device $DEVICE --time-limit $LONG_MINUTES --final-eval skip --preset zoo --epochs ${EBM_EPOCHS:-12}"
SHORTRUN="--reinit 1.0 --buffer-size 1 --sample-steps 60"  # every chain from noise, sampled as trained
REHEARSAL=${REHEARSAL:-}  # e.g. "--subset 256" to rehearse on a CPU
background ebm-zoo $LIMIT $PY -m genzoo train ebm $LONG $REHEARSAL --out "$OUT/runs/ebm-zoo"
background ebm-shortrun $LIMIT $PY -m genzoo train ebm $LONG $SHORTRUN $REHEARSAL --out "$OUT/runs/ebm-shortrun"

# 2-5. the checks (SKIP_CHECKS=1: only the long runs, to rehearse them on a CPU)
if [ -z "${SKIP_CHECKS:-}" ]; then
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
fi

# 6. the EBMs into the zoo, scored on the GPU within what is left (a minute kept for packing)
wait_jobs
budget=$(( $(left) - 60 ))
echo "=== scoring with ${budget}s left"
if [ "$budget" -gt 30 ]; then
  for run in ebm-zoo ebm-shortrun; do  # packed even if the time limit cut them
    [ -f "$OUT/runs/$run/model.safetensors" ] || continue
    name=ebm-mnist-gpu extra=""
    [ $run = ebm-shortrun ] && name=ebm-mnist-shortrun-gpu extra=" $SHORTRUN"
    background "zoo-$run" $budget $PY scripts/zoo_add.py "$OUT/runs/$run" $name --device \
      $DEVICE --fid-n ${FID_N:-10000} --command "genzoo train ebm $LONG$extra --out runs/$run"
  done
  [ -f "$OUT/runs/ebm-zoo/checkpoint.safetensors" ] && background buffer-ebm-zoo $budget $PY \
    benchmarks/ebm_sampling.py --run "$OUT/runs/ebm-zoo" --buffer "$OUT/runs/ebm-zoo/checkpoint.safetensors" \
    --steps 256 1024 --fid-n ${BUFFER_FID_N:-10000} --out "$OUT/runs/ebm_sampling.json"
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
    */ebm-zoo/|*/ebm-shortrun/)  # a finished run's weights, an unfinished one's checkpoint
      if finished "$run"; then rm -f "$run/checkpoint.safetensors"; else rm -f "$run/model.safetensors"; fi ;;
    *) rm -f "$run"/*.safetensors ;;
  esac
done
for ckpt in ebm-zoo ebm-shortrun; do  # what comes back is at most 64 MiB in all
  [ "$(du -sb "$OUT/runs" | cut -f1)" -gt 58000000 ] && rm -f "$OUT/runs/$ckpt/checkpoint.safetensors"
done
mkdir -p "$OUT/runs/zoo"
for entry in src/genzoo/weights/zoo/*-gpu; do [ -d "$entry" ] && cp -r "$entry" "$OUT/runs/zoo/"; done
mv "$OUT/bg" "$OUT/runs/logs" 2>/dev/null
tar -czf "$OUT/runs.tar.gz" -C "$OUT" runs && rm -rf "$OUT/runs" "$OUT/steps.tsv"
split -b 15000000 "$OUT/runs.tar.gz" "$OUT/runs.tar.gz.part-" && rm "$OUT/runs.tar.gz"
ls -la "$OUT"
