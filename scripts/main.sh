#!/usr/bin/env bash
# The main job on the embedded default: data statistics, first-stage retrievers and candidate pools
# on the real data set (training the poster CLIP on first use), then the MMA reranker with the
# embedded SmolLM2 on real 100-item pools, printing every table. Extra arguments go to `mma pipeline`.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
mma pipeline --config configs/default.yaml "$@"
mma bench rerank --config configs/default.yaml --episodes 20
