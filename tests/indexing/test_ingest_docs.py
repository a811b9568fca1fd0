"""Acceptance 2: ../shared/data/ingest_docs (43 real files, 20 of them odd or broken)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmrag.cli import EXIT_PARTIAL, main
from tests.conftest import shared

pytestmark = [pytest.mark.slow, pytest.mark.shared, pytest.mark.long]

BROKEN = {"pillow/Tests/images/broken.png", "pillow/Tests/images/truncated_image.png",
          "pillow/Tests/images/truncated_jpeg.jpg", "unstructured/example-docs/pdf/password.pdf"}
MUST_INDEX = {
    "haystack/test/test_files/pdf/react_paper.pdf": "text",
    "haystack/test/test_files/docx/sample_docx_with_links.docx": "text",
    "haystack/test/test_files/pptx/sample_pptx.pptx": "text",
    "haystack/test/test_files/html/paul_graham_superlinear.html": "text",
    "haystack/test/test_files/markdown/sample.md": "text",
    "haystack/test/test_files/images/apple.jpg": "image",
    "private-gpt/tests/components/readers/files/file_unknown.txt": "text",
    "unstructured/example-docs/contains-pictures.docx": "both",
    "unstructured/example-docs/example-steelJIS-datasheet-utf-16.html": "text",
    "unstructured/example-docs/fake-text-utf-16.txt": "text",
    "unstructured/example-docs/umlauts-non-utf8.md": "text",
    "unstructured/example-docs/picture.pptx": "image",  # a slide holding only a picture
    "unstructured/example-docs/pdf/copy-protected.pdf": "text",
    "unstructured/example-docs/pdf/embedded-images.pdf": "both",
    "unstructured/example-docs/pdf/layout-parser-paper-fast.pdf": "text",
    "unstructured/example-docs/img/example.jpg": "image",
}


def _mmrag(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*args, "--profile", "offline", "--json"], catch_exceptions=False)
    return result.exit_code, result.stdout


def _records(data_dir: Path) -> dict[str, list[tuple[str, str]]]:
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=str(data_dir / "chroma"), settings=Settings(anonymized_telemetry=False))
    from mmrag.stores.tantivy import TantivyKeywordIndex

    out: dict[str, list[tuple[str, str]]] = {"default-clip": []}
    for name, key in (("default-clip", "default-clip"), ("default-image", "default-clip"), ("default-text", "default-text")):
        got = client.get_collection(name, embedding_function=None).get(include=["metadatas"])
        out.setdefault(key, []).extend((m["doc_id"], m["modality"]) for m in got["metadatas"])
    out["bm25"] = [(m["doc_id"], "text") for _, m, _ in TantivyKeywordIndex(data_dir / "keyword" / "default").rows()]
    return out


def test_ingest_docs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = tmp_path / "ingest_docs"
    shutil.copytree(shared("ingest_docs"), corpus)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("MMRAG_DATA_DIR", str(data_dir))

    code, out = _mmrag("ingest", str(corpus))
    summary = json.loads(out)
    assert code == EXIT_PARTIAL
    failed = {str(Path(p["path"]).relative_to(corpus)): p["reason"] for p in summary["failed"]}
    assert BROKEN <= set(failed), failed
    assert all(reason.strip() for reason in failed.values())
    assert "encrypted" in failed["unstructured/example-docs/pdf/password.pdf"]
    skipped = {str(Path(p["path"]).relative_to(corpus)): p["reason"] for p in summary["skipped"]}
    assert "unsupported" in skipped["unstructured/example-docs/img/DA-1p.heic"]
    assert "empty" in skipped["unstructured/example-docs/empty.txt"]

    records = _records(data_dir)
    by_doc: dict[str, set[str]] = {}
    for doc_id, modality in records["default-clip"]:
        by_doc.setdefault(doc_id, set()).add(modality)
    for doc_id, kind in MUST_INDEX.items():
        want = {"text", "image"} if kind == "both" else {kind}
        assert want <= by_doc.get(doc_id, set()), f"{doc_id}: got {by_doc.get(doc_id)}"
    pdf_images = [m for d, m in records["default-clip"] if d == "unstructured/example-docs/pdf/embedded-images.pdf" and m == "image"]
    assert len(pdf_images) >= 2
    every_file = {str(p.relative_to(corpus)) for p in corpus.rglob("*") if p.is_file() and p.name not in {"MANIFEST.tsv", "SHA256SUMS", "SOURCE.md"}}
    reported = set(by_doc) | set(failed) | set(skipped)
    assert every_file - reported == set(), "every file is indexed or reported"

    code, out = _mmrag("ingest", str(corpus))
    again = json.loads(out)
    assert code == EXIT_PARTIAL, "the broken files are still broken and still reported"
    assert again["embeddings"] == {"clip": 0, "text": 0} and again["indexed"] == 0

    gone = "haystack/test/test_files/pdf/react_paper.pdf"
    (corpus / gone).unlink()
    code, out = _mmrag("ingest", str(corpus), "--prune")
    assert json.loads(out)["pruned"] == 1
    after = _records(data_dir)
    for index in ("default-clip", "default-text", "bm25"):
        assert all(d != gone for d, _ in after[index]), index
        assert any(d == gone for d, _ in records[index]), f"{index} held it before"
