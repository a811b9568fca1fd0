"""Chat models: the ``ChatModel`` protocol, its message/completion types, and the backends.

Backends, one per module (import them directly; nothing heavy is imported here):

* :mod:`mmrag.llms.litellm`: :class:`~mmrag.llms.litellm.LiteLLMChatModel`, every provider LiteLLM
  knows (``openai/...``, ``ollama_chat/...``, an OpenAI-compatible ``api_base``) plus the in-process
  offline model below;
* :mod:`mmrag.llms.smollm`: SmolLM2-135M-Instruct served in-process behind LiteLLM's custom-provider
  interface (model string ``mmrag-local/smollm2-135m``);
* :mod:`mmrag.llms.echo`: ``EchoChatModel``, a scripted fake for tests only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Protocol, Sequence, runtime_checkable

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    """One chat message (OpenAI shape). ``images`` are ``data:`` URIs sent as image parts."""

    role: Role
    content: str
    images: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI/LiteLLM wire form: plain text, or text plus ``image_url`` parts."""
        if not self.images:
            return {"role": self.role, "content": self.content}
        parts: list[dict[str, Any]] = [{"type": "text", "text": self.content}]
        parts += [{"type": "image_url", "image_url": {"url": uri}} for uri in self.images]
        return {"role": self.role, "content": parts}


@dataclass(frozen=True)
class Usage:
    """Token counts and cost of one call. ``cost_usd`` is None when the price is unknown."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float | None = None


@dataclass(frozen=True)
class Completion:
    """A chat model's reply."""

    text: str
    model: str  # the model that answered (a fallback's name when a fallback answered)
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    latency_s: float = 0.0


class CompletionStream:
    """Text deltas of a streamed reply; :attr:`completion` is set once the stream is exhausted.

    Example:
        >>> stream = model.stream([Message("user", "hi")])  # doctest: +SKIP
        >>> for delta in stream: print(delta, end="")      # doctest: +SKIP
        >>> stream.completion.usage.total_tokens            # doctest: +SKIP
    """

    def __init__(self, deltas: Iterator[str]) -> None:
        self._deltas = deltas
        self.completion: Completion | None = None

    def __iter__(self) -> Iterator[str]:
        return self._deltas


@runtime_checkable
class ChatModel(Protocol):
    """What answering needs from an LLM.

    Example:
        >>> from mmrag.llms.litellm import LiteLLMChatModel
        >>> model = LiteLLMChatModel("openai/gpt-4o-mini", timeout=30)  # doctest: +SKIP
        >>> model.complete([Message("user", "Say hi")]).text             # doctest: +SKIP
        'Hi!'
    """

    name: str
    #: Whether the model reads image parts (:class:`Message` ``images``); a text-only model gets
    #: each image as a described block instead.
    supports_vision: bool

    def complete(self, messages: Sequence[Message], **opts: object) -> Completion: ...

    def stream(self, messages: Sequence[Message], **opts: object) -> CompletionStream: ...


__all__ = ["ChatModel", "Completion", "CompletionStream", "Message", "Usage"]
