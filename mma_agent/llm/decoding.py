"""Constrained decoding's parts: the completions' token trie, the prefix KV cache of earlier
prompts, and the greedy choice among the completions in one forward pass on that cache.

`TransformersChatModel` (`local`) decodes with these on the CPU; `ForwardBatcher` is the batched
pass of concurrent calls on CUDA, over the same `FlatTrie`.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from mma_agent.llm.forward_batcher import FlatTrie


def token_trie(tokenizer: Any, completions: list[str]) -> dict:
    """Token trie of `completions` (each tokenized alone, ending in EOS): what constrained decoding
    may generate after the prompt. A node with one child is a forced token; with more, a choice
    (training puts its loss on those: `training.sft.choice_token_rows`)."""
    trie: dict = {}
    for text in completions:
        node = trie
        for tok in tokenizer(text, add_special_tokens=False)["input_ids"]:
            node = node.setdefault(tok, {})
        node[tokenizer.eos_token_id] = {}
    return trie


class PrefixCache:
    """The KV caches of the last few prompts, for reuse by any prompt that starts the same way.

    A policy's prompts share the system prompt, and each turn extends the same episode's
    previous turn, so most of a prompt is usually computed already. `lookup` returns a private
    copy of the cache with the longest common prefix (cropped to it, and to at most all but the
    prompt's last token, whose logits are needed); thread-safe.
    """

    def __init__(self, size: int = 16, min_tokens: int = 8) -> None:
        self.size, self.min_tokens = size, min_tokens
        self._entries: list[tuple[list[int], Any]] = []
        self._lock = threading.Lock()

    def lookup(self, ids: list[int]) -> tuple[Any, int]:
        import copy

        with self._lock:
            best, n = None, 0
            for entry in self._entries:
                k = len(os.path.commonprefix([entry[0], ids]))
                if k > n:
                    best, n = entry, k
            n = min(n, len(ids) - 1)
            if best is None or n < self.min_tokens:
                return None, 0
            cache = copy.deepcopy(best[1])
        drop = cache.get_seq_length() - n
        if drop > 0:
            cache.crop(-drop)
        return cache, n

    def put(self, ids: list[int], cache: Any) -> None:
        if len(ids) < self.min_tokens or cache.get_seq_length() != len(ids):
            return
        with self._lock:
            self._entries = [e for e in self._entries if e[0] != ids][-(self.size - 1) :] + [(ids, cache)]


def tree_choice(
    model: Any, prompt: list[int], flat: FlatTrie, eos: int, prefix_cache: PrefixCache, cache_kwarg: str = "cache"
) -> list[int]:
    """Greedy decoding restricted to the trie `flat`, in one forward pass of `model` (a causal LM):
    the prompt's tokens the prefix KV cache misses, then the trie laid out after them, each trie
    token attending to the prompt and its own ancestors at the position of its depth (the tree
    attention of `ForwardBatcher`, here on the cached prefix). The logits at every branching point
    come from that one pass, and the greedy walk over them picks what decoding token by token
    picks (up to rounding at near-ties: `mma bench llm --token-by-token` counts the actions that
    change). The pass holds only the trie nodes some choice needs (`FlatTrie.deciding`: the
    branching points and their ancestors, not the forced tails), and the LM head runs at the
    branching points only, over the rows of the tokens they may choose. The KV cache of the prompt
    and of the reply up to its last choice is stored in `prefix_cache` for the next turn.

    Why one pass: on two CPU cores a pass of SmolLM2-135M costs about 40 ms whatever its length
    (its weights are read once per pass), and a few new tokens add little (`evals/results/bench-llm-cpu.md`)."""
    import numpy as np
    import torch

    if not flat.branching():
        return flat.walk({}, eos)
    cache, start = prefix_cache.lookup(prompt)
    pending, sub = prompt[start:], flat.deciding()
    q, t = len(pending), len(sub)
    at = {node: q + i for i, node in enumerate(sub)}  # a trie node's place in the pass
    mask = torch.zeros((1, 1, q + t, start + q + t), dtype=torch.bool)
    mask[0, 0, :, :start] = True
    mask[0, 0, :q, start : start + q] = torch.ones(q, q, dtype=torch.bool).tril()
    mask[0, 0, q:, start : start + q] = True
    mask[0, 0, q:, start + q :] = torch.from_numpy(flat.sees[np.ix_(sub, sub)])
    positions = torch.cat([torch.arange(start, start + q), start + q + torch.tensor([flat.depth[n] for n in sub])])
    branch = flat.branching()
    kept = [q - 1 if node < 0 else at[node] for node in branch]
    device = model.device
    with torch.no_grad():
        res = model.base_model(
            input_ids=torch.tensor([pending + [flat.tokens[n] for n in sub]], device=device),
            attention_mask=mask.to(device),
            position_ids=positions[None].to(device),
            **{cache_kwarg: cache},
            use_cache=True,
        )
        # the LM head's rows of the tokens a branching point may choose only (a head's final
        # softcapping, where a model has one, is monotonic: it changes no argmax)
        tokens = sorted({flat.tokens[c] for node in branch for c in flat.children[node]})
        head = model.get_output_embeddings()
        rows = torch.tensor(tokens, device=device)
        bias = None if getattr(head, "bias", None) is None else head.bias[rows]
        logits = torch.nn.functional.linear(res.last_hidden_state[0, kept], head.weight[rows], bias).float()
    column = {tok: j for j, tok in enumerate(tokens)}
    scores = {node: logits[k, [column[flat.tokens[c]] for c in flat.children[node]]].tolist() for k, node in enumerate(branch)}
    chosen = flat.walk(scores, eos)
    cache = getattr(res, cache_kwarg)
    layers = getattr(cache, "layers", None) or []
    path = [n for n in flat.nodes(chosen) if n in at]  # the reply's tokens the pass computed (up to its last choice)
    if layers and all(hasattr(la, "keys") and not getattr(la, "is_sliding", True) for la in layers):
        # keep the chosen path's entries (computed at its positions, seeing its ancestors only:
        # what decoding it token by token computes), so the next turn reuses the reply too
        keep = torch.tensor([*range(start + q), *(at[n] + start for n in path)], dtype=torch.long, device=device)
        for la in layers:
            la.keys, la.values = la.keys.index_select(-2, keep), la.values.index_select(-2, keep)
        prefix_cache.put(prompt + chosen[: len(path)], cache)
    else:  # a cache this layout is not known for: the prompt's entries only
        cache.crop(-t)
        prefix_cache.put(prompt, cache)
    return chosen
