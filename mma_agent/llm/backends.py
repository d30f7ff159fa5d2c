"""One string per LLM backend (or any langchain-core `BaseChatModel`), resolved lazily.

- ``transformers:<alias or folder>``: local transformers, the embedded default (`mma_agent.llm.local`).
- ``openai:<model>``: any OpenAI-compatible server (``vllm serve`` at scale, or ``mma serve``); needs ``base_url``.
- ``vllm:<model>``: vLLM in-process on a GPU (`mma_agent.llm.vllm_chat`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel

from mma_agent.extras import require as _require
from mma_agent.llm.local import TransformersChatModel, smollm2_folder
from mma_agent.llm.vllm_chat import VLLMChatModel


def _transformers(name: str, cache_dir: Path, **kw: Any) -> BaseChatModel:
    aliases: dict[str, Callable[[Path], Path]] = {"smollm2-135m": smollm2_folder}
    if name in aliases:
        path = aliases[name](cache_dir)
    elif Path(name).is_dir():
        path = Path(name)
    else:
        msg = f"transformers:{name} is neither an alias ({sorted(aliases)}) nor a local model folder"
        raise ValueError(msg)
    return TransformersChatModel(model_path=str(path), **kw)


def _openai(
    name: str, cache_dir: Path, *, base_url: str | None = None, api_key: str = "EMPTY", timeout: float = 30.0, **kw: Any
) -> BaseChatModel:
    if not base_url:
        msg = f"openai:{name} needs base_url, e.g. http://127.0.0.1:8000/v1 for `vllm serve {name}`"
        raise ValueError(msg)
    mod = _require("langchain_openai", "openai")
    return mod.ChatOpenAI(model=name, base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0, **kw)


def _vllm(name: str, cache_dir: Path, **kw: Any) -> BaseChatModel:
    _require("vllm", "vllm")
    torch = _require("torch", "local")
    if not torch.cuda.is_available():
        msg = "vllm:<model> runs vLLM in-process and needs a CUDA GPU; use openai:<model> with a vLLM server elsewhere"
        raise RuntimeError(msg)
    return VLLMChatModel(model=name, **kw)


def choice_kwargs(model: Any, choices: list[str]) -> dict[str, Any]:
    """What to pass a chat model's `invoke` so its reply is one of `choices`, where its backend
    can enforce that: an OpenAI-compatible client sends vLLM's structured-outputs choice in the
    request body (both spellings: `structured_outputs` since vLLM 0.12, `guided_choice` before;
    a server ignores the one it does not know, `mma serve` reads both), a local model decodes
    under the constraint. Empty for anything else (the reply is then parsed as it comes)."""
    if getattr(model, "supports_choice", False):
        return {"allowed_completions": choices, "prefill": ""}
    openai = sys.modules.get("langchain_openai")
    if openai is not None and isinstance(model, openai.ChatOpenAI):
        return {"extra_body": {"structured_outputs": {"choice": choices}, "guided_choice": choices}}
    return {}


BACKENDS: dict[str, Callable[..., BaseChatModel]] = {"transformers": _transformers, "openai": _openai, "vllm": _vllm}


def named_backend(spec: str) -> tuple[str, str]:
    """`"NAME=BACKEND"` -> (NAME, BACKEND); a bare backend string names itself."""
    name, sep, backend = spec.partition("=")
    return (name, backend) if sep else (spec, spec)


def resolve_chat_model(
    model: str | BaseChatModel, *, cache_dir: Path | str = Path(".mma/models"), **kwargs: Any
) -> BaseChatModel:
    """`"backend:name"` -> a chat model; a `BaseChatModel` passes through unchanged."""
    if isinstance(model, BaseChatModel):
        return model
    backend, sep, name = str(model).partition(":")
    if not sep or backend not in BACKENDS or not name:
        msg = f"model {model!r} is not 'backend:name' with backend one of {sorted(BACKENDS)} (e.g. 'transformers:smollm2-135m')"
        raise ValueError(msg)
    return BACKENDS[backend](name, Path(cache_dir), **kwargs)
