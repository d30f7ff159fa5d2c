#!/usr/bin/env bash
# The main job on the embedded default: data statistics, first-stage retrievers and candidate
# pools on the real data set, end to end, printing their tables. Extra arguments go to `mma pipeline`.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
mma pipeline --config configs/default.yaml "$@"
