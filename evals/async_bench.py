"""`mma bench async`: the reranker over a served policy (`openai:` against `mma serve`), sync
`.batch` against `abatch`, side by side in one run.

`mma serve` runs in its own process (started here on a free port, the same model for both modes),
so this process's threads are the reranker's alone. The same real requests (test pools of the full
family, 100 items each) go through `.batch` (LangGraph's thread pool; each policy call on one of the
policy's threads) and `abatch` (one event loop; the policy node awaits the chat model's async HTTP
call), alternately, `rounds` times each. Reported per mode and round: requests/s, wall time, the
peak number of threads in this process (sampled every 2 ms), and whether the rankings match.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

from mma_agent.toolkits.workspace import Workspace


@contextmanager
def served(model: str, workdir: str, timeout: float = 300.0):
    """`mma serve --model MODEL --port 0` in a child process; yields its base URL."""
    cmd = [sys.executable, "-m", "mma_agent.cli", "serve", "--model", model, "--port", "0", "--workdir", workdir]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        start, url = time.monotonic(), None
        while url is None:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                msg = f"mma serve exited with {proc.returncode} before it was ready"
                raise RuntimeError(msg)
            if time.monotonic() - start > timeout:
                msg = f"mma serve was not ready within {timeout:.0f} s"
                raise TimeoutError(msg)
            found = re.search(r"at (http://\S+/v1)", line)
            url = found.group(1) if found else None
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # drain its log
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


class ThreadPeak:
    """The most threads this process had while the block ran (sampled every `every` seconds)."""

    def __init__(self, every: float = 0.002) -> None:
        self.every, self.peak, self._stop = every, 0, threading.Event()

    def __enter__(self) -> ThreadPeak:
        self.before = threading.active_count()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, threading.active_count() - 1)  # not the sampler itself
            time.sleep(self.every)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def bench_async(
    pipeline: Workspace,
    *,
    serve_model: str = "transformers:smollm2-135m",
    requests: int = 32,
    rounds: int = 2,
    with_image: bool = True,
) -> dict[str, list[dict]]:
    from mma_agent.evals.rerank_bench import pool_requests
    from mma_agent.graphs.reranker import create_mma_reranker

    catalogue, kits = pipeline.toolkits(image=with_image)
    reqs = pool_requests(pipeline, pipeline.pools("full", "test"), requests)
    config = {"max_concurrency": len(reqs)}
    rows, rankings, reasons = [], {}, []
    with served(serve_model, str(pipeline.config.workdir)) as url:
        graph = create_mma_reranker(
            f"openai:{serve_model}", catalogue=catalogue, toolkits=kits, backend={"options": {"base_url": url}, "timeout": 600}
        ).compile()
        graph.invoke(reqs[0])  # warm-up: the server's first call, the toolkits' caches
        loop = (
            asyncio.new_event_loop()
        )  # one loop for every abatch round, as in an app (the async HTTP client keeps its connections)
        modes = {
            "sync .batch": lambda: graph.batch(reqs, config=config),
            "abatch": lambda: loop.run_until_complete(graph.abatch(reqs, config=config)),
        }
        for r in range(rounds):
            for mode, run in modes.items():
                with ThreadPeak() as threads:
                    start = time.perf_counter()
                    outs = run()
                    wall = time.perf_counter() - start
                rankings.setdefault(mode, [o["ranking"] for o in outs])
                reasons += [f"{mode}, round {r + 1}: {o['reason']}" for o in outs if o["fallback"]]
                rows.append(
                    {
                        "mode": mode,
                        "round": r + 1,
                        "requests": len(outs),
                        "requests/s": f"{len(outs) / wall:.2f}",
                        "wall s": f"{wall:.1f}",
                        "threads before": threads.before,
                        "peak threads": threads.peak,
                        "threads added at peak": threads.peak - threads.before,
                        "LLM calls": sum(o["usage"].get("llm_calls", 0) for o in outs),
                        "fallbacks": sum(o["fallback"] for o in outs),
                    }
                )
        loop.close()
    same = sum(a == b for a, b in zip(rankings["sync .batch"], rankings["abatch"], strict=True))
    title = (
        f"{len(reqs)} requests at once over `mma serve` ({serve_model}) via openai: (test pools, full family, 100 items), "
        f"sync .batch against abatch, alternating, in one run; rankings identical in {same}/{len(reqs)}"
    )
    return {title: rows} | ({"Fallbacks, with their reasons": [{"fallback": x} for x in reasons]} if reasons else {})
