"""The toolkit contract: what a tool sees of a request, what it returns, and how it becomes a
LangChain tool.

Each toolkit declares its tools once, as :class:`ToolSpec` rows: name, arguments, description,
prompt line, evidence group, channels, cost. Everything else about a tool (the system prompt, the
native tool schemas, the evidence groups that `score_candidates` weighs, the RuleRouter order, the
completions constrained decoding allows, the Eq. 3 costs, training's plan space) is derived from
these rows through a :class:`ToolVocabulary`, so a new evidence tool is one toolkit class.

A tool call returns an :class:`Evidence`: a short observation for the LLM and per-candidate
evidence channels aligned with the pool. A masked modality returns an explicit Null observation
and no channels, and still counts as a call. No exception escapes a tool: errors become a Null
observation that names the problem, and are counted in :attr:`Toolkit.errors`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field

from mma_agent.data.masks import ModalityView
from mma_agent.data.splits import Split
from mma_agent.modalities import Mask, Modality

log = logging.getLogger(__name__)


EVIDENCE_COST = 0.02  # Eq. 3: each call of an automated evidence tool
ASK_COST = 0.10  # Eq. 3: each question to the user (worth it only when it moves the ranking more)
STRENGTH_WORDS = (1.6, 1.9)  # z of a group's top 10 over the pool: below is weak, between moderate, above strong (about the
# tertiles of text, image and graph evidence together on 300 full-family validation pools of MovieLens-posters)
LEARNED = "learned"  # the channel part of a tool's learned relevance (mma_agent/models/relevance.py): channel "<group>_learned"
MIXTURES = (0.75, 0.25)  # the first group's share in each two-group entry of the weight menu


@dataclass(frozen=True)
class ToolSpec:
    """One tool, declared once by the toolkit that owns it."""

    name: str  # verb_noun, as the LLM calls it
    args: type[BaseModel]  # its arguments (validated; the native tool schema)
    description: str  # for native tool calling (`bind_tools`) and LangChain tools
    prompt: str  # its line in the JSON-action system prompt
    group: str  # the evidence group a `score_candidates` weight names; channels are "<group>_<part>"
    channels: tuple[str, ...]  # the parts of the evidence it returns, e.g. ("max", "mean") -> text_max, text_mean
    cost: float = EVIDENCE_COST
    automated: bool = True  # False: it needs a person (ask_user): MMA-Interactive only, never in the rule order or the plan space
    arg_templates: tuple[dict, ...] = ({},)  # the argument sets constrained decoding may complete
    brief: str = ""  # its line in the compact system prompt (default: "<name>: <group> evidence")
    # The argument that takes words of the person's request: such a tool is offered only to a
    # request that has one (`ToolVocabulary.for_request`), and constrained decoding completes the
    # argument with each part of it (`request_parts`).
    reads_request: str | None = None

    @property
    def brief_line(self) -> str:
        return self.brief or f"{self.name}: {self.group} evidence"

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(f"{self.group}_{part}" for part in self.channels)

    def channel(self, part: str) -> str:
        if part not in self.channels:
            msg = f"{self.name} declares channels {self.channels}, not {part!r}; add it to its ToolSpec"
            raise ValueError(msg)
        return f"{self.group}_{part}"

    def as_tool(self, func: Callable[..., tuple[str, Evidence]]):
        """A LangChain `StructuredTool` running `func(**args) -> (observation, Evidence)`."""
        from langchain_core.tools import StructuredTool

        return StructuredTool.from_function(
            func=func, name=self.name, description=self.description, args_schema=self.args, response_format="content_and_artifact"
        )

    def openai_schema(self) -> dict:
        """The OpenAI-style function schema, for `bind_tools`."""
        from langchain_core.utils.function_calling import convert_to_openai_tool

        fn = convert_to_openai_tool(self.args)["function"]
        return {"type": "function", "function": {**fn, "name": self.name, "description": self.description}}


@dataclass(frozen=True)
class ToolVocabulary:
    """The tools one reranker offers, in order, each with the key of the toolkit that runs it.

    Tools that read the person's request (`ToolSpec.reads_request`) count only in the vocabulary
    of a request that has one (`for_request`): without it, the offered tools, their evidence
    groups and the weight menu are those of a reranker that takes no request words."""

    specs: tuple[ToolSpec, ...]
    owners: tuple[str, ...]  # toolkit key per spec
    with_request: bool = False  # the request has words: its tools count

    def __post_init__(self) -> None:
        names = [s.name for s in self.specs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            msg = f"tool name(s) {dup} are declared by more than one toolkit; give each tool its own name"
            raise ValueError(msg)

    def for_request(self, query: str | None) -> ToolVocabulary:
        """The vocabulary of one request: with its request tools when it has words."""
        has = bool(query and query.strip())
        return self if has == self.with_request else dataclasses.replace(self, with_request=has)

    def _counts(self, spec: ToolSpec) -> bool:
        return self.with_request or spec.reads_request is None

    @classmethod
    def of(cls, toolkits: Iterable[tuple[str, type[Toolkit] | Toolkit]]) -> ToolVocabulary:
        """From (toolkit key, toolkit class or instance) pairs, in order."""
        pairs = [(key, spec) for key, kit in toolkits for spec in kit.TOOLS]
        return cls(tuple(s for _, s in pairs), tuple(k for k, _ in pairs))

    def get(self, name: str | None) -> ToolSpec | None:
        return next((s for s in self.specs if s.name == name), None)

    def owner(self, name: str) -> str:
        return self.owners[[s.name for s in self.specs].index(name)]

    def names(self, *, interactive: bool = True) -> list[str]:
        """Tool names offered to a policy; a non-interactive one is offered only the automated tools."""
        return [s.name for s in self.specs if (s.automated or interactive) and self._counts(s)]

    @property
    def automated(self) -> tuple[ToolSpec, ...]:
        return tuple(s for s in self.specs if s.automated and self._counts(s))

    def weight_menu(self, gathered: Iterable[str] | None = None) -> list[dict[str, float]]:
        """The fixed scoring weights a policy may choose (constrained decoding and training's plan
        space both read this): equal weights ({}), each group alone, and for each pair of groups
        the mixtures in MIXTURES. With `gathered`, only entries over those groups (equal weights
        always)."""
        keep = set(self.groups if gathered is None else gathered)
        groups = [g for g in self.groups if g in keep]
        pairs = [(a, b) for i, a in enumerate(groups) for b in groups[i + 1 :]]
        return [{}, *({g: 1} for g in groups), *({a: w, b: round(1 - w, 2)} for a, b in pairs for w in MIXTURES)]

    @property
    def groups(self) -> dict[str, tuple[str, ...]]:
        """Evidence group -> its channel names, in declaration order (tools may share a group)."""
        out: dict[str, tuple[str, ...]] = {}
        for s in self.specs:
            if not self._counts(s):
                continue
            out[s.group] = (*out.get(s.group, ()), *(c for c in s.channel_names if c not in out.get(s.group, ())))
        return out


@dataclass(frozen=True)
class Catalogue:
    """Run-scoped data every toolkit reads: the split and features derived from it, each tagged
    with its modality so that `view(mask)` hides it when the modality is masked."""

    split: Split
    features: dict[str, tuple[Modality, Any]] = field(default_factory=dict)

    def with_features(self, **features: tuple[Modality, Any]) -> Catalogue:
        return Catalogue(self.split, {**self.features, **features})

    def view(self, mask: Mask) -> ModalityView:
        return ModalityView(self.split, mask, features=self.features)

    def resolve(self, item_ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Catalogue indices of known ids, and the unknown ids (reported, never dropped silently)."""
        index = self.split.item_index
        known = [index[i] for i in item_ids if i in index]
        return np.array(known, dtype=np.int64), [i for i in item_ids if i not in index]


