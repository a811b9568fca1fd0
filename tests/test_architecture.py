"""Imports flow one way (STYLE.md): every module of src/mmrag has a layer, and no import runs back up.

Layers are assigned by folder (``embedders/`` is a backend, ``http/`` an application), plus one
entry per top-level module. A new module in a folder takes the folder's layer; a new top-level
module or folder fails :func:`test_every_module_has_a_layer` until it is given one here. Every
import counts, including the ones inside functions and under ``TYPE_CHECKING``: a lazy import that
runs up is still a cycle, only deferred. src never imports ingest/eval; those import only mmrag's
public API.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mmrag

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

#: Lowest first: a module may import its own layer and the layers before it.
ORDER = ("foundation", "protocols", "config", "backends", "analysis", "wiring", "knowledge base", "services",
         "evaluation", "lifecycle", "applications")
#: Each folder of src/mmrag (a package) and everything in it.
FOLDERS = {
    "embedders": "backends", "stores": "backends", "loaders": "backends", "llms": "backends",
    "rerankers": "backends", "reader": "backends", "integrations": "services", "evaluation": "evaluation",
    "lifecycle": "lifecycle", "cli": "applications", "http": "applications",
    # Object storage as a source: listing and fetching, beside the loaders.
    "sources": "backends",
    # Access labels: parsing, the where clauses the stores run, the rules of a run.
    "security": "backends",
    # Ingestion: the driver, its engines (local, Ray) and its writer compose the knowledge base.
    "indexing": "services",
    # Answering: the answerer composes a searcher and a chat model; its parts sit lower (OVERRIDES).
    "answering": "services",
}
#: Each top-level module of src/mmrag.
MODULES = {
    # Pure helpers every layer may use.
    "types": "foundation", "errors": "foundation", "logs": "foundation", "textanalysis": "foundation",
    "jsonlines": "foundation", "locks": "foundation", "tracing": "foundation", "numerics": "foundation",
    "protocols": "protocols",
    "config": "config",
    # One backend or one stored thing each, built from plain arguments.
    "keyword": "backends", "manifest": "backends", "chunking": "backends", "images": "backends",
    "redaction": "backends",
    # Judgements over text and context blocks: no store, no settings.
    "rerank": "analysis",
    # Reciprocal rank fusion of ranked hits.
    "fusion": "analysis",
    # The search filter a caller writes, and the where it becomes (document types come from the loaders).
    "filters": "backends",
    # Name -> factory for backends and the answer components (kb builds its stores through it).
    "registry": "wiring",
    "kb": "knowledge base",
    "retrieval": "services",
    "faithfulness": "evaluation",
    "__main__": "applications",
    # The package root is the public API: it re-exports every layer.
    "": "applications",
}
#: Modules that sit apart from their folder's layer, each with its reason.
OVERRIDES = {
    # The per-file steps (load, chunk, embed) and the one repair work on a knowledge base's parts,
    # below the services: kb rebuilds its keyword index through the repair.
    "indexing.steps": "knowledge base", "indexing.repair": "knowledge base",
    # The answer's parts are judgements over text and context blocks: no store, no settings.
    "answering.context": "analysis", "answering.sentences": "analysis", "answering.verification": "analysis",
    "answering.extractive": "analysis", "answering.guard": "analysis", "answering.grounding": "analysis",
    "answering.answers": "analysis", "answering.reply": "analysis",
    # The API key store: a stored thing the HTTP API and the MCP server read, the CLI's `mmrag keys`
    # writes and the token verifier maps a JWT onto; it imports nothing of the app.
    "http.apikeys": "backends",
    # The drift math and the query log: ingest (services) writes a version's reference with them.
    "lifecycle.drift": "analysis",
    # The drift references' table owner: a store beside the manifest, which drift reads and writes.
    "lifecycle.driftrefs": "backends",
    # Relabelling and counting as a caller write and read a knowledge base's stores and manifest.
    "security.relabel": "knowledge base", "security.counts": "knowledge base", "security.plan": "knowledge base",
}
#: Imports from a lower layer that are allowed anyway: the package version, a constant.
ALLOWED = {("mmrag", "__version__")}
#: Test folders named for a concern, not for a package of src/mmrag: the tests of a top-level module
#: (kb/: kb, manifest, the write lock; retrieval/: retrieval, rerank, textanalysis), of an
#: application (bench/, demo/, docs/, ui/), and what tests share (helpers/, fixtures/).
TEST_CONCERNS = {"kb", "retrieval", "bench", "demo", "docs", "ui", "helpers", "fixtures"}


def _modules(src: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the ``mmrag`` package under ``src``."""
    out = {}
    for path in sorted((src / "mmrag").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        out[".".join(p for p in parts if p != "__init__")] = path
    return out


def layer_of(module: str) -> str | None:
    """The layer of a dotted ``mmrag`` module name, or None when it has none."""
    rest = module.removeprefix("mmrag").removeprefix(".")
    if rest in OVERRIDES:
        return OVERRIDES[rest]
    top = rest.split(".")[0]
    if top in FOLDERS:
        return FOLDERS[top]
    return MODULES.get(rest)


def _imports(module: str, path: Path, known: set[str]) -> list[tuple[str, str]]:
    """``(imported module, name)`` for every mmrag import of ``path``, anywhere in it."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from mmrag import locks` imports the module mmrag.locks, not the package root.
            out += [(f"{base}.{a.name}", "") if f"{base}.{a.name}" in known else (base, a.name) for a in node.names]
    resolved = []
    for target, name in out:
        while target and target not in known:  # `import mmrag.x.Thing` -> mmrag.x
            target = target.rpartition(".")[0]
        if target.split(".")[0] == "mmrag":
            resolved.append((target, name))
    return resolved


def unlayered(src: Path) -> list[str]:
    """Modules under ``src/mmrag`` with no layer."""
    return [m for m in _modules(src) if layer_of(m) is None]


def upward_imports(src: Path) -> list[str]:
    """Every import under ``src/mmrag`` from a module into a higher layer, as a readable line."""
    modules = _modules(src)
    found = []
    for module, path in modules.items():
        me = layer_of(module)
        if me is None:
            continue
        for target, name in _imports(module, path, set(modules)):
            other = layer_of(target)
            if other is not None and ORDER.index(other) > ORDER.index(me) and (target, name) not in ALLOWED:
                found.append(f"{module} ({me}) imports {target} ({other})")
    return found


def test_every_module_has_a_layer() -> None:
    missing = unlayered(SRC)
    assert not missing, f"give these a layer in FOLDERS, MODULES or OVERRIDES: {missing}"
    stale = [m for m in [*MODULES, *OVERRIDES] if m and f"mmrag.{m}" not in _modules(SRC)]
    assert not stale, f"layers for modules that no longer exist: {stale}"


def test_layers_point_downwards() -> None:
    assert not upward_imports(SRC), "\n".join(upward_imports(SRC))


def test_the_checks_catch_a_new_module_and_an_import_that_runs_up(tmp_path: Path) -> None:
    package = tmp_path / "mmrag"
    (package / "stores").mkdir(parents=True)
    (package / "__init__.py").write_text("from mmrag.types import Hit\n")
    (package / "types.py").write_text("def f():\n    from mmrag.stores import chroma\n")
    (package / "stores" / "__init__.py").write_text("")
    (package / "stores" / "chroma.py").write_text("from . import memory\nfrom ..errors import X\n")
    (package / "stores" / "memory.py").write_text("")
    (package / "errors.py").write_text("")
    (package / "newthing.py").write_text("")
    assert unlayered(tmp_path) == ["mmrag.newthing"]
    assert upward_imports(tmp_path) == ["mmrag.types (foundation) imports mmrag.stores.chroma (backends)"]
    (package / "errors.py").write_text("from mmrag.http.app import create_app\n")
    (package / "http").mkdir()
    (package / "http" / "__init__.py").write_text("")
    (package / "http" / "app.py").write_text("")
    assert "mmrag.errors (foundation) imports mmrag.http.app (applications)" in upward_imports(tmp_path)


def test_test_folders_mirror_the_source() -> None:
    """The tests of mmrag/X/Y.py are in tests/X/; a tier is a marker (slow, long), never a folder."""
    packages = {p.name for p in (SRC / "mmrag").iterdir() if (p / "__init__.py").exists()}
    folders = {p.name for p in (REPO / "tests").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert not folders - packages - TEST_CONCERNS, (
        f"test folders that name no package of src/mmrag: {sorted(folders - packages - TEST_CONCERNS)}; put the "
        "tests under their subject's folder, or add a concern to TEST_CONCERNS")


@pytest.mark.parametrize("folder", ["ingest", "eval", "tests"])
def test_src_never_imports_applications(folder: str) -> None:
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            assert not any(n.split(".")[0] == folder for n in names), f"{path} imports {folder}"


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
