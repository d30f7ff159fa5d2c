#!/usr/bin/env bash
# The main job on the embedded default: data statistics, first-stage retrievers and candidate pools
# on the real data set (training the poster CLIP on first use), the embedded policy trained from the
# explored plans of support episodes (`mma train sft`, its default budget; resumes, and a finished
# policy is reused), then the MMA reranker on real 100-item pools with the trained policy beside the
# zero-shot SmolLM2 and RuleRouter-Fuse, printing every table. Extra arguments go to `mma pipeline`.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
t0=$SECONDS
mma pipeline --config configs/default.yaml "$@"
mma train sft --config configs/default.yaml
policy="$(python -c 'from mma_agent.pipeline import Pipeline; from mma_agent.config import load_config; print(Pipeline(load_config("configs/default.yaml")).policy())')"
mma bench rerank --config configs/default.yaml --episodes 20 --prompts compact \
  --model "trained (SFT, the embedded default)=$policy" "zero-shot=transformers:smollm2-135m"
echo "main job wall time: $((SECONDS - t0)) s"
