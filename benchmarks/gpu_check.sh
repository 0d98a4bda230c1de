#!/usr/bin/env bash
# GPU proof in one command (about 8 minutes on one GPU): writes every figure to OUT/gpu_check.json.
#
#   bash benchmarks/gpu_check.sh [--device cuda|cpu] [--out DIR] [--wheels DIR] [--python PY] [--only NAMES]
#
# --only outputs,train,infer runs just those parts (comma-separated: outputs, train_step, train, resume, infer,
# onnx).
#
# 1. CUDA against CPU outputs of BSRT-S, BSRT-L and DCLS, same weights and input, every implementation
#    (fp32 <= 1e-4 relative; bf16/fp16 autocast <= 1e-2)                       -> outputs.json
# 2. benchmarks/train_step.py for BSRT-S and -L at fp32/bf16/fp16, implementations reference, fast and auto,
#    interleaved                                                                 -> train_step.json
# 3. 30 iterations of train.py on options/train_synthetic.yml shrunk by --force_yml, on generated sample data,
#    under torchrun --nproc_per_node=1 (NCCL on CUDA), then a resume to 40     -> train.json
# 3b. resume equality: the same run to RESUME_ITERS straight, and to ITERS then --auto_resume, both with
#    train.deterministic=true (single process); net_g and EMA weights compared bit for bit (CPU: equal; CUDA: equal
#    where every kernel is deterministic, else the largest difference is reported)              -> resume.json
# 4. infer.py --device cuda --precision bf16 on 80x80 packed 14-frame bursts, BSRT-S and -L, ms per burst after
#    the first (warm-up) burst                                                   -> infer_S.json, infer_L.json
# 5. ONNX Runtime CUDA provider: the first level's weights exported by bsr-export, infer.py on the same bursts,
#    ms per burst (skipped with the reason without onnxruntime-gpu or on --device cpu)  -> onnx.json
# 6. everything merged                                                           -> gpu_check.json
#
# --device cpu runs the same steps at tiny sizes (the test suite does this). --wheels DIR installs lmdb, rawpy and
# optuna from wheels in DIR (pip --no-index) when they are missing; without them the parts that need them are
# skipped with a message (none of the steps above needs them). A failing step is recorded and the next one runs;
# the exit status is 1 if any step failed.
set -u
DEVICE=cuda
OUT=experiments/gpu_check
WHEELS=""
PY=${PYTHON:-python}
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --only) ONLY=",$2,"; shift 2 ;;
    -h|--help) sed -n 2,23p "$0"; exit 0 ;;
    *) echo "gpu_check.sh: error: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in
  cuda|cpu) ;;
  *) echo "gpu_check.sh: error: --device must be cuda or cpu, got $DEVICE" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.." || exit 2
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STATUS="$OUT/status.json"
echo "{" > "$STATUS.tmp"
FAILED=0

wanted() {  # wanted PART: whether --only selects PART (everything without --only)
  [ -z "$ONLY" ] || [[ "$ONLY" == *",$1,"* ]]
}

step() {  # step NAME LIMIT_S COMMAND...: run, time and record the exit status
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name" >&2
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  if [ $rc -ne 0 ]; then
    FAILED=1
    echo "   $name failed (exit $rc), see $OUT/$name.log" >&2
    tail -5 "$OUT/$name.log" >&2
  fi
  echo "  \"$name\": {\"rc\": $rc, \"seconds\": $((SECONDS - t0))}," >> "$STATUS.tmp"
}

# ---------------------------------------------------------------------------------- 0. optional packages
for pkg in lmdb rawpy optuna; do
  if ! $PY -c "import $pkg" 2>/dev/null; then
    if [ -n "$WHEELS" ]; then
      $PY -m pip install -q --no-index --find-links "$WHEELS" "$pkg" >/dev/null 2>&1 \
        && echo "installed $pkg from $WHEELS" >&2 || echo "note: $pkg not installed (no wheel in $WHEELS)" >&2
    else
      echo "note: $pkg is missing (pass --wheels DIR to install it); LMDB, RAW-file and tuning parts are skipped" >&2
    fi
  fi
done

