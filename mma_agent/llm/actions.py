"""The agent's action format for plain chat models: one JSON object per turn.

    {"tool": "analyze_text", "args": {}}

`parse_action` accepts it bare, inside a ```json fence, or inside <tool_call> tags, and also the
{"name": ..., "arguments": ...} shape that tool-tuned models emit. It never raises anything but
:class:`ActionError`, whose `kind` says what was wrong (it costs reward in training and is
recorded in the trace); it does not know which tools exist, the graph checks that.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_TAG = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class Action:
    tool: str
    args: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"tool": self.tool, "args": self.args}, separators=(", ", ": "))


class ActionError(ValueError):
    def __init__(self, kind: Literal["no_json", "invalid_json", "bad_shape"], message: str, text: str) -> None:
        super().__init__(message)
        self.kind, self.text = kind, text


def _objects(text: str) -> list[Any]:
    """Every JSON value that starts at a '{' in text, in order (raw_decode tolerates trailing prose)."""
    dec, out, i = json.JSONDecoder(), [], text.find("{")
    while i != -1:
        try:
            obj, end = dec.raw_decode(text, i)
            out.append(obj)
            i = text.find("{", end)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
    return out


def _shape(obj: Any, text: str) -> Action:
    if not isinstance(obj, dict):
        raise ActionError("bad_shape", f"expected a JSON object, got {type(obj).__name__}", text)
    tool = obj.get("tool", obj.get("name"))
    args = obj.get("args", obj.get("arguments", {}))
    if isinstance(args, str):  # OpenAI-style arguments are a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as err:
            raise ActionError("invalid_json", f"arguments is not valid JSON: {err}", text) from err
    if not isinstance(tool, str) or not tool.strip():
        raise ActionError("bad_shape", 'the object needs a "tool" string, e.g. {"tool": "analyze_text", "args": {}}', text)
    if not isinstance(args, dict):
        raise ActionError("bad_shape", f'"args" must be an object, got {type(args).__name__}', text)
    return Action(tool.strip(), args)


def parse_action(text: str) -> Action:
    """The first action in a model's reply. Raises ActionError (and nothing else) when there is none."""
    if not isinstance(text, str) or not text.strip():
        raise ActionError("no_json", "the reply is empty", str(text))
    for pattern in (_TAG, _FENCE):
        for block in pattern.findall(text):
            found = _objects(block)
            if found:
                return _shape(found[0], text)
    found = _objects(text)
    if found:
        return _shape(found[0], text)
    if "{" in text:
        start = text.find("{")
        try:
            json.loads(text[start:])
        except json.JSONDecodeError as err:
            raise ActionError("invalid_json", f"the reply's JSON does not parse: {err.msg} at char {err.pos}", text) from err
    raise ActionError(
        "no_json", 'the reply has no JSON action; answer with one line like {"tool": "analyze_text", "args": {}}', text
    )
