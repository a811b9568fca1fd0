"""OpenAI conventions of ``/v1/chat/completions``: which model answers, its token counts, its chunks.

The ids ``/v1/models`` lists each select how an answer is made:

- ``mmrag``: the server's default, its configured chat model in its configured answer mode
  (``answer.mode``; for the offline model, extractive);
- a chat model's name (``mmrag-local/smollm2-135m``, or any model the server allows): that model
  *generates* the answer (``answer_mode`` in the request's extra body still overrides, e.g. ``auto``);
- ``mmrag-extractive``: the best sentences of the retrieved context, with no language model.

The reply and every stream chunk carry the same ``model``, fixed before the answer starts: the
chat model's name, or ``mmrag-extractive`` when no language model writes the text. The producer of
the text (``mmrag-extractive/<text model>`` for an auto-mode fallback) is in ``mmrag.producer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmrag.answering import Answer, Answerer
from mmrag.errors import InvalidInputError
from mmrag.http.schemas import ChatCompletionRequest
from mmrag.http.services import Services
from mmrag.registry import answer_mode as configured_mode

DEFAULT_MODEL = "mmrag"
EXTRACTIVE_MODEL = "mmrag-extractive"


@dataclass(frozen=True)
class ModelChoice:
    """What a request's ``model`` resolved to.

    Attributes:
        id: the ``model`` the reply and its chunks name.
        chat: the chat model to build the answerer with (None: the server's default).
        mode: the answer mode (``generate``, ``extractive`` or ``auto``).
    """

    id: str
    chat: str | None
    mode: str


def refuse(message: str, param: str) -> InvalidInputError:
    """A 400 naming the request field at fault (OpenAI's ``param``)."""
    err = InvalidInputError(message)
    err.param = param
    return err


def listed_models(services: Services) -> list[str]:
    """The ids ``/v1/models`` lists: the default, the chat models the server allows, extraction."""
    return list(dict.fromkeys([DEFAULT_MODEL, *services.allowed_models(), EXTRACTIVE_MODEL]))


def choose_model(services: Services, model: str, answer_mode: str | None) -> ModelChoice:
    """Resolve a request's ``model`` (and its optional ``answer_mode``) as the module docstring says.

    Raises:
        InvalidInputError: the server does not serve ``model`` (``param: model``), or
            ``mmrag-extractive`` was asked to generate (``param: answer_mode``).
    """
    allowed = services.allowed_models()
    if model == DEFAULT_MODEL:
        mode = configured_mode(services.settings, allowed[0], answer_mode)
        return ModelChoice(EXTRACTIVE_MODEL if mode == "extractive" else allowed[0], None, mode)
    if model == EXTRACTIVE_MODEL:
        if answer_mode not in (None, "extractive"):
            raise refuse(f"model {EXTRACTIVE_MODEL!r} answers without a language model; answer_mode "
                         f"{answer_mode!r} needs one: name a chat model ({', '.join(allowed)})", "answer_mode")
        return ModelChoice(EXTRACTIVE_MODEL, None, "extractive")
    if model not in allowed:
        raise refuse(f"model {model!r} is not served here; GET /v1/models lists those that are: "
                     f"{', '.join(listed_models(services))}", "model")
    mode = answer_mode or "generate"
    return ModelChoice(EXTRACTIVE_MODEL if mode == "extractive" else model, model, mode)


def usage_of(answerer: Answerer, result: Answer) -> dict[str, int]:
    """OpenAI's ``usage`` of ``result``, counted with the tokenizer of the model that made the text.

    A generated answer keeps the chat model's own counts (SmolLM2's tokenizer, or the provider's).
    When no language model ran (an extractive answer, or an abstention before any call), the
    *text model's* tokenizer counts: it is the model that read the question and the context
    (prompt: the question plus each context block; completion: the answer's text).
    """
    u = result.usage
    if u.total_tokens > 0:
        return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                "total_tokens": u.total_tokens}
    count = _token_counter(answerer)
    if count is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    prompt = count(result.question) + sum(count(b.content) for b in result.blocks)
    completion = count(result.text)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _token_counter(answerer: Answerer) -> Any:
    extractor = answerer.extractor
    return getattr(extractor.embedder, "count_tokens", None) if extractor is not None else None


def include_usage(body: ChatCompletionRequest) -> bool:
    """True when the request asked for a final usage chunk (``stream_options.include_usage``)."""
    return body.stream_options is not None and body.stream_options.include_usage