if [ "$DEVICE" = cpu ]; then
  TINY=--tiny
  STEP_ARGS=(--levels S --net level=null --net embed_dim=12 --net 'depths=[1,1]' --net num_heads=2 --burst 2
             --batch 1 --patch 192 --precisions fp32 --impl reference fast --steps 1 --reps 1 --warmup 0)
  NET=(network_g.level=null network_g.embed_dim=12 'network_g.depths=[1,1]' network_g.num_heads=2
       network_g.burst_size=2 datasets.train.burst_size=2 datasets.val.burst_size=2 datasets.train.crop_size=192
       datasets.train.batch_size_per_gpu=1 train.precision=fp32)
  ITERS=4; RESUME_ITERS=6; INFER_LEVELS=(tiny); PACKED=24; FRAMES=2; BURSTS=2
else
  TINY=""
  STEP_ARGS=(--levels S L --precisions fp32 bf16 fp16 --impl reference fast auto --batch 2 --steps 3 --reps 3
             --warmup 2 --device cuda)
  NET=(network_g.level=S datasets.train.batch_size_per_gpu=4 train.precision=bf16)
  ITERS=30; RESUME_ITERS=40; INFER_LEVELS=(S L); PACKED=80; FRAMES=14; BURSTS=6
fi

# ---------------------------------------------------------------------------------- 1. outputs
wanted outputs && step outputs 900 $PY benchmarks/gpu_check.py outputs --device "$DEVICE" $TINY \
  --json "$OUT/outputs.json"

# ---------------------------------------------------------------------------------- 2. train step
wanted train_step && step train_step 1800 $PY benchmarks/train_step.py "${STEP_ARGS[@]}" --json "$OUT/train_step.json"

# ---------------------------------------------------------------------------------- 3. train + resume
SAMPLE="$OUT/sample"
TRAIN_SET=(name=gpu_check_train "path.experiments_root=$OUT/train" prepare_sample_data="$SAMPLE"
           "datasets.train.dataroot=$SAMPLE/zurich" "datasets.val.dataroot=$SAMPLE/SyntheticBurstVal"
           datasets.train.num_worker_per_gpu=2 datasets.train.persistent_workers=false
           datasets.val.num_worker_per_gpu=0 network_g.spynet_path=null
           "train.scheduler.milestones=[1000000]" val.val_freq=1000000 logger.print_freq=5
           logger.save_checkpoint_freq=$ITERS logger.use_tb_logger=false "${NET[@]}")
PORT=$((29500 + $$ % 1000))
if wanted train; then
rm -rf "$OUT/train"
step train 900 $PY -m torch.distributed.run --nproc_per_node=1 --master_port $PORT train.py \
  -opt options/train_synthetic.yml --launcher pytorch --force_yml "${TRAIN_SET[@]}" train.total_iter=$ITERS
step train_resume 600 $PY -m torch.distributed.run --nproc_per_node=1 --master_port $((PORT + 1)) train.py \
  -opt options/train_synthetic.yml --launcher pytorch --auto_resume --force_yml "${TRAIN_SET[@]}" \
  train.total_iter=$RESUME_ITERS
fi
wanted train && $PY - "$OUT" "$ITERS" "$RESUME_ITERS" > "$OUT/train.json" <<'EOF'
import json, re, sys
from pathlib import Path
out, iters, resume = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
logs = {name: (out / f'{name}.log').read_text(errors='replace') if (out / f'{name}.log').is_file() else ''
        for name in ('train', 'train_resume')}
states = sorted(str(p.relative_to(out)) for p in (out / 'train').rglob('*.state')) if (out / 'train').is_dir() else []
last = {k: (re.findall(r'iter[:\s]+([\d,]+)', v) or [None])[-1] for k, v in logs.items()}
print(json.dumps({'iters': iters, 'resume_to': resume, 'nccl': 'nccl' in logs['train'].lower(),
                  'last_logged_iter': last, 'training_states': states}, indent=2))
EOF

# ---------------------------------------------------------------------------------- 3b. resume equality
if wanted resume; then
RESUME_SET=(prepare_sample_data="$SAMPLE" "datasets.train.dataroot=$SAMPLE/zurich"
            "datasets.val.dataroot=$SAMPLE/SyntheticBurstVal" datasets.train.num_worker_per_gpu=2
            datasets.val.num_worker_per_gpu=0 network_g.spynet_path=null "train.scheduler.milestones=[1000000]"
            val.val_freq=1000000 logger.print_freq=5 logger.save_checkpoint_freq=$ITERS logger.use_tb_logger=false
            train.deterministic=true train.ema_decay=0.9 "${NET[@]}")
