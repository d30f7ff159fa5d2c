"""The policy call: one action from the LLM (or the fixed rule), and what the policy may answer.

`score_candidates` is the graph's own finishing action; every other action is a tool of the
reranker's :class:`ToolVocabulary`, from which the native tool schemas, the rule order and the
completions of constrained decoding are derived here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from mma_agent.graphs.state import SCORE_TOOL
from mma_agent.llm.actions import ActionError, parse_action
from mma_agent.toolkits.base import ToolVocabulary

PREFILL = '{"tool": "'  # local models start every reply here; a completion continues it
BACKEND_ATTEMPTS = 3  # tries of one policy call on a transient backend error (the policy node's RetryPolicy)
RETRY_INTERVAL = 0.25  # seconds before the second try, doubling after


class BackendError(Exception):
    """A policy call that failed (the cause is chained); `attempts_note` says how often it was tried."""

    def __init__(self, message: str, attempts_note: str = "") -> None:
        super().__init__(message)
        self.attempts_note = attempts_note


class TransientBackendError(BackendError):
    """A failure worth another try within the timeout: the policy node's `RetryPolicy` retries it."""


def is_transient(err: BaseException) -> bool:
    """A connection refused or reset, an HTTP 5xx or 429 (openai and httpx errors, read by their
    class names and status so neither is imported). A timeout is not: its time is spent."""
    names = {c.__name__ for c in type(err).__mro__}
    if isinstance(err, TimeoutError) or names & {"APITimeoutError", "TimeoutException"}:
        return False
    status = getattr(err, "status_code", None) or getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(status, int):
        return status >= 500 or status == 429
    return isinstance(err, ConnectionError) or bool(names & {"APIConnectionError", "TransportError"})


def backend_retry_policy():
    """LangGraph's node `RetryPolicy` for the policy node: transient errors only, bounded."""
    from langgraph.types import RetryPolicy

    return RetryPolicy(
        max_attempts=BACKEND_ATTEMPTS,
        initial_interval=RETRY_INTERVAL,
        backoff_factor=2.0,
        jitter=False,
        retry_on=TransientBackendError,
    )


class ScoreWeightsArgs(BaseModel):
    weights: dict[str, float] = Field(
        default_factory=dict, description="Weights over gathered evidence: text, image, graph, ask."
    )


class ScoreMapArgs(BaseModel):
    scores: dict[str, float] = Field(description="Item id -> score for pool items; unscored items keep their first-stage score.")


def tool_schemas(tools: ToolVocabulary, names: list[str], scoring: str) -> list[dict]:
    """OpenAI-style function schemas of the offered tools and `score_candidates`, for `bind_tools`."""
    from langchain_core.utils.function_calling import convert_to_openai_tool

    fn = convert_to_openai_tool(ScoreWeightsArgs if scoring == "weights" else ScoreMapArgs)["function"]
    return [
        *(tools.get(t).openai_schema() for t in names),
        {"type": "function", "function": {**fn, "name": SCORE_TOOL, "description": "Finish: score the pool."}},
    ]


def called_tools(trace: list[dict]) -> set[str | None]:
    return {t["action"]["tool"] for t in trace if "action" in t}


Router = Callable[[ToolVocabulary, list[dict]], dict]  # a policy without an LLM: (tools, trace so far) -> action


def rule_action(tools: ToolVocabulary, trace: list[dict]) -> dict:
    """RuleRouter-Fuse: every automated tool once, in vocabulary order, then equal weights."""
    called = called_tools(trace)
    nxt = next((s.name for s in tools.automated if s.name not in called), None)
    return {"tool": nxt, "args": {}} if nxt else {"tool": SCORE_TOOL, "args": {"weights": {}}}


def gathered_groups(tools: ToolVocabulary, trace: list[dict]) -> list[str]:
    """The evidence groups of the tools that answered with evidence (not Null) so far."""
    return [
        tools.get(t["action"]["tool"]).group
        for t in trace
        if t.get("null") is False and tools.get(t["action"]["tool"]) is not None
    ]


def arg_options(spec, parts: list[str]) -> tuple[dict, ...]:
    """The argument sets constrained decoding may complete for a tool: its templates, or for a tool
    that reads the request, each part of the request (`request_parts`) as that argument."""
    if spec.reads_request is None:
        return spec.arg_templates
    return tuple({spec.reads_request: p} for p in parts) or spec.arg_templates


