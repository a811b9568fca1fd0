"""Ragas 0.4 behind mmrag's errors and timeouts: ID-based context metrics and the LLM judge.

Why it is built this way:

* ragas is imported lazily, inside functions, so ``import mmrag`` and the core install never need it;
  a missing ragas raises :class:`~mmrag.errors.MissingDependencyError` naming the ``eval`` extra.
  ``RAGAS_DO_NOT_TRACK`` is set (``setdefault``: a caller's choice wins) before the first import,
  because ragas sends usage analytics by default.
* Context precision and recall from ids (``IDBasedContextPrecision``/``IDBasedContextRecall``) need
  no LLM and run offline.
* The judge's metrics are ragas' "collections" metrics, each given an LLM explicitly (ragas'
  ``evaluate()`` would silently build an OpenAI client): ``llm_factory(model, provider="litellm",
  client=litellm.acompletion, timeout=...)``, so any LiteLLM model can judge and every call carries a
  timeout. Response relevancy embeds with mmrag's own text model (MiniLM offline), never a default.
* Every ragas call runs under ``asyncio.wait_for``; its exceptions are translated at this edge into
  :class:`~mmrag.errors.UpstreamError` (and subclasses), which the runner records per query.
"""

from __future__ import annotations

import logging

import asyncio
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Awaitable, Sequence

from mmrag.errors import InvalidInputError, MissingDependencyError, MmragError, UpstreamTimeoutError
from mmrag.llms.litellm import LOCAL_PROVIDER, import_litellm, map_litellm_exceptions

log = logging.getLogger(__name__)

#: Seconds allowed for one ID-based metric call (pure Python; a stuck call means a bug, not a slow model).
ID_METRIC_TIMEOUT = 10.0


def import_ragas() -> Any:
    """Import ragas with analytics off and return the module.

    Raises:
        MissingDependencyError: ragas is not installed (it comes with the ``eval`` extra).
    """
    os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
    import_litellm()  # ragas imports litellm: it must not fetch its price map on the way
    try:
        import ragas
    except ImportError as exc:
        raise MissingDependencyError("The evaluation suite needs ragas: pip install 'mmrag[eval]'") from exc
    return ragas


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


async def _timed(coro: Awaitable[Any], timeout: float, what: str) -> Any:
    try:
        return await asyncio.wait_for(coro, timeout)
    except asyncio.TimeoutError as exc:
        raise UpstreamTimeoutError(f"{what} did not finish within {timeout:g} s") from exc


class IdMetrics:
    """Ragas context precision and recall computed from document ids (no LLM).

    Precision is the share of the retrieved ids that are relevant; recall the share of the relevant
    ids that were retrieved (ragas ``IDBasedContextPrecision``/``IDBasedContextRecall``).
    """

    producer = "ragas (ids, no LLM)"

    def __init__(self) -> None:
        import_ragas()
        with warnings.catch_warnings():  # ragas 0.4 warns on this import path; it is the one that exists
            warnings.simplefilter("ignore", DeprecationWarning)
            from ragas.metrics import IDBasedContextPrecision, IDBasedContextRecall
        self._precision = IDBasedContextPrecision()
        self._recall = IDBasedContextRecall()

    async def ascore(self, retrieved: Sequence[str], relevant: Sequence[str]) -> dict[str, float | None]:
        """Both scores for one query. An empty retrieval scores 0 (ragas would say NaN)."""
        from ragas import SingleTurnSample

        if not retrieved:
            return {"context_precision": 0.0, "context_recall": 0.0}
        sample = SingleTurnSample(retrieved_context_ids=list(retrieved), reference_context_ids=list(relevant))
        try:
            p = await self._precision.single_turn_ascore(sample, timeout=ID_METRIC_TIMEOUT)
            r = await self._recall.single_turn_ascore(sample, timeout=ID_METRIC_TIMEOUT)
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeoutError("ragas ID-based metrics timed out") from exc
        return {"context_precision": _finite(p), "context_recall": _finite(r)}


