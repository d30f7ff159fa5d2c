#!/usr/bin/env bash
# The full evaluation behind evals/results/: every method over the saved validation and test pools
# into one resumable store, then the report. Run scripts/main.sh and scripts/train.sh first.
# Re-running resumes: finished episodes are skipped, so a killed run just continues.
#   LLM_LIMIT  pools per family and split for every method that calls an LLM (default 6); the headline
#              ones are then extended to every pool, as below
#   RUN        run name (default main)
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
run="${RUN:-main}"
limit="${LLM_LIMIT:-6}"
work="$(python -c 'from mma_agent.pipeline import Pipeline; from mma_agent.config import load_config; print(Pipeline(load_config("configs/default.yaml")).root)')"
t0=$SECONDS
mma eval run --run "$run" --llm-limit "$limit" --seeds 0 1 2 3 4 --methods first-stage popularity itemknn bprmf lightgcn text-sim image-sim graph-sim \
  completion-zero completion-mean completion-neighbour completion-fp margo magnet centrality-probe rule
trained=(--trained "SFT=transformers:$work/train/sft/policy" "GRPO=transformers:$work/train/grpo/policy")   # MMA-Interactive runs the first
mma eval run --run "$run" --llm-limit "$limit" --methods mma-zero-shot listwise react mma-sft mma-interactive mma-grpo "${trained[@]}"
# the headline methods beyond the subset (each extends its subset rows): the trained policy on every
# pool, Interactive on every test pool, the zero-shot policy on every OOMA and fixed test pool
mma eval run --run "$run" --llm-limit 0 --methods mma-sft "${trained[@]}"
mma eval run --run "$run" --llm-limit 0 --methods mma-interactive --splits test "${trained[@]}"
mma eval run --run "$run" --llm-limit 0 --methods mma-zero-shot --splits test --families text-only image-only behaviour-only "${trained[@]}"
mma eval report "$run" --out evals/results
echo "evaluation wall time: $((SECONDS - t0)) s"
