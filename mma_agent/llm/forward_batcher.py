"""Constrained greedy choices of many concurrent calls in shared forward passes, with CUDA graphs.

A policy action is one of a few completions, held in a token trie; greedy constrained decoding
needs the model's logits only at the trie's branching points. Those logits depend only on the
prompt and the path to the point, so one forward pass can give all of them at once: the trie's
tokens are laid out after the prompt, each attending to the prompt and to its own ancestors
(a tree attention mask, as in tree-based speculative decoding), positioned at its depth. Walking
the trie greedily over those logits then picks exactly what token-by-token decoding picks, with
one pass per call instead of one per branching point.

`ForwardBatcher` gathers the calls that arrive while the model is busy (the episodes of a
`.batch`, one thread each) and answers them with one padded pass (continuous batching: a lone
caller waits for nothing). Shapes are rounded up to buckets; on CUDA each bucket's pass is
captured once as a CUDA graph and replayed (a small model's eager pass costs about the same
~20 ms whatever its size, being bound by kernel launches; a replay a few ms). Elsewhere the same
passes run eagerly.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


def bucket(n: int, step: int) -> int:
    """`n` rounded up to a multiple of `step`."""
    return -(-n // step) * step


def batch_bucket(n: int, max_batch: int) -> int:
    """`n` rounded up to a power of two, at most `max_batch`."""
    return min(1 << (n - 1).bit_length(), max_batch)


@dataclass
class FlatTrie:
    """A completion trie in breadth-first order: node i is token `tokens[i]` at `depth[i]` below
    the root, under `parent[i]` (-1: the root); `children[n]` lists node n's children (root: -1)."""

    tokens: list[int]
    parent: list[int]
    depth: list[int]
    children: dict[int, list[int]]
    sees: Any = None  # [n, n] bool: node i attends to node j (j is i or an ancestor of i)

    @classmethod
    def of(cls, trie: dict) -> FlatTrie:
        import numpy as np

        flat = cls([], [], [], {})
        todo = deque([(-1, trie, 0)])
        while todo:
            up, node, d = todo.popleft()
            for tok, sub in node.items():
                i = len(flat.tokens)
                flat.tokens.append(tok)
                flat.parent.append(up)
                flat.depth.append(d)
                flat.children.setdefault(up, []).append(i)
                todo.append((i, sub, d + 1))
        flat.sees = np.eye(len(flat.tokens), dtype=bool)
        for i, up in enumerate(flat.parent):  # breadth-first: a parent's row is complete before its children's
            if up >= 0:
                flat.sees[i] |= flat.sees[up]
        return flat

    def branching(self) -> list[int]:
        """The nodes with a choice to make (-1 is the root: the first token)."""
        return [n for n, kids in self.children.items() if len(kids) > 1]

    def deciding(self) -> list[int]:
        """The nodes whose logits some choice needs: each branching node and its ancestors, in
        breadth-first order (a pass over these alone gives every branching point's logits; the
        forced tails after the last choice add nothing)."""
        keep = set()
        for node in self.branching():
            while node >= 0 and node not in keep:
                keep.add(node)
                node = self.parent[node]
        return sorted(keep)

    def nodes(self, tokens: list[int]) -> list[int]:
        """The nodes along the path that spells `tokens` from the root."""
        out, node = [], -1
        for tok in tokens:
            node = next(c for c in self.children[node] if self.tokens[c] == tok)
            out.append(node)
        return out

    def walk(self, scores: dict[int, Any], eos: int) -> list[int]:
        """The greedy path's tokens (without the final EOS), given each branching node's scores
        over its children (in `children` order; the first maximum wins, as argmax does)."""
        out, node = [], -1
        while True:
            kids = self.children.get(node)
            if not kids:
                return out
            k = kids[0] if len(kids) == 1 else kids[int(max(range(len(kids)), key=lambda j: (scores[node][j], -j)))]
            if self.tokens[k] == eos:
                return out
            out.append(self.tokens[k])
            node = k