def completions(
    tools: ToolVocabulary, offered: list[str], trace: list[dict], *, last_turn: bool = False, parts: list[str] | None = None
) -> list[str]:
    """Valid continuations of PREFILL for constrained local models: each offered tool not called
    yet with each of its argument templates, and score_candidates with an entry of the weight
    menu over the groups gathered so far; a tool that reads the request completes its argument
    with each of the request's `parts`. On the last turn only scoring is valid (a tool call
    there could only end in the budget fallback). While nothing has been gathered and an
    automated tool is still untried, scoring is not offered: it could only fall back to the
    first stage, which the reranker does only when every modality it can read is missing."""
    called = called_tools(trace)
    out = (
        []
        if last_turn
        else [
            f'{t}", "args": {json.dumps(a)}}}' for t in offered if t not in called for a in arg_options(tools.get(t), parts or [])
        ]
    )
    gathered = gathered_groups(tools, trace)
    if not gathered and any(s.name not in called for s in tools.automated if s.name in offered) and not last_turn:
        return out
    return out + [f'{SCORE_TOOL}", "args": {{"weights": {json.dumps(w)}}}}}' for w in tools.weight_menu(gathered)]


def scoring_only(allowed: list[str]) -> list[str]:
    """The scoring completions among `allowed` (`completions`): what may be chosen when the
    weights are asked again with the request's words withheld."""
    return [a for a in allowed if a.startswith(SCORE_TOOL)]


