#!/usr/bin/env bash
# One-call GPU recipe (one H100, 16 cores): refine the shipped phantom generators' VAE decoders alone.
# Why: the decoder is the only part of a generator whose retraining cannot change what an edit does. Encoder,
# latent space, scaling factor, UNet and text encoder stay the release's (`finetune --steps 0
# --vae-decoder-steps N`), so the tuned edit settings (`kind_edits`) stay valid, and every image the engine
# shows (reconstruction, counterfactuals) is decoded more faithfully. Retraining the UNet, tried three times,
# moved the edits and lost explanation goals (the RECIPE.md files).
# The decoders train side by side until a wall-clock deadline, then finish at their last checkpoint
# (`--resume --vae-decoder-steps K`: constant learning rate, so the weights are those of an uninterrupted
# K-step run).
# Runs: 2026-11-27, twelfth session (433 s; the defaults): neither decoder shipped, numbers in both
# xcounter/zoo/phantom-*/RECIPE.md.
# Env knobs: N_SKIN, N_CXR (data; defaults = the releases' own), VARIANTS ("name:domain:lr:detail-weight ..."),
# DEADLINE (s), CKPT, BATCH, WORKERS, OUT, WORK, SKIP_INSTALL=1 (a CPU dry run).
set -u
START=$(date +%s)
OUT=${OUT:-/tmp/decoder_gpu_out}; mkdir -p "$OUT"
VARIANTS=${VARIANTS:-"skin-a:skin:0.0003:1.0 skin-b:skin:0.0001:1.0 cxr-a:cxr:0.0003:0"}
DEADLINE=${DEADLINE:-370}; CKPT=${CKPT:-500}; BATCH=${BATCH:-32}; WORKERS=${WORKERS:-7}
N_SKIN=${N_SKIN:-20000}; N_CXR=${N_CXR:-6000}
WORK=${WORK:-runs/decoder-gpu}; mkdir -p "$WORK"
source scripts/gpu_setup.sh

# 1. data: each release's own training set (same command, seed and count as its recipe)
xc phantoms skin --n "$N_SKIN" --out "$WORK/data-skin" --seed 0 --workers "$WORKERS" > "$WORK/data_skin.log" 2>&1 &
SKIN_DATA=$!
xc phantoms cxr --n "$N_CXR" --out "$WORK/data-cxr" --seed 0 --workers "$WORKERS" > "$WORK/data_cxr.log" 2>&1 &
CXR_DATA=$!
wait $SKIN_DATA || say "skin data failed: $(tail -2 "$WORK/data_skin.log")"
wait $CXR_DATA || say "cxr data failed: $(tail -2 "$WORK/data_cxr.log")"
say "data done"

ft_args() {  # the finetune options of variant $1 (domain $2, learning rate $3, detail weight $4)
  echo --data "$WORK/data-$2" --out "$WORK/dec-$1" --base "xcounter/zoo/phantom-$2" --steps 0 \
       --vae-lr "$3" --vae-batch-size "$BATCH" --vae-detail-weight "$4" --seed 0 --checkpoint-every "$CKPT" --quiet
}
declare -A PIDS
for variant in $VARIANTS; do
  IFS=: read -r name domain lr weight <<< "$variant"
  setsid bash -c "$(declare -f xc); xc finetune $(ft_args "$name" "$domain" "$lr" "$weight") \
    --vae-decoder-steps 1000000 --keep-checkpoints" > "$WORK/finetune-$name.log" 2>&1 &
  PIDS[$name]=$!
done

# 2. deadline: stop, finish each at its last checkpoint, keep only the decoder (the rest is the release's)
stop_at_deadline "$DEADLINE" "${PIDS[@]}"
FINISH=()
for variant in $VARIANTS; do
  IFS=: read -r name domain lr weight <<< "$variant"; run="$WORK/dec-$name"
  step=$(python3 -c "import torch; print(torch.load('$run/checkpoints/vae_decoder.pt', map_location='cpu', weights_only=False)['step'])" 2>/dev/null)
  if [ -z "$step" ]; then say "$name: no decoder checkpoint: $(tail -2 "$WORK/finetune-$name.log")"; continue; fi
  say "finishing $name at decoder step $step: $(tail -1 "$run/train_log.jsonl")"
  ( xc finetune $(ft_args "$name" "$domain" "$lr" "$weight") --vae-decoder-steps "$step" --resume \
      >> "$WORK/finetune-$name.log" 2>&1 \
      && python3 scripts/ship_generator.py "$run" "$WORK/ship/dec-$name" >> "$WORK/finetune-$name.log" 2>&1 \
      && cp "$run/train_log.jsonl" "$run/RECIPE.md" "$WORK/ship/dec-$name/" \
      && tar czf "$OUT/dec-$name.tgz" -C "$WORK/ship/dec-$name" vae train_log.jsonl RECIPE.md ) \
    || say "$name: finish failed: $(tail -2 "$WORK/finetune-$name.log")" &
  FINISH+=($!)
done
for pid in "${FINISH[@]}"; do wait "$pid"; done
for variant in $VARIANTS; do
  name=${variant%%:*}; say "$name: $(grep -h 'vae_ssim' "$WORK/dec-$name/RECIPE.md" 2>/dev/null | tr '\n' ' ')"
done
tar czf "$OUT/logs.tgz" -C "$WORK" $(cd "$WORK" && ls *.log)
say "done; $(ls -la "$OUT" | tail -n +2 | awk '{print $5, $9}' | tr '\n' ' ')"