def ragas_embeddings(embedder: Any) -> Any:
    """Wrap an mmrag text embedder (``embed_texts``) as a ragas ``BaseRagasEmbedding``.

    Response relevancy compares questions by embedding; this keeps that on the configured local
    model instead of any provider default.
    """
    import_ragas()
    from ragas.embeddings.base import BaseRagasEmbedding

    class _MmragEmbeddings(BaseRagasEmbedding):
        def embed_text(self, text: str, **kwargs: Any) -> list[float]:
            return self.embed_texts([text])[0]

        async def aembed_text(self, text: str, **kwargs: Any) -> list[float]:
            return self.embed_text(text)

        def embed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
            return [[float(x) for x in row] for row in embedder.embed_texts(list(texts))]

        async def aembed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
            return self.embed_texts(texts)

    return _MmragEmbeddings()


@dataclass(frozen=True)
class JudgeConfig:
    """The LLM judge: any LiteLLM model string, and the knobs every call carries.

    Args:
        model: a LiteLLM model (``openai/gpt-4o-mini``, ``ollama_chat/llama3.2``...).
        api_base: an OpenAI-compatible base URL (self-hosted judges).
        timeout: seconds per LLM call (litellm's own default is 6000 s).
        num_retries: litellm retries per call.
        vision: whether the judge reads images (ragas' multimodal metrics); None asks litellm.
        concurrency: queries judged at once.
        max_tokens: cap on each judge reply (ragas asks for JSON that can be long).
    """

    model: str
    api_base: str | None = None
    timeout: float = 60.0
    num_retries: int = 1
    vision: bool | None = None
    concurrency: int = 4
    max_tokens: int = 2048

    @property
    def producer(self) -> str:
        """How the report names figures this judge produced."""
        return f"judge: {self.model}"


#: Judge metrics: name -> what ragas metric computes it.
JUDGE_METHODS = {
    "llm_context_precision": "ragas ContextPrecision (with the reference answer; without it, against the response)",
    "faithfulness": "ragas Faithfulness",
    "response_relevancy": "ragas AnswerRelevancy (embeddings: the collection's text model)",
    "multimodal_faithfulness": "ragas MultiModalFaithfulness",
    "multimodal_relevance": "ragas MultiModalRelevance",
}


