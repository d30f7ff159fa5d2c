"""LLM backends and serving: how the policy's chat model is made, constrained and served.

A backend is one string (``transformers:smollm2-135m``, ``openai:<model>``, ``vllm:<model>``) or any
langchain-core `BaseChatModel`, resolved by `resolve_chat_model` (`backends`). The embedded default
runs in-process (`local`), decoding only the actions the policy may take; on CUDA its calls share
one forward pass (`forward_batcher`). `actions` parses the policy's one-line JSON actions, and
`serve` exposes a local model over an OpenAI-compatible HTTP API (``mma serve``). Importing this
package loads no torch: heavy libraries load inside the functions that need them.
"""

from mma_agent.llm.backends import BACKENDS, choice_kwargs, named_backend, resolve_chat_model
from mma_agent.llm.decoding import PrefixCache
from mma_agent.llm.local import GenerationCancelled, TransformersChatModel, smollm2_folder
from mma_agent.llm.vllm_chat import VLLMChatModel

__all__ = [
    "BACKENDS",
    "GenerationCancelled",
    "PrefixCache",
    "TransformersChatModel",
    "VLLMChatModel",
    "choice_kwargs",
    "named_backend",
    "resolve_chat_model",
    "smollm2_folder",
]
