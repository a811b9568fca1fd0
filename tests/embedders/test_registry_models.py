"""Models are built in one place, :mod:`mmrag.registry`, so the CLI, the server and Ray workers get the
same models on the same device (issue 24: the server built its text model without ``device=``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mmrag.config import Settings
from mmrag.errors import ConfigError
from mmrag.registry import build_embedder, resolve_models

SRC = Path(__file__).resolve().parents[2] / "src" / "mmrag"
#: The embedder classes only the registry (and the embedders' own package) may construct.
BUILT_BY_REGISTRY = {"OpenClipEmbedder", "SentenceTransformerEmbedder"}


def _constructions(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if name in BUILT_BY_REGISTRY:
                found.append(f"{path.relative_to(SRC)}:{node.lineno} {name}(...)")
    return found


def test_only_the_registry_builds_the_embedders() -> None:
    """kb.py, http/services.py and the Ray engine each built them by hand before; now none may."""
    allowed = {SRC / "registry.py", *(SRC / "embedders").glob("*.py")}
    stray = [c for path in sorted(SRC.rglob("*.py")) if path not in allowed for c in _constructions(path)]
    assert stray == []


def test_an_unknown_role_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="Unknown embedder 'audio'. Known: clip, text"):
        build_embedder(resolve_models(Settings(profile="offline")), "audio")


@pytest.mark.slow
def test_the_text_model_runs_on_the_clip_models_device_everywhere() -> None:
    """The CLI's knowledge base, the server and a Ray worker put the text model where CLIP is."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU: on a CPU-only machine every model is on the CPU whatever the wiring")
    from mmrag.http.services import Services
    from mmrag.kb import KnowledgeBase
    from mmrag.indexing.ray import _EmbedActor

    settings = Settings(profile="offline", clip={"device": "cuda"})
    models = resolve_models(settings)
    kb = KnowledgeBase(Path("/nonexistent"), "devices", models)
    services = Services(settings)
    services._load()
    assert services.load_error is None
    actor = _EmbedActor(models, "cuda", None, 1)
    for text in (kb.text, services._text._inner, actor.text):  # type: ignore[union-attr]
        assert text._model.device.type == "cuda"
