#!/usr/bin/env bash
# The policy evaluation behind evals/results/policy/ and evals/results/bench-rerank.md (issue #15):
# the lookup control on every pool, MMA-Auto zero-shot and trained and MMA-Interactive on a seeded
# subset of every family (LLM_LIMIT pools per family and split), added to the evidence store so
# every row of evals/results/evidence/ is paired with them; then the report and `mma bench rerank`.
# Run scripts/evidence.sh and scripts/train.sh first (the lookup table and the policies).
# Alphas are chosen on the validation pools every fused row ran (--alpha-on paired): the LLM rows ran a subset.
# Re-running resumes: finished episodes are skipped (the lookup row is redone: its table may be new).
#   RUN        run name (default evidence-v1)
#   LLM_LIMIT  pools per family and split for the LLM rows (default 40)
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
run="${RUN:-evidence-v1}"
out=evals/results/policy
work="$(python -c 'from mma_agent.pipeline import Pipeline; from mma_agent.config import load_config; print(Pipeline(load_config("configs/default.yaml")).root)')"
sft="transformers:$work/train/sft/policy"
asking="transformers:$work/train/sft-interactive/policy"
t0=$SECONDS
mma eval run --run "$run" --fresh --methods lookup
mma eval run --run "$run" --llm-limit "${LLM_LIMIT:-40}" --methods mma-zero-shot mma-sft mma-interactive --trained "SFT=$sft" --interactive-policy "$asking"
mma eval report "$run" --out "$out" --alpha-on paired --title "Policies on MovieLens-posters (protocol v2): MMA-Auto zero-shot and trained, MMA-Interactive, the lookup control"
# the bench of #28: the embedded default (SFT) in-process in the hardware's dtype and in float32, and over `mma serve`
# (openai:, one process serving it), beside zero-shot and RuleRouter-Fuse: evals/results/bench-rerank.md
log="$(mktemp)"
mma serve --model "$sft" --port 0 > "$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null' EXIT
until url="$(grep -o 'http://127.0.0.1:[0-9]*/v1' "$log")"; do kill -0 $server || { cat "$log"; exit 1; }; sleep 1; done
mma bench rerank --config configs/default.yaml --episodes 20 --prompts compact --dtypes auto float32 \
  --model "trained (SFT)=$sft" "trained (SFT) over mma serve=openai:$sft" "zero-shot=transformers:smollm2-135m" --base-url "$url" \
  | tee evals/results/bench-rerank.md
echo "policy evaluation wall time: $((SECONDS - t0)) s"
