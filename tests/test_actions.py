import pytest

from mma_agent.llm.actions import Action, ActionError, parse_action


@pytest.mark.parametrize(
    "text",
    [
        '{"tool": "analyze_text", "args": {"item_ids": ["1"]}}',
        'I will look at text first.\n{"tool": "analyze_text", "args": {"item_ids": ["1"]}} then score.',
        '```json\n{"tool": "analyze_text", "args": {"item_ids": ["1"]}}\n```',
        '```\n{"tool": "analyze_text", "args": {"item_ids": ["1"]}}\n```',
        '<tool_call>{"name": "analyze_text", "arguments": {"item_ids": ["1"]}}</tool_call>',
        '<tool_call>\n{"name": "analyze_text", "arguments": "{\\"item_ids\\": [\\"1\\"]}"}\n</tool_call>',
        '<tool_call>{"tool": "analyze_text", "args": {"item_ids": ["1"]}}',  # unterminated tag
    ],
)
def test_accepted_forms(text):
    assert parse_action(text) == Action("analyze_text", {"item_ids": ["1"]})


def test_args_default_and_first_object_wins():
    assert parse_action('{"tool": "retrieve_graph"} {"tool": "analyze_text"}') == Action("retrieve_graph", {})


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("", "no_json"),
        ("I think the user likes comedies.", "no_json"),
        ('{"tool": "analyze_text", "args": {', "invalid_json"),
        ('{"args": {}}', "bad_shape"),
        ('{"tool": "x", "args": [1, 2]}', "bad_shape"),
        ('{"tool": 3}', "bad_shape"),
        ('<tool_call>{"name": "x", "arguments": "{oops"}</tool_call>', "invalid_json"),
    ],
)
def test_broken_replies_are_typed_errors(text, kind):
    with pytest.raises(ActionError) as info:
        parse_action(text)
    assert info.value.kind == kind and info.value.text == text


def test_round_trip():
    a = Action("score_candidates", {"weights": {"text_max": 0.7, "graph_ppr": 0.3}})
    assert parse_action(a.to_json()) == a