@dataclass(frozen=True)
class EpisodeContext:
    """What the tools of one request may see. `view` enforces the request's (hidden) mask."""

    view: ModalityView
    history: np.ndarray  # (h,) catalogue indices, oldest first
    candidates: np.ndarray  # (n,) catalogue indices: the pool, in request order
    user: int | None = None  # catalogue user index, None for a user the catalogue does not know
    target: int | None = None  # evaluation only: the held-out item the simulated user answers about
    ask: Callable[[str, str], str | None] | None = None  # an app's way to ask a person (modality_type, question) -> answer
    first_stage: np.ndarray | None = None  # (n,) the first-stage scores of the pool, aligned with `candidates`
    query: str | None = None  # the person's request in their words (checked and capped), if the request has one
    item_words: bool = False  # whether the policy's action reads items' own words (per-item scoring): see `label`

    def item_id(self, i: int) -> str:
        return str(self.view.item_ids[i])

    def resolve_in_pool(self, item_ids: list[str]) -> tuple[list[int], list[str]]:
        """Catalogue indices of the given ids that are in the pool, and the ids that are not."""
        pos = {self.item_id(int(i)): int(i) for i in self.candidates}
        return [pos[i] for i in item_ids if i in pos], [i for i in item_ids if i not in pos]

    @cached_property
    def pool(self) -> frozenset[int]:
        """The catalogue indices of the pool."""
        return frozenset(int(i) for i in self.candidates)

    def label(self, i: int, *, named: bool = False) -> str:
        """An item as the LLM sees it: its id, and its title (quoted data) only where the policy's
        action reads items' words (`item_words`: `scoring="scores"`, where it scores items) and the
        item is in the pool or one the request's words name (`named`). Anywhere else an item is its
        id alone. A policy that routes (chooses tools, then weights over evidence groups) needs no
        item's words for any decision, so none reaches it, whatever it says (#25, the full prompt:
        attacked titles of the history moved the tool choices in 31 of 88 requests against 12 of
        88 for a benign change; attacked titles of the pool items it was shown, in 21 of 88
        against 3 of 88). The request's own words reach it: they are what it routes."""
        shown = self.item_words and (named or int(i) in self.pool)
        title = self.view.item_field(int(i), "title") if shown else None
        return f"{self.item_id(i)} {quote(title)}" if title else self.item_id(i)

    def words(self, i: int, field: str, limit: int) -> str:
        """An item's free text in `field` (its overview), quoted, where the policy's action reads
        items' words (`item_words`, see `label`); elsewhere nothing."""
        text = self.view.item_field(int(i), field) if self.item_words else None
        return quote(text, limit) if text else ""


