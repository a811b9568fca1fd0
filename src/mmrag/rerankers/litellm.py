"""LiteLLM rerank backend: any provider ``litellm.rerank`` speaks (Cohere, Jina AI, Voyage, Together,
Infinity, a self-hosted vLLM, ...), by the model string ``<provider>/<model>``.

Why each choice:

* litellm is imported through :func:`mmrag.llms.litellm.import_litellm`, which keeps it offline-safe
  (its price map stays local) and lazy.
* ``timeout`` is always passed: litellm's own default is 6000 s, and a search must not hang on a
  provider.
* Errors are translated here, by the chat backend's :func:`~mmrag.llms.litellm.map_litellm_exceptions`:
  a 429 becomes :class:`~mmrag.errors.RateLimitedError`, a timeout
  :class:`~mmrag.errors.UpstreamTimeoutError`, anything else :class:`~mmrag.errors.UpstreamError`.
* All passages go in one call with ``top_n`` = their number, and the scores are put back in the
  passages' order by the ``index`` of each result: providers return results sorted by score.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from mmrag.errors import ConfigError, UpstreamError
from mmrag.llms.litellm import import_litellm, map_litellm_exceptions
from mmrag.tracing import span


class LiteLLMReranker:
    """A :class:`~mmrag.protocols.Reranker` over ``litellm.rerank``.

    Args:
        model: ``<provider>/<model>``, e.g. ``cohere/rerank-v3.5``, ``jina_ai/jina-reranker-v2-base-multilingual``,
            ``voyage/rerank-2``.
        timeout: seconds per call.
        api_base: the provider's base URL (a proxy, or a self-hosted server speaking its API).
        api_key: the provider's key; None lets litellm read the provider's variable (``COHERE_API_KEY``...).

    Raises:
        ConfigError: the model string has no provider prefix, or the timeout is not positive.

    Example:
        >>> reranker = LiteLLMReranker("cohere/rerank-v3.5", timeout=10)  # doctest: +SKIP
        >>> reranker.score("who wrote Hamlet?", ["Shakespeare wrote Hamlet.", "Paris is in France."])  # doctest: +SKIP
        [0.93, 0.01]
    """

    def __init__(self, model: str, *, timeout: float = 30.0, api_base: str | None = None,
                 api_key: str | None = None) -> None:
        if not model or "/" not in model:
            raise ConfigError(f"Reranker 'litellm:{model}' needs a provider prefix, e.g. litellm:cohere/rerank-v3.5")
        if not timeout > 0:
            raise ConfigError(f"The reranker timeout must be > 0 seconds, got {timeout}")
        self.model = model
        self.name = f"litellm:{model}"
        self.timeout = float(timeout)
        self.api_base = api_base
        self._api_key = api_key
        self._litellm = import_litellm()

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """One relevance score per passage, in order (higher is more relevant).

        Raises:
            RateLimitedError: the provider answered 429.
            UpstreamTimeoutError: no answer within ``timeout``.
            UpstreamError: any other failure, or a reply that does not score every passage.
        """
        if not passages:
            return []
        extra: dict[str, Any] = {}
        if self.api_base:
            extra["api_base"] = self.api_base
        if self._api_key:
            extra["api_key"] = self._api_key
        with span("rerank.model", reranker=self.name, pairs=len(passages)), map_litellm_exceptions(self.model):
            response = self._litellm.rerank(model=self.model, query=query, documents=list(passages),
                                            top_n=len(passages), return_documents=False, timeout=self.timeout,
                                            **extra)
        return _in_order(self.model, response, len(passages))


def _in_order(model: str, response: Any, n: int) -> list[float]:
    scores: list[float | None] = [None] * n
    for result in response.get("results") or []:
        index, value = result.get("index"), result.get("relevance_score")
        if not isinstance(index, int) or not 0 <= index < n or not isinstance(value, (int, float)):
            raise UpstreamError(f"Reranker {model!r} returned a malformed result {result!r}")
        scores[index] = float(value)
    missing = [i for i, s in enumerate(scores) if s is None or not math.isfinite(s)]
    if missing:
        raise UpstreamError(f"Reranker {model!r} scored {n - len(missing)} of {n} passages "
                            f"(none for passage {missing[0]}); it must score every passage")
    return [float(s) for s in scores if s is not None]