rm -rf "$OUT/resume_straight" "$OUT/resume_resumed"
step resume_straight 900 $PY train.py -opt options/train_synthetic.yml --force_yml "${RESUME_SET[@]}" \
  name=resume_straight "path.experiments_root=$OUT/resume_straight" train.total_iter=$RESUME_ITERS
step resume_first 900 $PY train.py -opt options/train_synthetic.yml --force_yml "${RESUME_SET[@]}" \
  name=resume_resumed "path.experiments_root=$OUT/resume_resumed" train.total_iter=$ITERS
step resume_second 900 $PY train.py -opt options/train_synthetic.yml --auto_resume --force_yml "${RESUME_SET[@]}" \
  name=resume_resumed "path.experiments_root=$OUT/resume_resumed" train.total_iter=$RESUME_ITERS
$PY - "$OUT" "$RESUME_ITERS" "$DEVICE" > "$OUT/resume.json" <<'EOF'
import json, sys
from pathlib import Path
import torch
out, it, device = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
row = {'device': device, 'iters': it, 'deterministic': True}
try:
    a, b = (torch.load(out / d / 'models' / f'net_g_{it}.pth', map_location='cpu', weights_only=True)
            for d in ('resume_straight', 'resume_resumed'))
    for key in ('params', 'params_ema'):
        diffs = [(a[key][k].double() - b[key][k].double()).abs().max().item() for k in a[key] if a[key][k].numel()]
        row[f'{key}_equal'] = all(torch.equal(a[key][k], b[key][k]) for k in a[key])
        row[f'{key}_max_abs_diff'] = max(diffs, default=0.0)
except (OSError, KeyError, RuntimeError) as exc:
    row['error'] = f'{type(exc).__name__}: {exc}'
print(json.dumps(row, indent=2))
EOF
fi

# ---------------------------------------------------------------------------------- 4. inference timing
wanted infer || INFER_LEVELS=()
for level in "${INFER_LEVELS[@]}"; do
  D="$OUT/infer_$level"
  rm -rf "$D"
  step "infer_data_$level" 300 $PY benchmarks/gpu_check.py infer-data --dir "$D" --level "$level" \
    --bursts $BURSTS --packed $PACKED --burst $FRAMES
  EXTRA=()
  [ "$level" = tiny ] && EXTRA=(--arch BSRT)
  step "infer_$level" 600 $PY infer.py --weights "$D/bsrt_$level.pth" --input "$D/bursts" --output "$D/out" \
    --device "$DEVICE" --precision bf16 --no-linear "${EXTRA[@]}"
  $PY benchmarks/gpu_check.py infer-time --summary "$D/out/infer_summary.json" --json "$OUT/infer_$level.json" \
    || FAILED=1
done

# ---------------------------------------------------------------------------------- 5. ONNX Runtime CUDA
if wanted onnx; then
  level=${INFER_LEVELS[0]:-tiny}
  D="$OUT/infer_$level"
  [ -f "$D/bsrt_$level.pth" ] || $PY benchmarks/gpu_check.py infer-data --dir "$D" --level "$level" \
    --bursts $BURSTS --packed $PACKED --burst $FRAMES
  step onnx 900 $PY benchmarks/gpu_check.py onnx --dir "$D" --level "$level" --packed $PACKED --device "$DEVICE" \
    --json "$OUT/onnx.json"
fi

# ---------------------------------------------------------------------------------- 6. report
echo "  \"failed\": $FAILED" >> "$STATUS.tmp"
echo "}" >> "$STATUS.tmp"
mv "$STATUS.tmp" "$STATUS"
PARTS=("$OUT/status.json")
for part in outputs train_step train resume onnx; do wanted $part && PARTS+=("$OUT/$part.json"); done
for level in "${INFER_LEVELS[@]}"; do PARTS+=("$OUT/infer_$level.json"); done
$PY benchmarks/gpu_check.py merge --json "$OUT/gpu_check.json" "${PARTS[@]}"
exit $FAILED