QUOTES = ("\u00ab", "\u00bb")  # « »: text from items or users, shown to the policy as data (the system prompt says so)
QUOTE_LIMIT = 60
# What an action is made of (graphs/policy.py, llm/actions.py): JSON braces, brackets and double
# quotes, <tool_call> tags, code fences, and tool names (snake_case). Inside quoted data each
# becomes a look-alike that no parser or constrained completion accepts, whatever the words say.
NEUTRAL = str.maketrans({"{": "(", "}": ")", "[": "(", "]": ")", '"': "'", "<": "\u2039", ">": "\u203a", "`": "'", "_": " "})
# A structured span (a {...} object, a [...] holding JSON, a <tag>) inside quoted data is replaced
# whole by ELIDED before that: its look-alike still read as an action to a small model (three history
# titles holding a score_candidates line made the full-prompt policy skip its remaining tools, 7 of
# 8), and no title, tag, overview or answer needs one to say what it says.
ELIDED = "(\u2026)"
STRUCTURED = (r"\{[^{}]*\}", r"\[[^\[\]]*[\"{:][^\[\]]*\]", r"<[^<>]{0,64}>", r"`{3}")


def quote(text: str, limit: int = QUOTE_LIMIT) -> str:
    """Text that comes from items or users, as the policy sees it: one line, without the quote
    marks themselves or control characters, with every structured span elided (STRUCTURED) and
    every action-shaped character neutralised (no JSON structure, tags, fences or tool names
    survive, see NEUTRAL), at most `limit` characters,
    inside « ». It is data, never an instruction: no span of it can be an action, and constrained
    decoding keeps the actions to the tool vocabulary whatever it says."""
    text = str(text)[: 4 * limit + 16]  # the work is bounded by the cap, not by the text's length
    clean = "".join(" " if (ch in QUOTES or not ch.isprintable()) else ch for ch in text)
    for pattern in STRUCTURED:  # innermost first, until none is left (bounded: each pass shortens the text)
        while (elided := re.sub(pattern, ELIDED, clean)) != clean:
            clean = elided
    clean = clean.translate(NEUTRAL)
    clean = " ".join(clean.split())
    if len(clean) > limit:
        clean = clean[: limit - 1].rstrip() + "\u2026"
    return f"{QUOTES[0]}{clean}{QUOTES[1]}"


@dataclass(frozen=True)
class Evidence:
    tool: str
    observation: str
    channels: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (n_candidates,)
    null: bool = False
    summary: str = ""  # what a compact policy prompt shows instead of the observation (see graphs/prompts.py)

    @property
    def brief(self) -> str:
        return self.summary or self.observation

    @classmethod
    def none(cls, tool: str, why: str) -> Evidence:
        return cls(tool, f"Null: {why}", {}, True)


