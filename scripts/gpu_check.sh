#!/usr/bin/env bash
# #16's GPU check, one short script for a CUDA machine that has torch and transformers but neither
# our other dependencies nor the real weights (a device call carries at most 64 MiB):
#   .whl/                     wheels of our pure dependencies (langchain-core, pydantic, ...), if missing there
#   .gpu/policy-calls.json    `mma bench llm-record` on this machine (the SFT policy's calls on 32 real
#                             full-family test episodes; compact prompts hold no item text)
#   .gpu/smollm2-arch/        SmolLM2-135M-Instruct's config and tokenizer, without weights
# A randomly initialised model with that architecture and tokenizer stands in for the weights: the
# speed is the architecture's, the actions are not the policy's (so "same actions as recorded" is
# meaningless there; "same as the first row" compares the settings with each other).
# Output: the `mma bench llm` table for the CPU and CUDA settings, side by side in one process.
# Preparing them here (both folders are git-ignored; name them in the device call's carry):
#   mma bench llm-record --model transformers:<workdir>/train/sft/policy --episodes 32 --out .gpu/policy-calls.json
#   mkdir -p .gpu/smollm2-arch && cp .mma/models/smollm2-135m-instruct-f32/{config.json,generation_config.json,tokenizer.json,tokenizer_config.json,chat_template.jinja} .gpu/smollm2-arch/
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl \
#     langchain-core langsmith pydantic pydantic-core ... (the versions this venv has, for what the GPU image lacks)
set -euo pipefail
export PYTHONUNBUFFERED=1
out="${OUT:-/tmp/gpu-check}"; mkdir -p "$out"
site=/tmp/site
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$site" . >/dev/null
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 - <<'PY'
import torch, transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())
cfg = AutoConfig.from_pretrained(".gpu/smollm2-arch")
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
model.save_pretrained("/tmp/smollm2-random")
AutoTokenizer.from_pretrained(".gpu/smollm2-arch").save_pretrained("/tmp/smollm2-random")
print("random SmolLM2-135M architecture:", sum(p.numel() for p in model.parameters()) / 1e6, "M parameters")
PY
python3 - <<'PY'
# CUDA graphs against eager on the same padded passes, and a padded pass against each row alone
import torch
from transformers import AutoModelForCausalLM
from mma_agent.llm.forward_batcher import FlatTrie, ForwardBatcher
if torch.cuda.is_available():
    model = AutoModelForCausalLM.from_pretrained("/tmp/smollm2-random", dtype=torch.bfloat16).to("cuda").eval()
    graphs, eager = ForwardBatcher(model, pad_id=2), ForwardBatcher(model, pad_id=2, cuda_graphs=False)
    torch.manual_seed(1)
    def trie(seqs):
        root = {}
        for s in seqs:
            node = root
            for t in s + [2]:
                node = node.setdefault(t, {})
        return FlatTrie.of(root)
    rows = [(torch.randint(3, 49000, (n,)).tolist(), trie([[11, 12, 13], [11, 14], [15, 16, 17, 18], [15, 16, 19]][: 2 + n % 3])) for n in (530, 17, 300, 129)]
    diff = lambda a, b: max(abs(x - y) for ra, rb in zip(a, b) for n in ra for x, y in zip(ra[n], rb[n]))
    g, e = graphs._pass(rows), eager._pass(rows)
    alone = [eager._pass([r])[0] for r in rows]
    print(f"graph vs eager: max |logit diff| {diff(g, e):.2e}, captures {graphs.stats['captures']}, graphs on: {graphs.cuda_graphs}")
    print(f"padded pass vs each row alone (bf16): max |logit diff| {diff(e, alone):.2e}")
PY
repo="$PWD"; cd /tmp  # the installed package (its evals/graphs mapping), not the source folder's mma_agent
python3 -m mma_agent.cli bench llm "$repo/.gpu/policy-calls.json" --model-path /tmp/smollm2-random --devices ${DEVICES:-cpu cuda} \
  --concurrency "${CONCURRENCY:-32}" ${BENCH_FLAGS:-} --repeats "${REPEATS:-2}" 2>&1 | grep -v "Loading weights" | tee "$out/bench-llm-gpu.md"
