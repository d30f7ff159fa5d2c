"""`mma bench profile`: where one policy call's time goes, in-process and over `mma serve`.

The same real requests (full-family test pools, 100 items, compact prompt) run through the reranker
with the local model in this process, then with `openai:` against `mma serve` serving the same
model in a child process. Timers wrap the model's own steps in both processes (the server's are
written when it stops): the chat template, the completions' token trie, the prefix KV cache, each
forward pass (the first of a call, the prefill of what the cache misses, apart from the rest, the
decode steps), and the rest of the model's call (Python around them); the policy's call as the graph
sees it, whose remainder over the model's call is the hand-off (LangChain's invoke, the policy's
thread, and for the served model HTTP, JSON and the server's own threads). Per call, in ms.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from mma_agent.toolkits.workspace import Workspace

PHASES = (
    "policy call, as the graph sees it",
    "  hand-off (LangChain invoke, threads; served: + HTTP, JSON, the server's threads)",
    "  model call",
    "    chat template",
    "    completions' token trie",
    "    prefix KV cache (lookup + store)",
    "    first forward pass (the prefill of what the cache misses)",
    "    other forward passes (decode steps)",
    "    rest of the model call (Python)",
)


class Timers:
    """Seconds per phase, summed over calls, and the number of model calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()
        self.local = threading.local()

    def add(self, phase: str, seconds: float) -> None:
        with self.lock:
            self.seconds[phase] += seconds
            self.counts[phase] += 1

    def wrap(self, obj, name: str, phase: str) -> None:
        """Time every call of `obj.name` (an instance attribute shadows the method)."""
        fn = getattr(obj, name)

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.add(phase, time.perf_counter() - t0)

        obj.__dict__[name] = timed  # the instance's own attribute shadows the class's method (pydantic models too)

    def instrument(self, llm) -> None:
        """Timers on a loaded `TransformersChatModel`'s steps."""
        llm._load()
        tok = llm._tokenizer
        self.wrap(tok, "apply_chat_template", PHASES[3])
        self.wrap(llm, "_trie", PHASES[4])
        self.wrap(llm._prefix_cache, "lookup", PHASES[5])
        self.wrap(llm._prefix_cache, "put", PHASES[5])
        timers, model = self, llm._model.base_model  # the decoder: the tree pass calls it without the LM head
        state = threading.local()

        def pre(_m, _args, _kwargs):
            state.t0 = time.perf_counter()

        def post(_m, _args, _kwargs, _out):
            first = not getattr(timers.local, "forwarded", False)
            timers.local.forwarded = True
            timers.add(PHASES[6] if first else PHASES[7], time.perf_counter() - state.t0)

        model.register_forward_pre_hook(pre, with_kwargs=True)
        model.register_forward_hook(post, with_kwargs=True)
        generate = llm._generate

        def timed_generate(*a, **k):
            timers.local.forwarded = False
            t0 = time.perf_counter()
            try:
                return generate(*a, **k)
            finally:
                timers.add(PHASES[2], time.perf_counter() - t0)

        llm.__dict__["_generate"] = timed_generate

    def table(self, calls: int, policy_calls: dict | None = None) -> dict[str, float]:
        """ms per call of each phase; the rest and the hand-off as differences."""
        s = dict(self.seconds)
        if policy_calls is not None:
            s[PHASES[0]] = policy_calls["seconds"]
        known = sum(s.get(p, 0.0) for p in PHASES[3:8])
        s[PHASES[8]] = s.get(PHASES[2], 0.0) - known
        s[PHASES[1]] = s.get(PHASES[0], 0.0) - s.get(PHASES[2], 0.0)
        return {p: 1000 * s.get(p, 0.0) / max(calls, 1) for p in PHASES}


