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

import re
from collections.abc import Callable
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, Field

from mma_agent.modalities import Modality
from mma_agent.toolkits.base import ASK_COST, QUOTES, EpisodeContext, Evidence, Toolkit, ToolSpec, quote, strength, top_candidates
from mma_agent.toolkits.graph import truncated_ppr
from mma_agent.toolkits.image import ImageToolkit
from mma_agent.toolkits.text import TextToolkit


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

    def simulated_answer(self, ctx: EpisodeContext, modality_type: str) -> str | None:
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
                return "Something that fans of " + "; ".join(ctx.label(int(j)) for j in nb) + " also like."
        return None

    def ask_user(self, ctx: EpisodeContext, modality_type: str, query: str) -> Evidence:
        spec = self.spec("ask_user")
        if self.answer_fn is not None:
            answer = self.answer_fn(modality_type, query)
        elif ctx.ask is not None:  # an app: a person answers (the reranker graph pauses on LangGraph's interrupt)
            answer = ctx.ask(modality_type, query)
        else:
            answer = self.simulated_answer(ctx, modality_type)
        if not answer or not answer.strip():
            return Evidence.none(spec.name, "the user does not know")
        channels = self.answer_evidence(ctx, answer)
        if not channels:
            return Evidence(spec.name, f"User: {quote(answer, 200)} (no visible modality to match it against)", {}, True)
        ((name, score),) = channels.items()
        return Evidence(
            spec.name,
            f"User: {quote(answer, 200)} Best matches: {top_candidates(ctx, score)}.",
            channels,
            summary=f"The user answered. {strength(ctx, score, None)}",
        )

    def answer_evidence(self, ctx: EpisodeContext, answer: str) -> dict[str, np.ndarray]:
        named = named_items(ctx, answer)
        if len(named) and ctx.view.mask.behaviour:
            from mma_agent.models.relevance import relevance_feature

            model = ctx.view.feature(relevance_feature(Modality.BEHAVIOUR))
            score = model.score(named, ctx.candidates) if model is not None else None
            if score is None and ctx.view.feature("graph") is not None:
                score = truncated_ppr(ctx.view.feature("graph"), named)[ctx.candidates]
            if score is not None and np.ptp(score) > 0:
                return {self.spec("ask_user").channel("behaviour"): score}
        text_emb = ctx.view.feature("text")
        if text_emb is not None and self.text is not None:
            a = self.text.embed([answer])[0]
            return {self.spec("ask_user").channel("text"): np.nan_to_num(text_emb[ctx.candidates]) @ a}
        img = ctx.view.feature("image")
        if img is not None and self.image is not None:
            a = self.image.encode_text([answer])[0]
            return {self.spec("ask_user").channel("image"): np.nan_to_num(img[ctx.candidates]) @ a}
        return {}


def named_items(ctx: EpisodeContext, answer: str) -> np.ndarray:
    """Catalogue items an answer names: item ids outside quotes and parentheses (an item's label is
    "id «title»", and a title's words or year are not ids), and, when text is visible, titles it
    contains verbatim."""
    index = ctx.view.item_index
    bare = re.sub(f"{QUOTES[0]}[^{QUOTES[1]}]*{QUOTES[1]}", " ", answer)
    while re.search(r"\([^()]*\)", bare):
        bare = re.sub(r"\([^()]*\)", " ", bare)
    found = [index[t] for t in re.findall(r"[\w.:-]+", bare) if t in index]
    titles = ctx.view.item_titles()
    if titles is not None:
        found += [i for i, title in enumerate(titles) if len(title) > 3 and title in answer]
    return np.array(sorted(set(found)), dtype=np.int64)
