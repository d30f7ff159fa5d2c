"""``vllm:<model>``: vLLM in-process on a GPU, as a langchain-core chat model."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr

from mma_agent.extras import require as _require
from mma_agent.llm.local import _LOAD_LOCK, _ROLES


class VLLMChatModel(BaseChatModel):
    """A chat model over vLLM in-process (`vllm.LLM.chat`), greedy by default; reports token usage.
    `invoke(..., allowed_completions=[...])` answers exactly one of them, by vLLM's structured
    outputs (a `choice`); a `prefill` is prepended to each (the reply is the whole line)."""

    supports_choice: ClassVar[bool] = True

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str
    max_new_tokens: int = 96
    temperature: float = 0.0
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)  # passed to vllm.LLM (gpu_memory_utilization, max_model_len, ...)
    _llm: Any = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "mma-vllm"

    def _load(self) -> Any:
        with _LOAD_LOCK:
            if self._llm is None:
                self._llm = _require("vllm", "vllm").LLM(model=self.model, **self.engine_kwargs)
        return self._llm

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        sampling = _require("vllm.sampling_params", "vllm")
        llm = self._load()
        chat = [{"role": _ROLES.get(m.type, "user"), "content": str(m.content)} for m in messages]
        params: dict[str, Any] = {
            "temperature": self.temperature,
            "max_tokens": kwargs.get("max_new_tokens", self.max_new_tokens),
            "stop": stop,
        }
        allowed = kwargs.get("allowed_completions")
        if allowed:
            choice = [kwargs.get("prefill", "") + c for c in allowed]
            if hasattr(sampling, "StructuredOutputsParams"):  # vLLM >= 0.12
                params["structured_outputs"] = sampling.StructuredOutputsParams(choice=choice)
            else:
                params["guided_decoding"] = sampling.GuidedDecodingParams(choice=choice)
        start = time.perf_counter()
        out = llm.chat([chat], sampling.SamplingParams(**params), use_tqdm=False)[0]
        n_in, n_out = len(out.prompt_token_ids or []), len(out.outputs[0].token_ids)
        msg = AIMessage(
            content=out.outputs[0].text.strip(),
            usage_metadata={"input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out},
            response_metadata={"model": self.model, "seconds": time.perf_counter() - start},
        )
        return ChatResult(generations=[ChatGeneration(message=msg)])
