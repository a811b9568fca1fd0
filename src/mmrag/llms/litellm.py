"""LiteLLM backend: every chat call mmrag makes goes through :func:`litellm.completion`.

Why each choice:

* litellm is imported lazily, on the first model built, never when ``mmrag`` is imported: the import
  costs ~2 s, and it fetches a price map from GitHub unless ``LITELLM_LOCAL_MODEL_COST_MAP`` is set
  before the import. :func:`import_litellm` sets it (``setdefault``: a caller's explicit choice wins)
  then imports; litellm reads the flag only from ``os.environ``. mmrag writes the environment only at
  such edges, never when a module is imported: here and in
  :func:`mmrag.evaluation.ragas_metrics.import_ragas` (a default, before the library's own import),
  and in ``mmrag serve`` (the settings its worker processes rebuild the app from). litellm also sets ``TIKTOKEN_CACHE_DIR`` process-wide on import (to its bundled tokenizer
  files, which is what keeps token counting offline); we leave that as it is.
* litellm's default timeout is 6000 s, so every call passes ``timeout=`` explicitly, plus
  ``num_retries`` and optional ``fallbacks`` (litellm's own retry/fallback machinery).
* No litellm (or openai/httpx) exception leaves this module: :func:`map_litellm_exceptions` turns them
  into :class:`~mmrag.errors.UpstreamError` and its subclasses, including errors raised while a
  stream is being consumed.
* Cost comes from ``litellm.completion_cost``; it raises for models without a price (custom or local
  ones), so a failure there records ``cost_usd=None`` rather than failing the answer.
* Model strings starting with ``mmrag-local/`` are served in-process (:mod:`mmrag.llms.smollm`); the
  provider is registered with litellm on first use, so the call path is the same offline and online.
"""

from __future__ import annotations

import logging

import contextlib
import os
import time
from typing import Any, Iterator, Sequence

from mmrag.errors import (
    InvalidInputError,
    MissingDependencyError,
    MmragError,
    RateLimitedError,
    UpstreamError,
    UpstreamTimeoutError,
)
from mmrag.llms import Completion, CompletionStream, Message, Usage

log = logging.getLogger(__name__)

#: Prefix of model strings served in-process by :mod:`mmrag.llms.smollm`.
LOCAL_PROVIDER = "mmrag-local"


def import_litellm() -> Any:
    """Import litellm offline-safely (local price map, no debug banners) and return the module.

    Raises:
        MissingDependencyError: litellm is not installed.
    """
    # Must happen before the first `import litellm` anywhere in the process, or litellm downloads
    # its price map at import time (and hangs/fails offline).
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependencyError("litellm is required for answers: pip install 'litellm==1.110.2'") from exc
    # litellm prints "Give Feedback / Get Help" banners to stdout on every error; the CLI owns stdout.
    litellm.suppress_debug_info = True
    return litellm


@contextlib.contextmanager
def map_litellm_exceptions(model: str) -> Iterator[None]:
    """Translate litellm/openai/httpx exceptions into mmrag's errors (httpx's ``map_httpcore_exceptions``).

    Raises:
        RateLimitedError: the provider refused the call for rate limits (HTTP 429).
        UpstreamTimeoutError: the provider did not answer within the timeout.
        InvalidInputError: the prompt does not fit the model's context window.
        UpstreamError: any other provider, network, authentication or local-model failure.
    """
    try:
        yield
    except MmragError:
        raise
    except Exception as exc:  # noqa: BLE001 - litellm raises many types (its own, openai's, httpx's)
        raise _translate(exc, model) from exc


