"""`ScriptedChatModel`: replies from a script, by the turn of the conversation.

Its k-th reply to a conversation is the script's k-th line, k counting the replies (AI messages)
the conversation already holds; past the end it starts over. It keeps no cursor, so one instance
serves every episode of a scripted action plan, concurrently too. For scripted plans (training's
exploration, the evaluation's plan rows, benchmarks) and tests of graph wiring; never a policy.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult


class ScriptedChatModel(BaseChatModel):
    """Answers `responses[k % len(responses)]` to a conversation holding k earlier replies."""

    responses: list[str]

    @property
    def _llm_type(self) -> str:
        return "mma-scripted"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        turn = sum(m.type == "ai" for m in messages)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=self.responses[turn % len(self.responses)]))])
