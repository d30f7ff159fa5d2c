"""How a person names catalogue items in words: by title, matched as titles.

A year or any other number is never taken for an item id ("a movie from 1995" names nothing); an
app that holds ids passes them in a request's fields, not in words. Used by the answers to
`ask_user` and by the tools that read the person's request.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mma_agent.toolkits.base import EpisodeContext


def title_forms(title: str) -> list[str]:
    """The ways a person writes a catalogue title, normalised (`normalise_words`): without its
    year, with a trailing article moved to the front ("Matrix, The (1999)" -> "the matrix"), and
    each alternative title in parentheses ("Seven (a.k.a. Se7en) (1995)")."""
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