def _translate(exc: Exception, model: str) -> MmragError:
    import litellm

    # A local handler's own mmrag error (e.g. weights missing) arrives wrapped by litellm: unwrap it.
    inner: BaseException | None = exc
    while inner is not None:
        if isinstance(inner, MmragError):
            return inner
        inner = inner.__cause__ or inner.__context__
    detail = str(exc).replace("litellm.", "", 1).strip() or type(exc).__name__
    if isinstance(exc, litellm.exceptions.RateLimitError):
        return RateLimitedError(f"Model {model!r} is rate limited: {detail}. Retry later or configure fallbacks.")
    if isinstance(exc, (litellm.exceptions.Timeout, TimeoutError)):
        return UpstreamTimeoutError(f"Model {model!r} did not answer in time: {detail}. Raise the timeout or retry.")
    if isinstance(exc, litellm.exceptions.ContextWindowExceededError):
        return InvalidInputError(f"The prompt does not fit model {model!r}: {detail}. Lower the context budget.")
    if isinstance(exc, litellm.exceptions.AuthenticationError):
        return UpstreamError(f"Model {model!r} refused the credentials: {detail}. Check the provider's API key.")
    return UpstreamError(f"Model {model!r} failed: {detail}")


class LiteLLMChatModel:
    """A :class:`~mmrag.llms.ChatModel` over any LiteLLM provider, or the in-process local model.

    Args:
        model: a LiteLLM model string (``openai/gpt-4o-mini``, ``ollama_chat/llama3.2``,
            ``mmrag-local/smollm2-135m``).
        timeout: seconds per attempt; always passed (litellm's own default is 6000 s).
        num_retries: litellm retries on transient errors (rate limits, 5xx, connection errors).
        fallbacks: model strings tried in order when ``model`` fails.
        api_base: an OpenAI-compatible base URL, for self-hosted servers.
        api_key: the provider key; None lets litellm read the provider's usual env var.
        temperature: sampling temperature (0 = greedy where the provider honours it).
        max_tokens: cap on generated tokens.

    Example:
        >>> model = LiteLLMChatModel("mmrag-local/smollm2-135m", timeout=60)  # doctest: +SKIP
        >>> model.complete([Message("user", "What is 2+2?")]).text            # doctest: +SKIP
    """

    def __init__(self, model: str, *, timeout: float = 60.0, num_retries: int = 2,
                 fallbacks: Sequence[str] = (), api_base: str | None = None, api_key: str | None = None,
                 temperature: float = 0.0, max_tokens: int = 512) -> None:
        if not model or "/" not in model:
            raise InvalidInputError(f"Model {model!r} needs a provider prefix, e.g. 'openai/gpt-4o-mini' "
                                    f"or '{LOCAL_PROVIDER}/smollm2-135m'")
        if timeout <= 0:
            raise InvalidInputError(f"timeout must be > 0 seconds, got {timeout}")
        self.name = model
        self.timeout = float(timeout)
        self.num_retries = int(num_retries)
        self.fallbacks = tuple(fallbacks)
        self.api_base = api_base
        self._api_key = api_key
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._litellm = import_litellm()
        if any(m.startswith(LOCAL_PROVIDER + "/") for m in (model, *self.fallbacks)):
            from mmrag.llms.smollm import register_local_provider

            register_local_provider(self._litellm)

    @property
    def supports_vision(self) -> bool:
        """Whether the model takes image parts (litellm's model map; False when it does not know)."""
        if self.name.startswith(LOCAL_PROVIDER + "/"):
            return False
        try:
            return bool(self._litellm.supports_vision(model=self.name))
        except Exception:  # noqa: BLE001 - an unmapped model is treated as text-only
            log.debug("litellm does not know whether %s reads images; treating it as text-only", self.name, exc_info=True)
            return False

    def to_config(self) -> dict[str, Any]:
        """The settings that rebuild this model (never the API key)."""
        return {"model": self.name, "timeout": self.timeout, "num_retries": self.num_retries,
                "fallbacks": list(self.fallbacks), "api_base": self.api_base,
                "temperature": self.temperature, "max_tokens": self.max_tokens}

    def _kwargs(self, messages: Sequence[Message], opts: dict[str, Any]) -> dict[str, Any]:
        if not messages:
            raise InvalidInputError("A chat call needs at least one message")
        kwargs: dict[str, Any] = {
            "model": self.name, "messages": [m.to_dict() for m in messages], "timeout": self.timeout,
            "num_retries": self.num_retries, "temperature": self.temperature, "max_tokens": self.max_tokens,
        }
        if self.fallbacks:
            kwargs["fallbacks"] = list(self.fallbacks)
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self._api_key:
            kwargs["api_key"] = self._api_key
        kwargs.update(opts)
        return kwargs

    def complete(self, messages: Sequence[Message], **opts: Any) -> Completion:
        """Send ``messages`` and return the whole reply.

        Args:
            messages: the conversation.
            **opts: per-call overrides of litellm arguments (``max_tokens``, ``temperature``, ``timeout``...).

        Raises:
            UpstreamError: (or a subclass) the provider or local model failed; see :func:`map_litellm_exceptions`.
        """
        kwargs = self._kwargs(messages, opts)
        start = time.perf_counter()
        with map_litellm_exceptions(self.name):
            resp = self._litellm.completion(**kwargs)
        choice = resp.choices[0]
        return Completion(
            text=choice.message.content or "", model=str(resp.model or self.name),
            usage=self._usage(resp), finish_reason=choice.finish_reason,
            latency_s=time.perf_counter() - start,
        )

    def stream(self, messages: Sequence[Message], **opts: Any) -> CompletionStream:
        """Send ``messages`` and yield the reply's text as it arrives.

        The returned :class:`~mmrag.llms.CompletionStream` carries the full :class:`Completion`
        (usage, cost) once iterated to the end. Errors raised mid-stream are translated too.
        """
        kwargs = self._kwargs(messages, opts)
        kwargs["stream"] = True
        kwargs.setdefault("stream_options", {"include_usage": True})
        start = time.perf_counter()
        with map_litellm_exceptions(self.name):
            chunks_iter = self._litellm.completion(**kwargs)
        result = CompletionStream(iter(()))

        def deltas() -> Iterator[str]:
            chunks = []
            with map_litellm_exceptions(self.name):
                for chunk in chunks_iter:
                    chunks.append(chunk)
                    if chunk.choices and chunk.choices[0].delta.content:
                        yield chunk.choices[0].delta.content
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = next((c.choices[0].finish_reason for c in reversed(chunks)
                           if c.choices and c.choices[0].finish_reason), None)
            model = next((str(c.model) for c in chunks if getattr(c, "model", None)), self.name)
            if "/" not in model and self.name.endswith("/" + model):
                model = self.name
            result.completion = Completion(text=text, model=model, usage=self._stream_usage(chunks, kwargs),
                                           finish_reason=finish, latency_s=time.perf_counter() - start)

        result._deltas = deltas()
        return result

    # -- usage and cost -----------------------------------------------------------------------
    def _usage(self, resp: Any) -> Usage:
        usage = getattr(resp, "usage", None)
        return Usage(
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            total_tokens=int(getattr(usage, "total_tokens", 0) or 0),
            cost_usd=self._cost(resp),
        )

    def _stream_usage(self, chunks: list[Any], kwargs: dict[str, Any]) -> Usage:
        try:
            built = self._litellm.stream_chunk_builder(chunks, messages=kwargs["messages"])
        except Exception:  # noqa: BLE001 - usage is best effort; the answer already streamed
            log.debug("token usage of a streamed answer unavailable", exc_info=True)
            built = None
        return self._usage(built) if built is not None else Usage()

    def _cost(self, resp: Any) -> float | None:
        if (getattr(resp, "model", "") or "").startswith(LOCAL_PROVIDER) or self.name.startswith(LOCAL_PROVIDER):
            return 0.0  # in-process model: no bill
        try:
            return float(self._litellm.completion_cost(completion_response=resp))
        except Exception:  # noqa: BLE001 - unpriced models raise (ModelNotMappedError, ValueError...)
            log.debug("no price known for %s", self.name, exc_info=True)
            return None
