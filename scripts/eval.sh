#!/usr/bin/env bash
# The full evaluation behind evals/results/ (protocol v2): every method over the saved validation
# and test pools into one resumable store, then the report. Run scripts/main.sh and scripts/train.sh first.
# Re-running resumes: finished episodes are skipped, so a killed run just continues.
#   RUN          run name (default main-v2)
#   LLM_VALID    pools per family for the LLM methods' validation subset, which picks their alpha (default 50)
#   LLM_TEST     pools per family for their test subset: N for the OOMA families, then full=N (default "100 full=300":
#                300 OOMA pools pooled and 300 full-family pools, the paired comparison every LLM row is in)
#   LLM_METHODS  the LLM rows (default: all of them)
#   SLOW_VALID, SLOW_TEST  the same for the LLM listwise baseline (default 10 and "20 full=60": nested in the
#                above), about 5 s an episode on two cores
#   REACT_VALID, REACT_TEST  the same for ReAct (default 5 and "10 full=30": nested in listwise's), up to 8
#                free-form turns of up to 96 tokens, 40-60 s an episode on two cores
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
run="${RUN:-main-v2}"
read -r -a test_limit <<< "${LLM_TEST:-100 full=300}"
read -r -a llm_methods <<< "${LLM_METHODS:-rule mma-zero-shot mma-sft mma-interactive listwise react}"
work="$(python -c 'from mma_agent.pipeline import Pipeline; from mma_agent.config import load_config; print(Pipeline(load_config("configs/default.yaml")).root)')"
t0=$SECONDS
# every method without an LLM on every pool (the trained fusion rows with five seeds); probes and the oracle come with every run
mma eval run --run "$run" --seeds 0 1 2 3 4 --methods first-stage popularity itemknn bprmf lightgcn text-sim image-sim graph-sim \
  completion-zero completion-mean completion-neighbour completion-fp margo magnet rule
# the LLM rows on one nested seeded subset of the OOMA and full families (validation picks alpha)
trained=(--trained "SFT=transformers:$work/train/sft/policy")   # MMA-Interactive runs it
oomafull=(--families text-only image-only behaviour-only full)
read -r -a slow_test <<< "${SLOW_TEST:-20 full=60}"
read -r -a react_test <<< "${REACT_TEST:-10 full=30}"
for m in "${llm_methods[@]}"; do
  [ "$m" = rule ] && continue
  valid=("${LLM_VALID:-50}") test=("${test_limit[@]}")
  if [ "$m" = listwise ]; then valid=("${SLOW_VALID:-10}") test=("${slow_test[@]}"); fi
  if [ "$m" = react ]; then valid=("${REACT_VALID:-5}") test=("${react_test[@]}"); fi
  mma eval run --run "$run" --splits valid --llm-limit "${valid[@]}" --methods "$m" "${oomafull[@]}" "${trained[@]}"
  mma eval run --run "$run" --splits test --llm-limit "${test[@]}" --methods "$m" "${oomafull[@]}" "${trained[@]}"
done
mma eval report "$run" --out evals/results
echo "evaluation wall time: $((SECONDS - t0)) s"