class Toolkit:
    """One modality's tools. Subclasses declare `TOOLS` (one :class:`ToolSpec` per tool) and a
    method per tool name taking (ctx, **args) -> Evidence, whose channels use the spec's names."""

    name: ClassVar[str]  # its key in the toolkits mapping a reranker is given
    modality: ClassVar[Modality | None]
    TOOLS: ClassVar[tuple[ToolSpec, ...]]

    @classmethod
    def spec(cls, tool: str) -> ToolSpec:
        for s in cls.TOOLS:
            if s.name == tool:
                return s
        msg = f"{cls.__name__} has no tool {tool!r}; its tools: {[s.name for s in cls.TOOLS]}"
        raise KeyError(msg)

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()

    def prepare(self, catalogue: Catalogue, cache_dir: Path) -> Catalogue:
        """Build the run-scoped features this toolkit needs (cached); return the extended catalogue."""
        return catalogue

    def call(self, tool: str, ctx: EpisodeContext, /, **args: Any) -> Evidence:
        """Run one tool; never raises (the model's arguments may be named anything, "tool" too)."""
        if self.modality is not None and not ctx.view.mask.available(self.modality):
            return Evidence.none(tool, f"the {self.modality.value} modality is unavailable for this request")
        from langgraph.errors import GraphBubbleUp

        try:
            ev = getattr(self, tool)(ctx, **args)
        except GraphBubbleUp:  # an interrupt (the graph pauses for a person's answer) is control flow, not a failure
            raise
        except Exception as err:  # a tool failure is evidence of nothing, not a crash of the app
            self.errors[type(err).__name__] += 1
            log.warning("tool %s failed: %s: %s", tool, type(err).__name__, err)
            return Evidence.none(tool, f"the tool failed ({type(err).__name__}: {err})")
        declared = self.spec(tool).channel_names
        for name, v in ev.channels.items():
            if name not in declared:
                self.errors["undeclared_channel"] += 1
                return Evidence.none(tool, f"internal error: channel {name} is not among {tool}'s declared channels {declared}")
            if v.shape != ctx.candidates.shape:
                self.errors["misaligned"] += 1
                return Evidence.none(tool, f"internal error: channel {name} has shape {v.shape}, pool has {ctx.candidates.shape}")
        return ev

    def tools(self, ctx: EpisodeContext) -> list:
        """LangChain tools bound to one request; each returns (observation, Evidence) as
        content_and_artifact, so a ToolMessage carries the evidence beside the text."""
        out = []
        for spec in self.TOOLS:

            def run(_tool: str = spec.name, **kwargs: Any) -> tuple[str, Evidence]:
                ev = self.call(_tool, ctx, **kwargs)
                return ev.observation, ev

            out.append(spec.as_tool(run))
        return out


class RequestWordsArgs(BaseModel):
    """The arguments of a tool that reads the person's request (`ToolSpec.reads_request="words"`)."""

    words: str | None = Field(
        default=None, max_length=200, description="Words of the person's request to match (default: the whole request)."
    )


def request_words(ctx: EpisodeContext, words: str | None) -> str | None:
    """The words a request tool reads: those the policy chose, else the whole request; None without any."""
    text = words if isinstance(words, str) and words.strip() else ctx.query
    return text if text and text.strip() else None


REQUEST_PARTS = 4  # the request itself, then at most this many of its parts, as arguments a policy may choose


def request_parts(query: str | None) -> list[str]:
    """What a policy may pass a request tool: the whole request, then its parts (split at commas,
    semicolons, "but", "and", "with", "like"), each of two words or more, in order, deduplicated.
    "something dark, like Blade Runner but from the 1990s" -> the whole, "something dark",
    "like Blade Runner", "from the 1990s"."""
    import re

    if not query or not query.strip():
        return []
    whole = " ".join(query.split())
    pieces = re.split(r"\s*[,;]\s*|\s+(?=(?:but|and|with|like)\b)", whole, flags=re.IGNORECASE)
    pieces = [re.sub(r"^(?:but|and)\s+", "", p, flags=re.IGNORECASE).strip() for p in pieces]
    out = [whole]
    for p in pieces:
        if len(p.split()) >= 2 and p not in out and len(out) <= REQUEST_PARTS:
            out.append(p)
    return out
