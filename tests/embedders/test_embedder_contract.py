"""Contract of :class:`mmrag.protocols.Embedder` and :class:`~mmrag.protocols.ImageEmbedder`, run over
every implementation: the hashing fake, the offline CLIP model and the MiniLM text model, the real
ones built through :func:`mmrag.registry.build_embedder` as the CLI, the server and Ray build them.

HashingEmbedder is a fake; these tests are what keeps it telling the truth about the real models.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mmrag.errors import LoadError
from mmrag.protocols import Embedder, ImageEmbedder
from mmrag.types import ImageAsset

TEXTS = ["a red circle on a white page", "Quarterly revenue grew by four percent.", "the Eiffel Tower is 330 m tall"]
#: Cosine two embeddings of the same input must reach, alone or in a batch (bf16 rounds per batch).
SAME = 0.99


@pytest.fixture
def real_models(offline_models: Any) -> Any:
    """The offline profile's two models, built through :func:`mmrag.registry.build_embedders` (session-shared)."""
    return offline_models[1:]


@pytest.fixture(params=[
    "hashing",
    pytest.param("offline-clip", marks=pytest.mark.slow),
    pytest.param("minilm", marks=pytest.mark.slow),
])
def embedder(request: pytest.FixtureRequest) -> Any:
    """One implementation (the test runs once per implementation)."""
    if request.param == "hashing":
        from mmrag.embedders.hashing import HashingEmbedder

        return HashingEmbedder(16)
    clip, text = request.getfixturevalue("real_models")
    return clip if request.param == "offline-clip" else text


@pytest.fixture(params=["hashing", pytest.param("offline-clip", marks=pytest.mark.slow)])
def image_embedder(request: pytest.FixtureRequest) -> Any:
    """One implementation of the joint text/image space."""
    if request.param == "hashing":
        from mmrag.embedders.hashing import HashingEmbedder

        return HashingEmbedder(16)
    return request.getfixturevalue("real_models")[0]


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="PNG")
    return buf.getvalue()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _unit_rows(vectors: np.ndarray, n: int, dim: int) -> None:
    assert isinstance(vectors, np.ndarray) and vectors.shape == (n, dim)
    assert np.issubdtype(vectors.dtype, np.floating) and np.isfinite(vectors).all()
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)


def test_is_an_embedder_with_a_name_and_a_dimension(embedder: Any) -> None:
    assert isinstance(embedder, Embedder)
    assert isinstance(embedder.name, str) and embedder.name
    assert isinstance(embedder.dim, int) and embedder.dim > 0


def test_identity_is_what_a_collection_stores(embedder: Any) -> None:
    """The identity is written into Chroma's collection metadata: plain values, stable, naming the dim."""
    identity = embedder.identity()
    assert identity == embedder.identity()
    assert {"embedder", "model", "dim"} <= set(identity)
    assert identity["dim"] == embedder.dim
    assert all(isinstance(v, (str, int)) for v in identity.values())
    json.dumps(identity)


def test_embed_texts_gives_one_unit_vector_per_text_in_order(embedder: Any) -> None:
    vectors = embedder.embed_texts(TEXTS)
    _unit_rows(vectors, len(TEXTS), embedder.dim)
    alone = embedder.embed_texts([TEXTS[1]])
    _unit_rows(alone, 1, embedder.dim)
    assert _cosine(vectors[1], alone[0]) >= SAME  # a batch neighbour changes nothing
    assert _cosine(vectors[0], vectors[1]) < SAME  # different texts, different vectors


def test_embed_texts_is_deterministic(embedder: Any) -> None:
    assert np.allclose(embedder.embed_texts(TEXTS[:2]), embedder.embed_texts(TEXTS[:2]), atol=1e-5)


def test_no_texts_is_an_empty_matrix(embedder: Any) -> None:
    assert embedder.embed_texts([]).shape[0] == 0


def test_is_an_image_embedder_in_the_texts_space(image_embedder: Any) -> None:
    assert isinstance(image_embedder, ImageEmbedder)
    images = image_embedder.embed_images([ImageAsset(data=_png((255, 0, 0))), ImageAsset(data=_png((0, 0, 255)))])
    _unit_rows(images, 2, image_embedder.dim)
    assert image_embedder.embed_texts(["a red square"]).shape[1] == images.shape[1]
    again = image_embedder.embed_images([ImageAsset(data=_png((0, 0, 255)))])
    assert _cosine(images[1], again[0]) >= SAME


def test_iter_image_embeddings_reports_an_undecodable_image_and_embeds_the_rest(image_embedder: Any) -> None:
    assets = [ImageAsset(data=_png((0, 255, 0))), ImageAsset(data=b"not an image"), ImageAsset(data=_png((9, 9, 9)))]
    got = dict(image_embedder.iter_image_embeddings(assets, ["green.png", "broken.png", "grey.png"]))
    assert sorted(got) == [0, 1, 2]
    assert isinstance(got[1], LoadError) and "broken.png" in str(got[1])
    for i in (0, 2):
        assert not isinstance(got[i], LoadError)
        _unit_rows(np.asarray(got[i]).reshape(1, -1), 1, image_embedder.dim)