@contextmanager
def _timed_policy_calls(asked: dict):
    """Every `Policy.ask` timed, per chat model type (local: in-process; ChatOpenAI: served)."""
    from mma_agent.graphs.policy import Policy

    ask = Policy.ask

    def timed(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return ask(self, *a, **k)
        finally:
            entry = asked[type(self.model).__name__]
            entry["seconds"] += time.perf_counter() - t0
            entry["calls"] += 1

    Policy.ask = timed
    try:
        yield
    finally:
        Policy.ask = ask


def _serve_instrumented(model: str, workdir: str, out: str, tree_pass: bool = True) -> None:
    """Child process: `mma serve` with timers on its model; writes them to `out` when it stops."""
    from mma_agent.llm import resolve_chat_model
    from mma_agent.llm.serve import serve

    llm = resolve_chat_model(model, cache_dir=Path(workdir) / "models", tree_pass=tree_pass)
    timers = Timers()
    timers.instrument(llm)
    server, sock = serve(
        llm, model, "127.0.0.1", 0, on_ready=lambda port: print(f"serving at http://127.0.0.1:{port}/v1", flush=True)
    )

    def reset(*_):
        timers.seconds.clear()
        timers.counts.clear()

    signal.signal(signal.SIGUSR1, reset)  # the parent's warm-up is over: count from here
    signal.signal(signal.SIGTERM, lambda *_: None)  # uvicorn re-raises the signal it stopped on: let it return here
    server.run(sockets=[sock])
    calls = timers.counts.get(PHASES[2], 0)
    Path(out).write_text(json.dumps({"calls": calls, "seconds": dict(timers.seconds), "counts": dict(timers.counts)}))


@contextmanager
def _served_child(model: str, workdir: str, out: Path, tree_pass: bool = True):
    import re
    import subprocess

    cmd = [
        sys.executable,
        "-c",
        f"from mma_agent.evals.profile_bench import _serve_instrumented as s; s({model!r}, {workdir!r}, {str(out)!r}, {tree_pass!r})",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = None
    while url is None:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            msg = "the profiled server exited before it was ready"
            raise RuntimeError(msg)
        m = re.search(r"at (http://\S+/v1)", line)
        url = m.group(1) if m else None
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    try:
        yield url, lambda: proc.send_signal(signal.SIGUSR1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def bench_profile(
    pipeline: Workspace, model: str, *, episodes: int = 20, rounds: int = 2, tree_pass: bool = True
) -> dict[str, list[dict]]:
    """Timers per phase, in-process and served, on the same episodes, alternating `rounds` times
    (`tree_pass=False`: both decode with a pass per branching point, as before one pass per call)."""
    from mma_agent.evals.rerank_bench import pool_requests
    from mma_agent.graphs.reranker import create_mma_reranker
    from mma_agent.llm import resolve_chat_model

    catalogue, kits = pipeline.toolkits()
    reqs = pool_requests(pipeline, pipeline.pools("full", "test"), episodes)
    llm = resolve_chat_model(model, cache_dir=pipeline.config.workdir / "models", tree_pass=tree_pass)
    local_timers = Timers()
    local_timers.instrument(llm)
    out_file = pipeline.config.workdir / "profile-server-timers.json"
    results: dict[str, list] = defaultdict(list)
    with _served_child(model, str(pipeline.config.workdir), out_file, tree_pass) as (url, reset_server):
        graphs = {
            "in-process": create_mma_reranker(llm, catalogue=catalogue, toolkits=kits).compile(),
            "over mma serve": create_mma_reranker(
                f"openai:{model}", catalogue=catalogue, toolkits=kits, backend={"options": {"base_url": url}}
            ).compile(),
        }
        kinds = {"in-process": type(llm).__name__, "over mma serve": "ChatOpenAI"}
        asked = {k: {"seconds": 0.0, "calls": 0} for k in kinds.values()}
        for g in graphs.values():
            g.invoke(reqs[0])  # warm-up
        local_timers.seconds.clear()
        local_timers.counts.clear()
        reset_server()
        with _timed_policy_calls(asked):
            for _ in range(rounds):
                for name, g in graphs.items():
                    for r in reqs:
                        t0 = time.perf_counter()
                        g.invoke(r)
                        results[name].append(time.perf_counter() - t0)
    asked = {name: asked[kind] for name, kind in kinds.items()}
    served_warm = asked["over mma serve"]
    server = json.loads(out_file.read_text())
    os.remove(out_file)
    calls_local, calls_served = asked["in-process"]["calls"], served_warm["calls"]
    local = local_timers.table(calls_local, asked["in-process"])
    remote = Timers()
    remote.seconds.update(server["seconds"])
    served = remote.table(server["calls"], None)
    served[PHASES[0]] = 1000 * served_warm["seconds"] / max(calls_served, 1)
    served[PHASES[1]] = served[PHASES[0]] - served[PHASES[2]]
    rows = [
        {"phase (ms per policy call)": p, "in-process": f"{local[p]:.1f}", "over mma serve": f"{served[p]:.1f}"} for p in PHASES
    ]
    episodes_rows = [
        {
            "mode": name,
            "episodes": len(lat),
            "p50 s": f"{statistics.median(lat):.3f}",
            "mean s": f"{statistics.mean(lat):.3f}",
            "policy calls/episode": f"{asked[name]['calls'] / len(lat):.2f}",
        }
        for name, lat in results.items()
    ]
    passes = "one tree pass per call" if tree_pass else "a pass per branching point"
    title = (
        f"{model} ({passes}), compact prompt, {len(reqs)} full-family test pools x {rounds} rounds, alternating modes in one run"
    )
    return {f"Episodes: {title}": episodes_rows, "Where a policy call's time goes": rows}
