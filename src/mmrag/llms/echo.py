"""``EchoChatModel``: a scripted, deterministic chat model for tests only (never a default)."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from mmrag.llms import Completion, CompletionStream, Message, Usage


class EchoChatModel:
    """Replies with queued texts in order (llm's ``MockModel``), else echoes the last user message.

    Every call is recorded in :attr:`calls` so tests can inspect exactly what reached the model.

    Example:
        >>> model = EchoChatModel()
        >>> model.enqueue("Paris [1]")
        >>> model.complete([Message("user", "Capital of France?")]).text
        'Paris [1]'
    """

    name = "echo"
    #: Text-only unless a test says otherwise (to see what a vision model would be sent).
    supports_vision = False

    def __init__(self) -> None:
        self._queue: list[str] = []
        self.calls: list[tuple[list[Message], dict[str, Any]]] = []

    def enqueue(self, *texts: str) -> None:
        """Queue replies, returned one per call in order."""
        self._queue.extend(texts)

    def complete(self, messages: Sequence[Message], **opts: Any) -> Completion:
        """Return the next queued reply (or an echo of the last user message)."""
        self.calls.append((list(messages), dict(opts)))
        if self._queue:
            text = self._queue.pop(0)
        else:
            text = next((m.content for m in reversed(messages) if m.role == "user"), "")
        words_in = sum(len(m.content.split()) for m in messages)
        usage = Usage(words_in, len(text.split()), words_in + len(text.split()), 0.0)
        return Completion(text=text, model=self.name, usage=usage, finish_reason="stop")

    def stream(self, messages: Sequence[Message], **opts: Any) -> CompletionStream:
        """Stream the reply :meth:`complete` would give, word by word."""
        completion = self.complete(messages, **opts)
        result = CompletionStream(iter(()))

        def deltas() -> Iterator[str]:
            words = completion.text.split(" ")
            for i, word in enumerate(words):
                yield word if i == len(words) - 1 else word + " "
            result.completion = completion

        result._deltas = deltas()
        return result
