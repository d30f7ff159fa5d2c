#!/usr/bin/env bash
# The evidence evaluation behind evals/results/evidence/ (issue #14): each tool's zero-shot and
# learned channel alone, RuleRouter-Fuse on zero-shot and on learned evidence, every weight-menu
# entry, the single-modality rows, MARGO- and MAGNET-style (five seeds), with the probes and the
# oracle, on every validation and test pool of every family; then the report, `mma bench ask` and
# `mma bench tools`. No LLM: about 35 minutes on two cores. Run scripts/main.sh first (it trains
# the learned channels). Re-running resumes: finished episodes are skipped.
#   RUN   run name (default evidence-v1)
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
run="${RUN:-evidence-v1}"
out=evals/results/evidence
t0=$SECONDS
menu=(menu-equal menu-text100 menu-image100 menu-graph100 menu-text75-image25 menu-text25-image75 menu-text75-graph25 menu-text25-graph75
      menu-image75-graph25 menu-image25-graph75)
mma eval run --run "$run" --methods first-stage text-zero-shot text-learned image-zero-shot image-learned graph-zero-shot graph-learned \
  rule-zero-shot rule "${menu[@]}" text-sim image-sim graph-sim
mma eval run --run "$run" --seeds 0 1 2 3 4 --methods margo magnet
mma eval report "$run" --out "$out" --title "Evidence on MovieLens-posters (protocol v2): zero-shot and learned channels, RuleRouter-Fuse, the weight menu"
mma relevance | tee "$out/relevance.md"
cp "$(python -c 'from mma_agent.pipeline import Pipeline; from mma_agent.config import load_config; print(Pipeline(load_config("configs/default.yaml")).root)')/relevance/validation-curves.png" "$out/relevance-curves.png"
mma bench ask --pools 100 | tee "$out/bench-ask.md"
mma bench tools --episodes 100 | tee "$out/bench-tools.md"
echo "evidence evaluation wall time: $((SECONDS - t0)) s"
