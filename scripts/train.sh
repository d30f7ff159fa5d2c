#!/usr/bin/env bash
# Policy training from nothing to trained policies, then the comparison on query episodes, with
# each stage's wall time. Run scripts/main.sh first (data, retrievers, pools, poster CLIP).
# Every stage checkpoints and resumes: re-running after a crash continues where it stopped
# (explorations are cached by content; trainers resume from their newest checkpoint).
#   MMA_WORKDIR  the workdir (default .mma, as every mma command); any other mma options go after the script's name
#   PER_FAMILY  episodes per task family (default 20: 16 support + 4 query)
#   SFT_STEPS, SFT_INTERACTIVE_STEPS, DPO_STEPS, GRPO_STEPS  optimiser steps per stage (default `mma train sft`'s, 40,
#   which scripts/main.sh trained already / 60 / 20 / 12; 40 steps route as the lookup control: evals/results/training-budget.md)
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
per_family="${PER_FAMILY:-20}"
if [ -n "${MMA_WORKDIR:-}" ]; then set -- --workdir "$MMA_WORKDIR" "$@"; fi
work="$(python -c 'import sys; from mma_agent.cli import _pipeline, build_parser; print(_pipeline(build_parser().parse_args(["data", "stats", *sys.argv[1:]])).root)' "$@")"
times=()
stage() {
  local name="$1"; shift
  local t0=$SECONDS
  "$@"
  times+=("| $name | $((SECONDS - t0)) s |")
}
stage "SFT (explore + train; the policy scripts/main.sh trained is reused)" mma train sft --per-family "$per_family" ${SFT_STEPS:+--max-steps "$SFT_STEPS"} "$@"
stage "SFT, interactive (explore with ask_user + train)" mma train sft --interactive --per-family "$per_family" --max-steps "${SFT_INTERACTIVE_STEPS:-60}" "$@"
stage "DPO" mma train dpo --per-family "$per_family" --max-steps "${DPO_STEPS:-20}" "$@"
stage "GRPO" mma train grpo --per-family "$per_family" --max-steps "${GRPO_STEPS:-12}" "$@"
stage "query comparison" mma train eval "$@" --per-family "$per_family" --out "$work/train/comparison.json" --policy \
  "zero-shot=transformers:smollm2-135m" "SFT=transformers:$work/train/sft/policy" \
  "DPO=transformers:$work/train/dpo/policy" "GRPO=transformers:$work/train/grpo/policy"
stage "query comparison, interactive" mma train eval "$@" --interactive --per-family "$per_family" --out "$work/train/comparison-interactive.json" \
  --policy "zero-shot=transformers:smollm2-135m" "SFT=transformers:$work/train/sft-interactive/policy"
printf '\n| stage | wall time |\n|---|---|\n'; printf '%s\n' "${times[@]}"
