"""The policy's prompt: the action format and tools in plain words, and the episode so far.

The format does not depend on a chat template with tool support (SmolLM2's has none): the model
answers one line of JSON. The hidden mask is never mentioned; the agent learns that a modality
is missing only when a tool answers Null.
"""

from __future__ import annotations

TOOL_LINES = {
    "analyze_text": 'analyze_text {"item_ids": [...optional]}: text evidence, how candidates\' titles, genres and plots match the history.',
    "analyze_image": 'analyze_image {"item_ids": [...optional]}: image evidence, how candidates\' posters look like the history\'s.',
    "retrieve_graph": 'retrieve_graph {}: behaviour evidence, what people with the same tastes also liked.',
    "ask_user": 'ask_user {"modality_type": "text"|"image"|"behaviour", "query": "..."}: ask the user one question (costly).',
}
SCORE_LINE = {
    "weights": 'score_candidates {"weights": {"text": w, "image": w, "graph": w, "ask": w}}: finish; weigh the evidence you gathered.',
    "scores": 'score_candidates {"scores": {"<item id>": score, ...}}: finish; score candidates (unscored ones keep their first-stage score).',
}


def system_prompt(tools: list[str], scoring: str, max_turns: int) -> str:
    lines = [
        "You rerank a pool of candidate items for one user. Gather evidence with tools, then score the pool.",
        'Each reply is ONE line of JSON: {"tool": NAME, "args": {...}}. No other text.',
        "Tools:",
        *(f"- {TOOL_LINES[t]}" for t in tools),
        f"- {SCORE_LINE[scoring]}",
        "A tool answers Null when its data is missing for this request: do not call it again.",
        f"You have at most {max_turns} turns; each tool call costs a little.",
        'Example: {"tool": "analyze_text", "args": {}}',
    ]
    return "\n".join(lines)


def request_prompt(n_history: int, n_candidates: int) -> str:
    return f"The user liked {n_history} items. The pool has {n_candidates} candidates. Choose your first action."


def observation_prompt(observation: str, turn: int, max_turns: int) -> str:
    left = max_turns - turn
    hint = " Next action?" if left > 1 else " Last turn: call score_candidates now."
    return f"Observation: {observation}\n(turn {turn} of {max_turns}){hint}"