class ForwardBatcher:
    """Greedy constrained choices (`choose(prompt, trie)`) of concurrent callers, batched on one
    worker thread. `stats` counts passes, rows, graph captures and seconds in passes."""

    def __init__(
        self, model: Any, *, max_batch: int = 32, length_step: int = 64, pad_id: int = 0, cuda_graphs: bool = True
    ) -> None:
        import torch

        if max_batch < 1 or length_step < 1:
            msg = f"max_batch and length_step must be positive; got {max_batch}, {length_step}"
            raise ValueError(msg)
        if getattr(model.config, "final_logit_softcapping", None):
            msg = f"{type(model).__name__} caps its logits after the head; the batched pass supports plain-head models (Llama, Qwen, Mistral, SmolLM)"
            raise ValueError(msg)
        self.model, self.max_batch, self.length_step, self.pad_id = model, max_batch, length_step, pad_id
        self.device = model.device
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.max_length = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        self.stats: dict[str, float] = {"passes": 0, "rows": 0, "captures": 0, "seconds": 0.0}
        self._graphs: dict[tuple[int, ...], tuple[Any, list[Any], Any]] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self._queue: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="mma-forward-batcher", daemon=True)
        self._worker.start()

    def choose(self, prompt: list[int], flat: FlatTrie, eos: int) -> list[int]:
        """The completion greedy decoding restricted to the trie produces after `prompt` (its
        tokens, without the final EOS); blocks until the pass that carries it has run."""
        if not flat.branching():
            return flat.walk({}, eos)
        n = len(prompt) + len(flat.tokens)
        if not prompt:
            msg = "ForwardBatcher.choose needs a prompt of at least one token"
            raise ValueError(msg)
        if self.max_length and n > self.max_length:
            msg = f"a prompt and its completions of {n} tokens are longer than the model's context ({self.max_length}); shorten the prompt"
            raise ValueError(msg)
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((list(prompt), flat, future))
        return flat.walk(future.result(), eos)

    def close(self) -> None:
        """Stop the worker (calls already queued are answered first)."""
        self._queue.put(None)
        self._worker.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:  # everything that arrived while the last pass ran
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            try:
                out = self._pass([(p, f) for p, f, _ in batch])
            except Exception as err:  # every waiting caller gets the error; the worker goes on
                for *_, future in batch:
                    future.set_exception(err)
                continue
            for scores, (*_, future) in zip(out, batch, strict=True):
                future.set_result(scores)

    def _pass(self, rows: list[tuple[list[int], FlatTrie]]) -> list[dict[int, list[float]]]:
        """One padded pass over `rows` (prompt, trie): each row's branching nodes' scores."""
        import time

        import torch

        start = time.perf_counter()
        branch = [f.branching() for _, f in rows]
        n_b = batch_bucket(len(rows), self.max_batch)
        n_l = bucket(max(len(p) + len(f.tokens) for p, f in rows), self.length_step)
        if self.max_length:
            n_l = min(n_l, self.max_length)
        # branching points and choices per point, at least 8 each: fewer shapes (graphs), for a few more head rows
        n_k = max(8, batch_bucket(max(len(b) for b in branch), 1 << 10))
        n_c = max(8, batch_bucket(max(len(f.children[n]) for (_, f), b in zip(rows, branch, strict=True) for n in b), 1 << 10))
        ids = torch.full((n_b, n_l), self.pad_id, dtype=torch.long)
        pos = torch.zeros((n_b, n_l), dtype=torch.long)
        mask = torch.eye(n_l, dtype=torch.bool).repeat(n_b, 1, 1, 1)  # pads see themselves only (no empty softmax row)
        kpos = torch.zeros((n_b, n_k), dtype=torch.long)
        cand = torch.zeros((n_b, n_k, n_c), dtype=torch.long)
        for r, (prompt, f) in enumerate(rows):
            p, t = len(prompt), len(f.tokens)
            ids[r, :p] = torch.tensor(prompt)
            ids[r, p : p + t] = torch.tensor(f.tokens)
            pos[r, :p] = torch.arange(p)
            pos[r, p : p + t] = p + torch.tensor(f.depth)
            mask[r, 0, :p, :p] = torch.ones(p, p, dtype=torch.bool).tril()
            mask[r, 0, p : p + t, :p] = True
            mask[r, 0, p : p + t, p : p + t] = torch.from_numpy(f.sees)
            for k, node in enumerate(branch[r]):
                kpos[r, k] = p - 1 if node < 0 else p + node
                kids = [f.tokens[c] for c in f.children[node]]
                cand[r, k, : len(kids)] = torch.tensor(kids)
        inputs = [x.to(self.device, non_blocking=True) for x in (ids, mask, pos, kpos, cand)]
        out = None
        if self.cuda_graphs:
            try:
                out = self._replay(inputs)
            except Exception as err:  # a model or driver that cannot be captured: eager from now on, said once
                log.warning("CUDA graph capture failed (%s: %s); running eagerly", type(err).__name__, err)
                self.cuda_graphs = False
        if out is None:
            with torch.inference_mode():
                out = self._forward(*inputs)
        out = out[: len(rows)].cpu().tolist()
        self.stats["passes"] += 1
        self.stats["rows"] += len(rows)
        self.stats["seconds"] += time.perf_counter() - start
        return [
            {node: out[r][k][: len(f.children[node])] for k, node in enumerate(b)}
            for r, ((_, f), b) in enumerate(zip(rows, branch, strict=True))
        ]

    def _forward(self, ids: Any, mask: Any, pos: Any, kpos: Any, cand: Any) -> Any:
        """Scores [B, K, C]: at row b's kept position kpos[b, k], the logits of tokens cand[b, k]."""
        import torch

        hidden = self.model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
        kept = hidden[torch.arange(ids.shape[0], device=ids.device)[:, None], kpos]  # [B, K, H]
        return self.model.get_output_embeddings()(kept).gather(-1, cand).float()

    def _replay(self, inputs: list[Any]) -> Any:
        import torch

        shape = tuple(s for x in inputs for s in x.shape)
        if shape not in self._graphs:
            static = [torch.zeros_like(x) for x in inputs]
            static[1].copy_(torch.eye(static[1].shape[-1], dtype=torch.bool, device=self.device).expand_as(static[1]))
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.inference_mode(), torch.cuda.stream(stream):
                for _ in range(2):  # warm-up: lazy initialisation must not happen under capture
                    self._forward(*static)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph, pool=self._pool):
                static_out = self._forward(*static)
            self._graphs[shape] = (graph, static, static_out)
            self.stats["captures"] += 1
            log.info("captured a CUDA graph for batch %d x length %d (%d branching points x %d choices)", *shape[:2], *shape[-2:])
        graph, static, static_out = self._graphs[shape]
        for s, x in zip(static, inputs, strict=True):
            s.copy_(x)
        graph.replay()
        return static_out
