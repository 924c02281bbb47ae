#!/usr/bin/env bash
# One-call GPU recipe (one H100, 16 cores) for the phantom-skin generator (third release) and the skin
# attribute oracle. Why one script: a lent GPU session has ~10 minutes of device time, so data, both
# trainings and packing run in one command, concurrently, and the UNet stops at a wall-clock deadline.
# Stopping at a checkpoint is exact: the learning rate is constant after warm-up, so finishing with
# `--resume --steps K` (K = last checkpoint) gives the weights of an uninterrupted `--steps K` run.
#
# Run once, 2026-11-26, on one H100 (518 s): the skin oracle it trained ships (width 48, chosen by validation
# loss); the generator, with a wider VAE (block_out_channels [24, 48, 96], layers_per_block 2 in CONFIG), did
# not beat the release and was not shipped (numbers in xcounter/zoo/phantom-skin/RECIPE.md).
# Env knobs (defaults = that run): CONFIG (from-scratch config), N_GEN, N_ORACLE, VAE_STEPS, DEADLINE (s), CKPT, ORACLE_EPOCHS,
# SKIP_INSTALL=1 to use the current environment (CPU dry run), OUT (results folder).
set -u
START=$(date +%s)
OUT=${OUT:-/tmp/skin_gpu_out}; mkdir -p "$OUT"
CONFIG=${CONFIG:-phantom-skin}; N_GEN=${N_GEN:-20000}; N_ORACLE=${N_ORACLE:-24000}; VAE_STEPS=${VAE_STEPS:-3000}
DEADLINE=${DEADLINE:-470}; CKPT=${CKPT:-500}; ORACLE_EPOCHS=${ORACLE_EPOCHS:-40}
WORK=${WORK:-runs/skin-gpu}; mkdir -p "$WORK"
el() { echo $(( $(date +%s) - START )); }
say() { echo "[$(el)s] $*" | tee -a "$OUT/run.log"; }
if [ -z "${SKIP_INSTALL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1 TQDM_MININTERVAL=20
xc() { python3 -c "from xcounter.cli import run; run()" "$@"; }
say "$(nvidia-smi -L 2>/dev/null | head -1) | $(python3 -c 'import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__, torch.cuda.is_available())')"

# 1. data: generator set first (more workers), oracle set beside it
xc phantoms skin --n "$N_GEN" --out "$WORK/data-gen" --seed 0 --workers 10 > "$WORK/data_gen.log" 2>&1 &
GEN_DATA=$!
xc phantoms skin --n "$N_ORACLE" --out "$WORK/data-oracle" --seed 33 --workers 6 > "$WORK/data_oracle.log" 2>&1 &
ORACLE_DATA=$!
wait $GEN_DATA || { say "generator data failed"; tail -3 "$WORK/data_gen.log" | tee -a "$OUT/run.log"; }
say "generator data done: $(tail -1 "$WORK/data_gen.log")"

# 2. generator: VAE then UNet + text encoder until the deadline
FT=(finetune --data "$WORK/data-gen" --out "$WORK/phantom-skin" --from-scratch "$CONFIG"
    --vae-steps "$VAE_STEPS" --vae-lr 0.001 --vae-batch-size 32 --batch-size 64 --lr 0.0003 --seed 0
    --caption-dropout 0.1 --checkpoint-every "$CKPT" --ema --quiet)
setsid bash -c "$(declare -f xc); xc ${FT[*]@Q} --steps 1000000 --keep-checkpoints" > "$WORK/finetune.log" 2>&1 &
FT_PID=$!

# 3. oracle variants (chosen afterwards by validation loss, never by test)
wait $ORACLE_DATA || say "oracle data failed"
say "oracle data done: $(tail -1 "$WORK/data_oracle.log")"
ORACLES=()
for variant in "48 $ORACLE_EPOCHS" "64 $ORACLE_EPOCHS" "64 $((ORACLE_EPOCHS * 3 / 2))"; do
  set -- $variant
  mkdir -p "$WORK/oracle-w$1-e$2"
  python3 -m xcounter.phantoms.oracle --data "$WORK/data-oracle" --out "$WORK/oracle-w$1-e$2/skin.pt" \
    --domain skin --epochs "$2" --seed 0 --width "$1" > "$WORK/oracle-w$1-e$2/train.log" 2>&1 &
  ORACLES+=($!)
done

# 4. deadline: stop the UNet at its last checkpoint, finish the run there
while [ "$(el)" -lt "$DEADLINE" ] && kill -0 $FT_PID 2>/dev/null; do sleep 5; done
kill -TERM -- -$FT_PID 2>/dev/null; sleep 3; kill -KILL -- -$FT_PID 2>/dev/null
say "finetune stopped: $(tail -c 300 "$WORK/finetune.log" | tr '\n' ' ') | $(grep '"vae"' "$WORK/phantom-skin/train_log.jsonl" | tail -1) | $(tail -1 "$WORK/phantom-skin/train_log.jsonl")"
STEP=$(python3 -c "import torch; print(torch.load('$WORK/phantom-skin/checkpoints/unet.pt', map_location='cpu', weights_only=False)['step'])" 2>/dev/null)
if [ -n "$STEP" ]; then
  say "finishing the generator at UNet step $STEP"
  xc "${FT[@]}" --steps "$STEP" --resume >> "$WORK/finetune.log" 2>&1 || say "finish failed: $(tail -2 "$WORK/finetune.log")"
  tar czf "$OUT/phantom_skin.tgz" -C "$WORK" --exclude=checkpoints phantom-skin
  split -b 15m "$OUT/phantom_skin.tgz" "$OUT/phantom_skin.tgz.part-" && rm "$OUT/phantom_skin.tgz"
else
  say "no UNet checkpoint"
fi

# 5. oracles: whatever finished by now
for pid in "${ORACLES[@]}"; do
  while [ "$(el)" -lt $((DEADLINE + 60)) ] && kill -0 "$pid" 2>/dev/null; do sleep 3; done
  kill "$pid" 2>/dev/null
done
tar czf "$OUT/oracles.tgz" -C "$WORK" $(cd "$WORK" && ls -d oracle-*)
tar czf "$OUT/logs.tgz" -C "$WORK" data_gen.log data_oracle.log finetune.log $(cd "$WORK" && ls phantom-skin/train_log.jsonl 2>/dev/null)
say "done; $(ls -la "$OUT" | tail -n +2 | awk '{print $5, $9}' | tr '\n' ' ')"
