"""Clarification: `ask_user` puts a question about one modality to the user.

In evaluation a simulated user answers from what survives of the held-out target only: its genres
and tags when text survives, its poster's zero-shot tags when the image survives, its strongest
co-interaction neighbours when behaviour survives; a question about a masked modality gets "I
don't know" (Null). In an app, `answer_fn` supplies a person's answer (the agent graph wires it to
LangGraph's `interrupt()` through the request's `EpisodeContext.ask`). The answer becomes evidence:
when it names catalogue items (by id, or by title when text is visible) and behaviour is visible,
the learned behaviour relevance of the candidates seeded with those items (what people who liked
them went on to like); otherwise its MiniLM similarity to each candidate's text when text is
visible, or else its CLIP text similarity to each candidate's poster.
This is an upper-bound diagnostic, not a deployable advantage: the simulated user knows the target.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, Field

from mma_agent.toolkits.base import ASK_COST, EpisodeContext, Evidence, Toolkit, ToolSpec, quote
from mma_agent.toolkits.evidence import strength, top_candidates
from mma_agent.toolkits.graph import seeded_behaviour
from mma_agent.toolkits.image import ImageToolkit
from mma_agent.toolkits.text import TextToolkit
from mma_agent.toolkits.titles import named_items

MAX_ANSWER_CHARS = 1_000  # longer answers are cut before any work (a 1 MB answer cost 13 s of CPU in title matching)
MAX_ANSWER_ITEMS = 20


@dataclass(frozen=True)
class Answer:
    """A person's answer as the tools read it: their words, and the item ids an app passed
    deliberately beside them (never read out of the words)."""

    text: str
    items: tuple[str, ...] = ()
    note: str | None = None  # what the check changed (a cut), for the observation


def checked_answer(answer: object) -> tuple[Answer | None, str | None]:
    """An answer checked before any work: a string, or a mapping {"text": str, "items": [ids]}
    (ids an app passes on purpose, at most MAX_ANSWER_ITEMS). (the Answer, None), or (None, why
    it is no answer). Words longer than MAX_ANSWER_CHARS are cut there (the note says so);
    characters that are not valid Unicode (lone surrogates) are replaced."""
    items: tuple[str, ...] = ()
    if isinstance(answer, Mapping):
        raw_items = answer.get("items") or []
        if not isinstance(raw_items, list | tuple) or not all(isinstance(i, str | int) for i in raw_items):
            return None, "the answer's items must be a list of item ids"
        items = tuple(str(i) for i in raw_items[:MAX_ANSWER_ITEMS])
        answer = answer.get("text", "")
    if not isinstance(answer, str):
        return None, f"the answer is {type(answer).__name__}, not text"
    note = None
    if len(answer) > MAX_ANSWER_CHARS:
        answer, note = answer[:MAX_ANSWER_CHARS], f"the answer was cut to its first {MAX_ANSWER_CHARS} characters"
    answer = answer.encode("utf-8", "replace").decode("utf-8")
    if not answer.strip() and not items:
        return None, "the answer is empty"
    return Answer(answer, items, note), None


class AskUserArgs(BaseModel):
    modality_type: Literal["text", "image", "behaviour"] = Field(description="Which kind of preference to ask about.")
    query: str = Field(min_length=1, max_length=300, description="The question, in plain words.")


class ClarifyToolkit(Toolkit):
    name = "clarify"
    modality = None
    TOOLS: ClassVar = (
        ToolSpec(
            name="ask_user",
            args=AskUserArgs,
            description="Ask the user one clarification question about their preference (modality_type: text = genres and topics, "
            "image = look and style, behaviour = similar things they liked). Costly: use only when evidence is weak.",
            prompt='ask_user {"modality_type": "text"|"image"|"behaviour", "query": "..."}: ask the user one question (costly).',
            brief='ask_user {"modality_type": "text"|"image"|"behaviour", "query": "..."}: ask the user (costly)',
            group="ask",
            channels=(
                "behaviour",
                "text",
                "image",
            ),  # items the answer names, through the behaviour relevance; or its words against texts, or posters
            cost=ASK_COST,
            automated=False,
            arg_templates=tuple({"modality_type": m, "query": "What do you feel like?"} for m in ("text", "image", "behaviour")),
        ),
    )

    def __init__(
        self, text: TextToolkit | None, image: ImageToolkit | None, answer_fn: Callable[[str, str], str] | None = None
    ) -> None:
        super().__init__()
        self.text, self.image, self.answer_fn = text, image, answer_fn

    def simulated_answer(self, ctx: EpisodeContext, modality_type: str) -> str | dict | None:
        t, view = ctx.target, ctx.view
        if t is None:
            return None
        if modality_type == "text" and view.mask.text:
            genres = (view.item_field(t, "genres") or "").replace("|", ", ")
            words = [
                w
                for w in ((view.item_field(t, "tags") or "").split("|") + (view.item_field(t, "keywords") or "").split("|"))
                if w
            ][:4]
            return f"I'd like {genres or 'something'}" + (f", something with {', '.join(words)}" if words else "") + "."
        if modality_type == "image" and view.mask.image and self.image is not None:
            emb = view.feature("image")
            if emb is not None and not np.isnan(emb[t]).any():
                return "Something that looks " + ", ".join(self.image.top_tags(emb[t], 3)) + "."
        if modality_type == "behaviour" and view.mask.behaviour:
            graph = view.feature("graph")
            if graph is not None and graph.co[t].nnz:
                row = graph.co[t]
                nb = row.indices[np.argsort(-row.data, kind="stable")[:3]]
                words = "Something that fans of " + "; ".join(ctx.label(int(j)) for j in nb) + " also like."
                return {"text": words, "items": [ctx.item_id(int(j)) for j in nb]}  # the harness holds the ids: it passes them
        return None

    def ask_user(self, ctx: EpisodeContext, modality_type: str, query: str) -> Evidence:
        spec = self.spec("ask_user")
        if self.answer_fn is not None:
            answer = self.answer_fn(modality_type, query)
        elif ctx.ask is not None:  # an app: a person answers (the reranker graph pauses on LangGraph's interrupt)
            answer = ctx.ask(modality_type, query)
        else:
            answer = self.simulated_answer(ctx, modality_type)
        if answer is None:
            return Evidence.none(spec.name, "the user does not know")
        checked, why = checked_answer(answer)
        if checked is None:
            return Evidence.none(spec.name, f"the user does not know ({why})")
        said = quote(checked.text, 200) + (f" ({checked.note})" if checked.note else "")
        channels = self.answer_evidence(ctx, checked)
        if not channels:
            return Evidence(spec.name, f"User: {said} (no visible modality to match it against)", {}, True)
        ((name, score),) = channels.items()
        return Evidence(
            spec.name,
            f"User: {said} Best matches: {top_candidates(ctx, score)}.",
            channels,
            summary=f"The user answered. {strength(ctx, score, None).brief}",
        )

    def answer_evidence(self, ctx: EpisodeContext, answer: Answer) -> dict[str, np.ndarray]:
        """The items the answer names, through the behaviour evidence they seed; else its words
        against each candidate's text; else against each poster."""
        spec = self.spec("ask_user")
        score = seeded_behaviour(ctx, answer_items(ctx, answer))
        if score is not None:
            return {spec.channel("behaviour"): score}
        if self.text is not None and (sim := self.text.words_similarity(ctx, answer.text)) is not None:
            return {spec.channel("text"): sim}
        if self.image is not None and (sim := self.image.words_similarity(ctx, answer.text)) is not None:
            return {spec.channel("image"): sim}
        return {}


def answer_items(ctx: EpisodeContext, answer: Answer) -> np.ndarray:
    """The items an answer names: titles in its words (`named_items`), and the ids passed beside
    them that the catalogue knows."""
    index = ctx.view.item_index
    given = [index[i] for i in answer.items if i in index]
    return np.array(sorted({*named_items(ctx, answer.text).tolist(), *given}), dtype=np.int64)
