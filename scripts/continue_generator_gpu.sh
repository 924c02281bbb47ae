#!/usr/bin/env bash
# One-call GPU recipe (one H100, 16 cores): continue a shipped phantom generator (UNet + text encoder; VAE,
# tokenizer and latent space kept) on freshly rendered phantoms, several variants side by side.
# Why one script: a lent GPU session has ~15 minutes of device time in all, the machine's start included, so
# data, trainings and packing run in one command and the UNets stop at a wall-clock deadline. Stopping at a
# checkpoint is exact: the learning rate is constant after warm-up, so finishing with `--resume --steps K`
# (K = last checkpoint) gives the weights of an uninterrupted `--steps K` run.
#
# Env knobs: DOMAIN (skin | cxr), BASE (generator folder), VARIANTS ("name:lr:batch ..."), N_DATA, DATA_SEED,
# SEED, DEADLINE (s from start), CKPT, WORKERS, SKIP_INSTALL=1 (use this environment: CPU dry run),
# DEVICE (cuda | cpu), OUT (results folder), WORK (scratch folder).
set -u
START=$(date +%s)
OUT=${OUT:-/tmp/continue_gpu_out}; mkdir -p "$OUT"
DOMAIN=${DOMAIN:-skin}; BASE=${BASE:-xcounter/zoo/phantom-$DOMAIN}
VARIANTS=${VARIANTS:-"a:0.0001:256 b:0.00005:256"}
N_DATA=${N_DATA:-30000}; DATA_SEED=${DATA_SEED:-0}; SEED=${SEED:-2}
DEADLINE=${DEADLINE:-360}; CKPT=${CKPT:-250}; WORKERS=${WORKERS:-14}; DEVICE=${DEVICE:-cuda}
WORK=${WORK:-runs/continue-gpu}; mkdir -p "$WORK"
source scripts/gpu_setup.sh

xc phantoms "$DOMAIN" --n "$N_DATA" --out "$WORK/data" --seed "$DATA_SEED" --workers "$WORKERS" > "$WORK/data.log" 2>&1 \
  || { say "data failed: $(tail -3 "$WORK/data.log")"; exit 1; }
say "data done: $(tail -c 200 "$WORK/data.log" | tr '\r' '\n' | tail -1)"

ft_args() {  # finetune options of variant $1 (lr $2, batch $3)
  echo --data "$WORK/data" --out "$WORK/gen-$1" --base "$BASE" --train-text-encoder --batch-size "$3" --lr "$2" \
       --seed "$SEED" --caption-dropout 0.1 --checkpoint-every "$CKPT" --ema --device "$DEVICE" --quiet
}
declare -A PIDS
for variant in $VARIANTS; do
  IFS=: read -r name lr batch <<< "$variant"
  setsid bash -c "$(declare -f xc); xc finetune $(ft_args "$name" "$lr" "$batch") --steps 1000000 --keep-checkpoints" \
    > "$WORK/finetune-$name.log" 2>&1 &
  PIDS[$name]=$!
done
stop_at_deadline "$DEADLINE" "${PIDS[@]}"

FINISH=()
for variant in $VARIANTS; do
  IFS=: read -r name lr batch <<< "$variant"; run="$WORK/gen-$name"
  say "$name stopped: $(tail -1 "$run/train_log.jsonl" 2>/dev/null) | $(tail -2 "$WORK/finetune-$name.log" | tr '\n' ' ')"
  step=$(python3 -c "import torch; print(torch.load('$run/checkpoints/unet.pt', map_location='cpu', weights_only=False)['step'])" 2>/dev/null)
  if [ -z "$step" ]; then say "$name: no UNet checkpoint"; continue; fi
  say "finishing $name at UNet step $step"
  ( xc finetune $(ft_args "$name" "$lr" "$batch") --steps "$step" --resume >> "$WORK/finetune-$name.log" 2>&1 \
      && python3 scripts/ship_generator.py "$run" "$WORK/ship/gen-$name" >> "$WORK/finetune-$name.log" 2>&1 \
      && cp "$run"/*train_log.jsonl "$WORK/ship/gen-$name/" \
      && tar czf "$OUT/gen-$name.tgz" -C "$WORK/ship" "gen-$name" ) || say "$name: finish failed: $(tail -2 "$WORK/finetune-$name.log")" &
  FINISH+=($!)
done
for pid in "${FINISH[@]}"; do wait "$pid"; done
tar czf "$OUT/logs.tgz" -C "$WORK" $(cd "$WORK" && ls *.log)
say "done; $(ls -la "$OUT" | tail -n +2 | awk '{print $5, $9}' | tr '\n' ' ')"
