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

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, Field

from mma_agent.modalities import Modality
from mma_agent.toolkits.base import ASK_COST, EpisodeContext, Evidence, Toolkit, ToolSpec, quote, strength, top_candidates
from mma_agent.toolkits.graph import truncated_ppr
from mma_agent.toolkits.image import ImageToolkit
from mma_agent.toolkits.text import TextToolkit

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
            summary=f"The user answered. {strength(ctx, score, None)}",
        )

    def answer_evidence(self, ctx: EpisodeContext, answer: Answer) -> dict[str, np.ndarray]:
        named = answer_items(ctx, answer)
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
            a = self.text.embed([answer.text])[0]
            return {self.spec("ask_user").channel("text"): np.nan_to_num(text_emb[ctx.candidates]) @ a}
        img = ctx.view.feature("image")
        if img is not None and self.image is not None:
            a = self.image.encode_text([answer.text])[0]
            return {self.spec("ask_user").channel("image"): np.nan_to_num(img[ctx.candidates]) @ a}
        return {}


def title_forms(title: str) -> list[str]:
    """The ways a person writes a catalogue title, normalised (`normalise_words`): without its
    year, with a trailing article moved to the front ("Matrix, The (1999)" -> "the matrix"), and
    each alternative title in parentheses ("Seven (a.k.a. Se7en) (1995)")."""
    import re

    base = re.sub(r"\s*\(\d{4}(?:[-\u2013]\d{0,4})?\)\s*$", "", title.strip())
    alts = re.findall(r"\(([^()]*)\)", base)
    base = re.sub(r"\s*\([^()]*\)", "", base).strip()
    out = []
    for t in [base, *(re.sub(r"^(a\.k\.a\.|aka)\s+", "", a, flags=re.I) for a in alts)]:
        m = re.match(r"^(.*), (The|A|An|Les|Le|La|L'|Il|Das|Der|Die|El)$", t)
        t = f"{m.group(2)} {m.group(1)}" if m else t
        if normalise_words(t):
            out.append(normalise_words(t))
    return out


def normalise_words(text: str) -> str:
    """Lower-case words (letters and digits) separated by single spaces."""
    import re

    return " ".join(re.findall(r"\w+", text.lower()))


@functools.lru_cache(maxsize=4)
def _title_index(titles: tuple[str, ...]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """(multi-word title form -> items, single-word title form as written -> items)."""
    multi: dict[str, list[int]] = {}
    single: dict[str, list[int]] = {}
    for i, title in enumerate(titles):
        for form in title_forms(title):
            if " " in form and len(form) > 3:
                multi.setdefault(form, []).append(i)
            elif len(form) > 3:
                single.setdefault(form, []).append(i)
    return multi, single


def named_items(ctx: EpisodeContext, text: str) -> np.ndarray:
    """Catalogue items a person's words name, when text is visible: titles matched as titles, on
    word boundaries, without the year ("like Blade Runner", "Apollo 13", "2001: A Space Odyssey").
    A title of one word counts only capitalised and not as the text's first word ("Heat", not "the
    heat"). A number is never taken for an item id ("a movie from 1995" names nothing): an app
    that holds ids passes them in the request's fields, not in words."""
    import re

    titles = ctx.view.item_titles()
    if titles is None or not text:
        return np.array([], dtype=np.int64)
    multi, single = _title_index(tuple(titles))
    words = f" {normalise_words(text)} "
    spans = [
        (m.start(), m.end(), form)
        for form in multi
        if f" {form} " in words
        for m in re.finditer(f"(?= {re.escape(form)} )", words)
    ]
    spans = [(a, a + len(form) + 2, form) for a, _, form in spans]
    # the longest title wins where titles overlap: "Toy Story 2" does not also name "Toy Story"
    kept = [x for x in spans if not any(y[0] <= x[0] and x[1] <= y[1] and (y[1] - y[0]) > (x[1] - x[0]) for y in spans)]
    found = [i for _, _, form in kept for i in multi[form]]
    written = re.findall(r"\w+", text)
    capitalised = {w.lower() for k, w in enumerate(written) if k > 0 and w[:1].isupper()}
    found += [i for form, items in single.items() if form in capitalised for i in items]
    return np.array(sorted(set(found)), dtype=np.int64)


def answer_items(ctx: EpisodeContext, answer: Answer) -> np.ndarray:
    """The items an answer names: titles in its words (`named_items`), and the ids passed beside
    them that the catalogue knows."""
    index = ctx.view.item_index
    given = [index[i] for i in answer.items if i in index]
    return np.array(sorted({*named_items(ctx, answer.text).tolist(), *given}), dtype=np.int64)
