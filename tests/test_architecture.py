"""Imports flow one way (STYLE.md): src never imports ingest/eval; those import only mmrag's public API."""

from __future__ import annotations

import ast
from pathlib import Path

import mmrag

REPO = Path(__file__).resolve().parents[1]
LAYERS = {
    "mmrag.types": 0, "mmrag.errors": 0, "mmrag.logs": 0, "mmrag.protocols": 1, "mmrag.config": 2,
    "mmrag.embedders": 3, "mmrag.stores": 3, "mmrag.loaders": 3, "mmrag.keyword": 3, "mmrag.manifest": 3,
    "mmrag.chunking": 3, "mmrag.llms": 3, "mmrag.answering": 7, "mmrag.registry": 4, "mmrag.kb": 5, "mmrag.repair": 5, "mmrag.indexing": 6, "mmrag.retrieval": 6,
    "mmrag.evaluation": 7, "mmrag.verification": 7, "mmrag.faithfulness": 8, "mmrag.cli": 9, "mmrag.http": 9, "mmrag.images": 5, "mmrag.apikeys": 1, "mmrag.jsonlines": 1,
    "mmrag.rerankers": 3, "mmrag.rerank": 6, "mmrag.reader": 3,
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def _layer(module: str) -> int | None:
    for prefix, layer in sorted(LAYERS.items(), key=lambda kv: -len(kv[0])):
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def test_src_never_imports_applications() -> None:
    for path in (REPO / "src").rglob("*.py"):
        for mod in _imports(path):
            assert mod.split(".")[0] not in {"ingest", "eval", "tests"}, f"{path} imports {mod}"


def test_layers_point_downwards() -> None:
    for path in (REPO / "src" / "mmrag").rglob("*.py"):
        rel = path.relative_to(REPO / "src").with_suffix("")
        me = _layer(".".join(p for p in rel.parts if p != "__init__"))
        if me is None:
            continue
        for mod in _imports(path):
            other = _layer(mod)
            if other is not None and mod != "mmrag":
                assert other <= me, f"{path} (layer {me}) imports {mod} (layer {other})"


def test_applications_use_only_public_api() -> None:
    public = set(mmrag.__all__)
    for folder in ("ingest", "eval"):
        for path in (REPO / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module == "mmrag":
                    for alias in node.names:
                        assert alias.name in public, f"{path} imports non-public mmrag.{alias.name}"
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mmrag."):
                    raise AssertionError(f"{path} imports {node.module}: use `from mmrag import ...`")
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        assert not alias.name.startswith("mmrag."), f"{path} imports {alias.name}"
