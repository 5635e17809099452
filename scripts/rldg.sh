#!/usr/bin/env bash
# RLDG on PushCube-v1 (docs/rldg.md): state-based RL expert -> 100 rendered expert episodes ->
# SFT of the quickstart's tiny token VLA on them -> eval against the SFT on 100 scripted demos.
#   bash scripts/rldg.sh [OUT_DIR]          (default runs/rldg, ignored by git; not yet timed end to end)
# Needs the quickstart's SFT base (~/.cache/vlarl/quickstart/sft, from `vlarl quickstart`)
# for the comparison. Every stage logs to OUT_DIR/<stage>.log.
set -euo pipefail
OUT=${1:-runs/rldg}
QS=recipes/cpu/quickstart.yaml
BASE=${RLDG_BASE:-$HOME/.cache/vlarl/quickstart/sft}
VLARL=${VLARL:-vlarl}
PY=${PY:-python}
mkdir -p "$OUT"

# 0. steps/s of the camera-less state env vs the RGB env (same settings, side by side)
$PY -m vlarl rldg speed --config recipes/cpu/rldg_expert.yaml > "$OUT/speed.json" 2> "$OUT/speed.log"
# 1a. BC warm start of the privileged student on the scripted expert (state env, no camera)
$PY -m vlarl rldg bc --config recipes/cpu/rldg_expert.yaml --out "$OUT/bc" > "$OUT/bc.log" 2>&1
# 1b. PPO fine-tuning of the expert in the state env
$VLARL train --config recipes/cpu/rldg_expert.yaml --policy.path "$OUT/bc" \
    --train.output_dir "$OUT/expert" --train.overwrite true > "$OUT/expert.log" 2>&1
# 1c. the experts' success (state env: same physics and seeds as the RGB env, no rendering)
$VLARL eval "$OUT/bc" "$OUT/expert/policy" --config recipes/cpu/rldg_expert.yaml \
    --eval.num_episodes 100 --out "$OUT/eval_expert" > "$OUT/eval_expert.log" 2>&1
# 2. 100 successful expert episodes, rendered, in the quickstart's dataset format
$VLARL collect --config $QS --data.expert "$OUT/expert/policy" \
    --data.dataset_dir "$OUT/data" > "$OUT/collect.log" 2>&1
# 3. SFT of the tiny token VLA with the quickstart's settings on the RLDG dataset
$VLARL sft --config $QS --data.dataset_dir "$OUT/data" --sft.output_dir "$OUT/sft" \
    > "$OUT/sft.log" 2>&1
# 4. scripted-demo SFT (equal dataset size) vs RLDG SFT on the same 100 seeds per split
$VLARL eval "$BASE" "$OUT/sft" --config $QS --eval.splits train unseen_color wide_pose \
    --eval.num_episodes 100 --out "$OUT/eval" > "$OUT/eval.log" 2>&1
cat "$OUT/eval/report.md"
