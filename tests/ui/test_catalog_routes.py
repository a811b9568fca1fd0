"""The JSON routes the knowledge-base UI reads (issue 27): documents with status, a document's chunks, eval reports.

Real Chroma (embedded) with the hashing fakes, uploads through ``POST /v1/documents``, keys on.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers.api import Api, make_api


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from make_api(tmp_path / "data", None, max_upload_mb=5.0)


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_documents_list_status_reason_chunks_and_the_status_filter(api: Api) -> None:
    col = api.col("a")
    body = api.upload("admin", col, ("notes.txt", b"The boiler is serviced every March.\n" * 3),
                      ("shapes.md", b"# Shapes\n\nA red circle sits above a blue square.\n"),
                      ("broken.pdf", b"%PDF-1.4 this is not really a pdf"), ("red.png", _png()))
    assert body.status_code == 201, body.text
    listed = api.client.get(f"/v1/collections/{col}/documents", headers=api.auth("reader")).json()
    docs = {d["doc_id"]: d for d in listed["documents"]}
    assert set(docs) == {"notes.txt", "shapes.md", "broken.pdf", "red.png"}
    assert listed["counts"] == {"indexed": 3, "failed": 1} and listed["total"] == 4
    assert listed["version"] == f"{col}@1"
    assert docs["broken.pdf"]["status"] == "failed" and docs["broken.pdf"]["reason"]
    assert docs["broken.pdf"]["ocr_pages"] is None  # only indexed documents are read for OCR pages
    assert docs["notes.txt"]["status"] == "indexed" and docs["notes.txt"]["reason"] is None
    assert docs["notes.txt"]["chunks"] >= 1 and docs["notes.txt"]["ocr_pages"] == 0
    assert docs["red.png"]["image_records"] == 1 and docs["red.png"]["doc_type"] == "image"
    assert docs["notes.txt"]["updated_at"] > 0

    failed = api.client.get(f"/v1/collections/{col}/documents", params={"status": "failed"},
                            headers=api.auth("reader")).json()
    assert [d["doc_id"] for d in failed["documents"]] == ["broken.pdf"] and failed["total"] == 1
    page = api.client.get(f"/v1/collections/{col}/documents", params={"offset": 1, "limit": 2},
                          headers=api.auth("reader")).json()
    assert [d["doc_id"] for d in page["documents"]] == sorted(docs)[1:3] and page["total"] == 4
    bad = api.client.get(f"/v1/collections/{col}/documents", params={"status": "done"}, headers=api.auth("reader"))
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "status"


def test_a_documents_chunks_in_order_with_metadata_and_image_uris(api: Api) -> None:
    col = api.col("a")
    text = "\n\n".join(f"Paragraph {i}: the {i}th fact about pumps and valves, written out at length." * 4
                       for i in range(12))
    assert api.upload("admin", col, ("sub dir doc.md", text.encode()), ("red.png", _png())).status_code == 201
    detail = api.client.get(f"/v1/collections/{col}/documents/sub dir doc.md", headers=api.auth("reader")).json()
    assert detail["document"]["doc_id"] == "sub dir doc.md" and detail["document"]["status"] == "indexed"
    chunks = detail["chunks"]
    assert len(chunks) == detail["document"]["chunks"] > 1
    assert all(c["modality"] == "text" and c["metadata"]["doc_id"] == "sub dir doc.md" for c in chunks)
    joined = " ".join(c["text"] for c in chunks)
    assert "Paragraph 0:" in joined and "Paragraph 11:" in joined
    assert joined.index("Paragraph 0:") < joined.index("Paragraph 11:")  # reading order

    image = api.client.get(f"/v1/collections/{col}/documents/red.png", headers=api.auth("reader")).json()
    [record] = image["chunks"]
    assert record["modality"] == "image" and record["text"] is None
    pixels = api.client.get(record["image_uri"], headers=api.auth("reader"))
    assert pixels.status_code == 200 and pixels.content.startswith(b"\x89PNG")


def test_catalog_routes_need_a_key_that_sees_the_collection(api: Api) -> None:
    col, other = api.col("a"), api.col("b")
    assert api.upload("admin", other, ("n.txt", b"some text about pumps")).status_code == 201
    assert api.client.get(f"/v1/collections/{other}/documents").status_code == 401
    assert api.client.get(f"/v1/collections/{other}/documents/n.txt").status_code == 401
    refused = api.client.get(f"/v1/collections/{other}/documents", headers=api.auth("reader_a"))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert api.client.get(f"/v1/collections/{other}/documents/n.txt", headers=api.auth("reader_a")).status_code == 403
    missing = api.client.get(f"/v1/collections/{col}/documents", headers=api.auth("reader_a"))
    assert missing.status_code == 404 and col in missing.json()["error"]["message"]
    no_doc = api.client.get(f"/v1/collections/{other}/documents/nope.txt", headers=api.auth("reader"))
    assert no_doc.status_code == 404 and "nope.txt" in no_doc.json()["error"]["message"]
    # Listing creates nothing: the unknown collection is still unknown.
    assert col not in [c["name"] for c in api.client.get("/v1/collections", headers=api.auth("reader")).json()["collections"]]


def _report(folder: Path, ndcg: float) -> None:
    from mmrag.evaluation.runner import EvalRun

    run = EvalRun(dataset="golden.jsonl", config={"k": 10, "retriever": "hybrid"},
                  metrics={"ndcg@10": {"mean": ndcg, "n": 3, "producer": "mmrag", "method": "ids", "higher_is_better": True}},
                  rows=[], counts={"queries": 3, "answered": 0}, timings={}, versions={}, created="2026-12-06T16:00:00")
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(run.to_dict()), encoding="utf-8")


def test_eval_reports_are_listed_for_a_key_that_sees_every_collection(api: Api) -> None:
    listed = api.client.get("/v1/eval/reports", headers=api.auth("reader")).json()
    assert listed == {"folder": "reports", "reports": [], "unreadable": []}
    _report(api.data_dir / "reports" / "nightly", 0.75)
    (api.data_dir / "reports" / "torn").mkdir()
    (api.data_dir / "reports" / "torn" / "report.json").write_text("{not json", encoding="utf-8")
    listed = api.client.get("/v1/eval/reports", headers=api.auth("reader")).json()
    [report] = listed["reports"]
    assert report["name"] == "nightly" and report["dataset"] == "golden.jsonl"
    assert report["metrics"]["ndcg@10"]["mean"] == 0.75 and report["counts"]["queries"] == 3
    assert len(listed["unreadable"]) == 1 and listed["unreadable"][0].startswith("torn: ")
    assert api.client.get("/v1/eval/reports").status_code == 401
    limited = api.client.get("/v1/eval/reports", headers=api.auth("reader_a"))
    assert limited.status_code == 403 and "every collection" in limited.json()["error"]["message"]


def test_the_ui_page_and_its_assets_carry_the_csp_and_the_playground_redirects(api: Api) -> None:
    import re

    page = api.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    assets = re.findall(r'(?:src|href)="(/ui/assets/[^"]+)"', page.text)
    assert {Path(a).suffix for a in assets} == {".js", ".css"}, page.text
    for asset in assets:
        got = api.client.get(asset)
        assert got.status_code == 200 and got.headers["content-security-policy"] == csp
        assert got.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text  # no inline script: the CSP would refuse it
    moved = api.client.get("/playground", follow_redirects=False)
    assert moved.status_code == 308 and moved.headers["location"] == "/"
    for bad in ("/ui/assets/..%2F..%2Fapp.py", "/ui/assets/.hidden.js", "/ui/assets/x.py", "/ui/assets/nope.js"):
        assert api.client.get(bad).status_code == 404, bad


@pytest.mark.slow
def test_ocr_pages_are_counted_from_a_real_scan(api: Api, tmp_path: Path) -> None:
    pytest.importorskip("rapidocr_onnxruntime")
    from tests.loaders.test_loader_faults import _scanned_pdf

    col = api.col("a")
    scan = _scanned_pdf(tmp_path / "scan.pdf", 1).read_bytes()
    assert api.upload("admin", col, ("scan.pdf", scan), ("typed.txt", b"typed text, no OCR")).status_code == 201
    docs = {d["doc_id"]: d for d in api.client.get(f"/v1/collections/{col}/documents",
                                                   headers=api.auth("reader")).json()["documents"]}
    assert docs["scan.pdf"]["status"] == "indexed" and docs["scan.pdf"]["ocr_pages"] == 1
    assert docs["typed.txt"]["ocr_pages"] == 0
    detail = api.client.get(f"/v1/collections/{col}/documents/scan.pdf", headers=api.auth("reader")).json()
    assert detail["document"]["ocr_pages"] == 1
    assert any("scanned page about budgets" in (c["text"] or "") for c in detail["chunks"])