class Judge:
    """Ragas' LLM metrics over one judge model.

    Args:
        config: the judge.
        embedder: a text embedder for response relevancy (``embed_texts``); None skips that metric.

    Raises:
        MissingDependencyError: ragas (the ``eval`` extra) is not installed.
        InvalidInputError: the model string has no provider prefix.
    """

    def __init__(self, config: JudgeConfig, embedder: Any = None) -> None:
        if "/" not in config.model:
            raise InvalidInputError(f"Judge model {config.model!r} needs a provider prefix, e.g. 'openai/gpt-4o-mini'")
        self.config = config
        import_ragas()
        litellm = import_litellm()
        from ragas.llms import llm_factory
        from ragas.metrics.collections import (
            AnswerRelevancy,
            ContextPrecisionWithoutReference,
            ContextPrecisionWithReference,
            Faithfulness,
            MultiModalFaithfulness,
            MultiModalRelevance,
        )

        if config.model.startswith(LOCAL_PROVIDER + "/"):
            from mmrag.llms.smollm import register_local_provider

            register_local_provider(litellm)  # an in-process judge: same call path as a hosted one
        kwargs: dict[str, Any] = {"timeout": config.timeout, "num_retries": config.num_retries,
                                  "max_tokens": config.max_tokens}
        if config.api_base:
            kwargs["api_base"] = config.api_base
        try:
            llm = llm_factory(config.model, provider="litellm", client=litellm.acompletion, **kwargs)
        except ValueError as exc:
            raise InvalidInputError(f"Cannot build judge {config.model!r}: {exc}") from exc
        self.vision = config.vision if config.vision is not None else _supports_vision(litellm, config.model)
        self._cp_ref = ContextPrecisionWithReference(llm=llm)
        self._cp_noref = ContextPrecisionWithoutReference(llm=llm)
        self._faith = Faithfulness(llm=llm)
        self._relevancy = AnswerRelevancy(llm=llm, embeddings=ragas_embeddings(embedder)) if embedder else None
        self._mm_faith = MultiModalFaithfulness(llm=llm) if self.vision else None
        self._mm_rel = MultiModalRelevance(llm=llm) if self.vision else None

    @property
    def producer(self) -> str:
        """How the report names this judge's figures."""
        return self.config.producer

    def metric_names(self) -> list[str]:
        """The metrics this judge computes, in report order."""
        names = ["llm_context_precision", "faithfulness"]
        if self._relevancy is not None:
            names.append("response_relevancy")
        if self.vision:
            names += ["multimodal_faithfulness", "multimodal_relevance"]
        return names

    async def ascore(self, *, question: str | None, answer: str | None, contexts: Sequence[str],
                     media: Sequence[str] = (), reference: str | None = None) -> tuple[dict[str, float | None], dict[str, str]]:
        """Score one query. Metrics that cannot apply (no answer, no contexts) are left out.

        Args:
            question: the query text (None for image-only queries).
            answer: the generated answer; None when the query was not answered or abstained.
            contexts: the retrieved contexts as text, in rank order.
            media: contexts for the multimodal metrics: text, or images as ``data:`` URIs.
            reference: the dataset's reference answer, if any.

        Returns:
            ``(scores, errors)``: metric name -> value (None when ragas returned NaN), and metric
            name -> error message for the metrics that failed. Never raises for a failed metric.
        """
        jobs: dict[str, Any] = {}
        t = self.config.timeout
        if question and contexts and reference:
            jobs["llm_context_precision"] = (lambda: self._cp_ref.ascore(
                user_input=question, reference=reference, retrieved_contexts=list(contexts)), len(contexts))
        elif question and contexts and answer:
            jobs["llm_context_precision"] = (lambda: self._cp_noref.ascore(
                user_input=question, response=answer, retrieved_contexts=list(contexts)), len(contexts))
        if answer and question and contexts:
            jobs["faithfulness"] = (lambda: self._faith.ascore(
                user_input=question, response=answer, retrieved_contexts=list(contexts)), 2)
        if answer and question and self._relevancy is not None:
            jobs["response_relevancy"] = (lambda: self._relevancy.ascore(user_input=question, response=answer),
                                          self._relevancy.strictness)
        # ragas fetches contexts that look like URLs or image paths; a prefix keeps retrieved text
        # (untrusted) from ever being read as one. Images arrive as data: URIs.
        media = [m if m.startswith("data:image/") else "Text: " + m for m in media]
        if answer and media and self._mm_faith is not None and self._mm_rel is not None:
            jobs["multimodal_faithfulness"] = (lambda: self._mm_faith.ascore(
                response=answer, retrieved_contexts=list(media)), 1)
            if question:
                jobs["multimodal_relevance"] = (lambda: self._mm_rel.ascore(
                    user_input=question, response=answer, retrieved_contexts=list(media)), 1)
        scores: dict[str, float | None] = {}
        errors: dict[str, str] = {}
        for name, (make, calls) in jobs.items():
            # Each LLM call has its own litellm timeout; this bounds the whole metric (its calls and
            # retries) so a hung judge cannot stall the run.
            budget = t * calls * (self.config.num_retries + 1) + 5
            try:
                with map_litellm_exceptions(self.config.model):
                    result = await _timed(make(), budget, f"{name} ({self.config.model})")
            except MmragError as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
                continue
            scores[name] = _finite(getattr(result, "value", result))
        return scores, errors


def _supports_vision(litellm: Any, model: str) -> bool:
    try:
        return bool(litellm.supports_vision(model=model))
    except Exception:  # noqa: BLE001 - unknown models raise; they are treated as text-only
        log.debug("litellm does not know whether %s reads images; treating it as text-only", model, exc_info=True)
        return False


def image_data_uri(hit: Any, max_bytes: int = 5_000_000) -> str | None:
    """A ``data:`` URI of an image hit's pixels, for the multimodal judge (None when unreadable or too big).

    Images go to the judge inline, never as paths or URLs, so ragas has nothing to fetch. The pixels
    come from :func:`mmrag.images.hit_image`, so an image inside a PDF, DOCX, PPTX or HTML file is
    sent as itself, as the answering path sends it to vision models.
    """
    from mmrag.images import data_uri, hit_image

    try:
        asset = hit_image(hit)
        if asset.path is not None and os.path.getsize(asset.path) > max_bytes:
            return None
        if asset.data is not None and len(asset.data) > max_bytes:
            return None
        uri = data_uri(asset)
    except (OSError, MmragError):
        return None
    return uri if uri.startswith("data:image/") else None