class Policy:
    """Asks a chat model for one action, under a timeout; parses the reply. The valid actions
    are enforced where the backend can: a local model by prefill and constrained decoding, an
    OpenAI-compatible server by its structured-outputs choice (`constrained`; vLLM and `mma serve`
    honour it, a server that ignores it answers freely and the reply is parsed).

    A call past `timeout` is abandoned (the reranker falls back) and never left running unbounded:
    a backend that supports it (`supports_cancel`, the local transformers model) runs on the
    calling thread and is told to stop at the deadline, which it does at its next token; any other
    call runs on one of at most `max_workers` threads this policy owns and is abandoned at the
    deadline (an HTTP backend's own client timeout ends it), so a hung backend can hold
    that many threads and no more: further calls wait for a free thread within their timeout.
    32 workers let a `.batch` of up to 32 episodes reach a served model together; a local model
    runs on the batch's own threads (on CUDA concurrent calls share passes, see
    `mma_agent.llm.forward_batcher`).
    """

    def __init__(
        self, model: Any, *, prefill: bool, timeout: float | None, max_workers: int = 32, constrained: bool = True
    ) -> None:
        self.model, self.prefill, self.timeout, self.constrained = model, prefill, timeout, constrained
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="mma-policy")
            if timeout is not None
            else None
        )

    def _request(self, messages: list[dict], allowed: list[str] | None) -> tuple[list, dict, threading.Event]:
        """The langchain messages, the invoke kwargs that constrain the reply, and a cancel event."""
        from langchain_core.messages import convert_to_messages

        if self.prefill:  # a local model: the prefill, then constrained decoding over its continuations
            kwargs = {"prefill": PREFILL, "allowed_completions": allowed, "stop_strings": ["\n"]}
        elif self.constrained and allowed:  # a served model: the whole action lines, as the server's structured-outputs choice
            from mma_agent.llm import choice_kwargs

            kwargs = choice_kwargs(self.model, [PREFILL + c for c in allowed])
        else:
            kwargs = {}
        cancel = threading.Event()
        if self.timeout is not None and getattr(self.model, "supports_cancel", False):
            kwargs["cancel"] = cancel
        return convert_to_messages(messages), kwargs, cancel

    def ask(self, messages: list[dict], allowed: list[str] | None = None, *, timeout: float | None = None) -> tuple[str, dict]:
        """The model's reply to the conversation, and its usage metadata (native tool calls under
        "tool_calls"). Raises on backend failure; a TimeoutError past `timeout` (default the
        policy's own; a retry passes what is left of it)."""
        lc, kwargs, cancel = self._request(messages, allowed)
        t0 = time.perf_counter()
        if self._pool is None:
            return self._reply(self.model.invoke(lc, **kwargs), t0)
        if "cancel" in kwargs:  # a local model stops itself: it runs here, on the thread that runs the episode
            return self._reply(self._cancelled_after(timeout or self.timeout, cancel, lc, kwargs), t0)
        future = self._pool.submit(self.model.invoke, lc, **kwargs)
        try:
            return self._reply(future.result(timeout=timeout or self.timeout), t0)
        except concurrent.futures.TimeoutError:
            future.cancel()  # still queued: never starts; running: told to stop
            cancel.set()
            raise

    def _cancelled_after(self, timeout: float, cancel: threading.Event, lc: list, kwargs: dict) -> Any:
        """The model's call on this thread, told to stop (`cancel`) once `timeout` passes: it stops
        at its next token and this raises TimeoutError. On the thread that runs the episode, the
        model's torch work shares one OpenMP team with the toolkits'; on a thread of its own, two
        teams contend for the cores (a forward pass took 265 ms instead of 161 ms on two cores)."""
        from mma_agent.llm import GenerationCancelled

        timer = threading.Timer(timeout, cancel.set)
        timer.daemon = True
        timer.start()
        try:
            return self.model.invoke(lc, **kwargs)
        except GenerationCancelled as err:
            raise concurrent.futures.TimeoutError(str(err)) from err
        finally:
            timer.cancel()

    async def aask(
        self, messages: list[dict], allowed: list[str] | None = None, *, timeout: float | None = None
    ) -> tuple[str, dict]:
        """`ask` through the chat model's async API (an `openai:` backend awaits its HTTP call;
        a model without one runs in the event loop's executor), cancelled past the timeout."""
        lc, kwargs, cancel = self._request(messages, allowed)
        t0 = time.perf_counter()
        try:
            out = await asyncio.wait_for(self.model.ainvoke(lc, **kwargs), timeout or self.timeout)
        except TimeoutError:
            cancel.set()
            raise
        return self._reply(out, t0)

    def time_left(self, info: Any) -> float | None:
        """Seconds left of the timeout since the first try of this call (LangGraph's execution info)."""
        first = getattr(info, "node_first_attempt_time", None)
        if self.timeout is None or first is None:
            return self.timeout
        return self.timeout - (time.time() - first)

    def error(self, err: Exception, info: Any) -> BackendError:
        """What a failed call raises in the policy node: a `TransientBackendError` (tried again by
        the node's RetryPolicy) while tries and time are left, else a final `BackendError`."""
        attempt = getattr(info, "node_attempt", 1) or 1
        left = self.time_left(info)
        wait = RETRY_INTERVAL * 2 ** (attempt - 1)
        if is_transient(err) and attempt < BACKEND_ATTEMPTS and (left is None or left > wait):
            return TransientBackendError(f"try {attempt}: {type(err).__name__}: {err}")
        return BackendError(f"{type(err).__name__}: {err}", f"after {attempt} tries" if attempt > 1 else "")

    @staticmethod
    def _reply(out: Any, t0: float) -> tuple[str, dict]:
        """(reply text, usage metadata); "seconds" is the backend's own figure, else the call's wall time."""
        meta = dict(getattr(out, "usage_metadata", None) or {})
        meta["seconds"] = float((getattr(out, "response_metadata", None) or {}).get("seconds", 0.0)) or time.perf_counter() - t0
        if getattr(out, "tool_calls", None):
            meta["tool_calls"] = [{"name": c["name"], "args": c.get("args", {})} for c in out.tool_calls]
            if not out.content:
                return json.dumps({"tool": out.tool_calls[0]["name"], "args": out.tool_calls[0].get("args", {})}), meta
        return str(out.content), meta

    @staticmethod
    def action(reply: str, meta: dict) -> dict:
        """The action of a reply: the first native tool call, else the parsed JSON line; an
        unparsable reply is {"tool": None, "invalid": kind, "error": message}."""
        calls = meta.get("tool_calls")
        if calls:
            return {"tool": calls[0]["name"], "args": dict(calls[0].get("args") or {})}
        try:
            act = parse_action(reply)
        except ActionError as err:
            return {"tool": None, "invalid": err.kind, "error": str(err)}
        return {"tool": act.tool, "args": act.args}
