#!/usr/bin/env bash
# One-call GPU recipe (one H100, 16 cores) for the phantom-skin generator and the skin attribute oracle.
# Why one script: a lent GPU session has ~10 minutes of device time, so data, the trainings and packing run
# in one command, concurrently, and the UNets stop at a wall-clock deadline. Stopping at a checkpoint is
# exact: the learning rate is constant after warm-up, so finishing with `--resume --steps K` (K = last
# checkpoint) gives the weights of an uninterrupted `--steps K` run.
#
# Runs (numbers in xcounter/zoo/phantom-skin/RECIPE.md):
# - 2026-11-26, third session (518 s): one generator with a wider VAE (block_out_channels [24, 48, 96],
#   layers_per_block 2), batch 64; its oracle (width 48) shipped, the generator did not beat the release.
# - 2026-11-26, sixth session: the renderer's redder dark skin tones; two generators side by side (the
#   release's architecture, VAE trained with the worst-pixels detail term at two weights, UNet batch 128).
# Env knobs (defaults = the latest run): CONFIG (from-scratch config), GEN_VARIANTS ("name:detail-weight ..."),
# N_GEN, N_ORACLE, VAE_STEPS, UNET_BATCH, DEADLINE (s), CKPT, ORACLE_VARIANTS ("width:epochs ..."),
# SKIP_INSTALL=1 to use the current environment (CPU dry run), OUT (results folder), WORK (scratch folder).
set -u
START=$(date +%s)
OUT=${OUT:-/tmp/skin_gpu_out}; mkdir -p "$OUT"
CONFIG=${CONFIG:-phantom-skin}; GEN_VARIANTS=${GEN_VARIANTS:-"d033:0.33 d100:1.0"}
N_GEN=${N_GEN:-20000}; N_ORACLE=${N_ORACLE:-24000}; VAE_STEPS=${VAE_STEPS:-3000}; UNET_BATCH=${UNET_BATCH:-128}
DEADLINE=${DEADLINE:-430}; CKPT=${CKPT:-250}; ORACLE_VARIANTS=${ORACLE_VARIANTS:-"48:40 64:60"}
WORKERS=${WORKERS:-8}
WORK=${WORK:-runs/skin-gpu}; mkdir -p "$WORK"
source scripts/gpu_setup.sh

# 1. data: generator set first (more workers), oracle set beside it
xc phantoms skin --n "$N_GEN" --out "$WORK/data-gen" --seed 0 --workers "$WORKERS" > "$WORK/data_gen.log" 2>&1 &
GEN_DATA=$!
xc phantoms skin --n "$N_ORACLE" --out "$WORK/data-oracle" --seed 33 --workers $((WORKERS / 2 + 2)) > "$WORK/data_oracle.log" 2>&1 &
ORACLE_DATA=$!
wait $GEN_DATA || { say "generator data failed"; tail -3 "$WORK/data_gen.log" | tee -a "$OUT/run.log"; }
say "generator data done: $(tail -1 "$WORK/data_gen.log")"

# 2. generators: VAE then UNet + text encoder until the deadline, one process per variant
ft_args() {  # the finetune options of variant $1 with detail weight $2
  echo --data "$WORK/data-gen" --out "$WORK/gen-$1" --from-scratch "$CONFIG" --vae-steps "$VAE_STEPS" \
       --vae-lr 0.001 --vae-batch-size 32 --vae-detail-weight "$2" --batch-size "$UNET_BATCH" --lr 0.0003 \
       --seed 0 --caption-dropout 0.1 --checkpoint-every "$CKPT" --ema --quiet
}
declare -A FT_PIDS
for variant in $GEN_VARIANTS; do
  name=${variant%%:*}; weight=${variant#*:}
  setsid bash -c "$(declare -f xc); xc finetune $(ft_args "$name" "$weight") --steps 1000000 --keep-checkpoints" \
    > "$WORK/finetune-$name.log" 2>&1 &
  FT_PIDS[$name]=$!
done

# 3. oracle variants (chosen afterwards by validation loss, never by test)
wait $ORACLE_DATA || say "oracle data failed"
say "oracle data done: $(tail -1 "$WORK/data_oracle.log")"
ORACLES=()
for variant in $ORACLE_VARIANTS; do
  width=${variant%%:*}; epochs=${variant#*:}
  mkdir -p "$WORK/oracle-w$width-e$epochs"
  python3 -m xcounter.phantoms.oracle --data "$WORK/data-oracle" --out "$WORK/oracle-w$width-e$epochs/skin.pt" \
    --domain skin --epochs "$epochs" --seed 0 --width "$width" > "$WORK/oracle-w$width-e$epochs/train.log" 2>&1 &
  ORACLES+=($!)
done

# 4. deadline: stop every UNet at its last checkpoint, finish each run there (side by side), ship fp16
stop_at_deadline "$DEADLINE" "${FT_PIDS[@]}"
FINISH=()
for variant in $GEN_VARIANTS; do
  name=${variant%%:*}; weight=${variant#*:}; run="$WORK/gen-$name"
  say "$name stopped: $(grep '"vae"' "$run/train_log.jsonl" 2>/dev/null | tail -1) | $(tail -1 "$run/train_log.jsonl" 2>/dev/null)"
  step=$(python3 -c "import torch; print(torch.load('$run/checkpoints/unet.pt', map_location='cpu', weights_only=False)['step'])" 2>/dev/null)
  if [ -z "$step" ]; then say "$name: no UNet checkpoint"; continue; fi
  say "finishing $name at UNet step $step"
  ( xc finetune $(ft_args "$name" "$weight") --steps "$step" --resume >> "$WORK/finetune-$name.log" 2>&1 \
      && python3 scripts/ship_generator.py "$run" "$WORK/ship/gen-$name" >> "$WORK/finetune-$name.log" 2>&1 \
      && cp "$run/train_log.jsonl" "$WORK/ship/gen-$name/" \
      && tar czf "$OUT/gen-$name.tgz" -C "$WORK/ship" "gen-$name" ) || say "$name: finish failed: $(tail -2 "$WORK/finetune-$name.log")" &
  FINISH+=($!)
done
for pid in "${FINISH[@]}"; do wait "$pid"; done

# 5. oracles: whatever finished by now
for pid in "${ORACLES[@]}"; do
  while [ "$(el)" -lt $((DEADLINE + 60)) ] && kill -0 "$pid" 2>/dev/null; do sleep 3; done
  kill "$pid" 2>/dev/null
done
tar czf "$OUT/oracles.tgz" -C "$WORK" $(cd "$WORK" && ls -d oracle-*)
tar czf "$OUT/logs.tgz" -C "$WORK" $(cd "$WORK" && ls *.log)
say "done; $(ls -la "$OUT" | tail -n +2 | awk '{print $5, $9}' | tr '\n' ' ')"
