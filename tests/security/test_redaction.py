"""Issue 28, acceptance 3: values scrubbed at ingest are in no retriever's hits, no stored text and no answer.

The corpus is made here: a text file, Markdown, HTML, a PDF, a DOCX, a PPTX, a picture of text
(read by OCR) and a JSONL corpus, holding e-mail addresses, phone numbers, IBANs and card numbers
that pass the Luhn check, beside look-alikes that must stay (numbers that fail the checksum). It
is ingested with ``--redact`` through the real CLI, real embedded Chroma and the offline models;
then every retriever is asked for each value over HTTP (the real app), every stored text (Chroma's
documents and metadata, the tantivy rows, the manifest, and the raw bytes of every file in the
data dir) is read, and ``/v1/answer`` and the chat route are asked about them. The summary's
counts must equal the hand count written below.

Fast tests of the policy rules (recorded once, refused when it differs, changed by a reindex)
run on the hashing fakes.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

from mmrag.cli import main
from mmrag.errors import InvalidInputError, RedactionPolicyError
from mmrag.redaction import Redactor, parse_policy
from mmrag.types import Document, TextBlock
from tests.loaders.test_loaders import build_pdf
from tests.loaders.test_ocr import text_page

POLICY = "email,phone,iban,card"
KB = "private"

#: file name -> (its text, by line; the values in it to redact, by kind). The hand count.
TEXTS: dict[str, tuple[list[str], dict[str, list[str]]]] = {
    "contacts.txt": (
        ["Jane Doe handles refunds; write to jane.doe@example.com or call +1 212-555-0198.",
         "The billing desk is reached at billing@acme-corp.com and on (415) 555-2671.",
         "Payments go to IBAN DE89 3704 0044 0532 0130 00 at the Berlin branch.",
         "The company card 4111 1111 1111 1111 is for travel only.",
         "Order number 4111 1111 1111 1112 is not a card number, nor is 1234 5678 9012 3456."],
        {"email": ["jane.doe@example.com", "billing@acme-corp.com"], "phone": ["+1 212-555-0198", "(415) 555-2671"],
         "iban": ["DE89 3704 0044 0532 0130 00"], "card": ["4111 1111 1111 1111"]}),
    "handbook.md": (
        ["# Expenses", "", "Send receipts to expenses@example.org before Friday.", "", "## Cards", "",
         "The backup card is 5500-0000-0000-0004; refunds go to GB82WEST12345698765432."],
        {"email": ["expenses@example.org"], "card": ["5500-0000-0000-0004"], "iban": ["GB82WEST12345698765432"]}),
    "page.html": (
        ["<html><body><h1>Night support</h1>",
         "<p>Phone the night line on +44 20 7946 0958 or mail night@example.net.</p>",
         "<p>Reference 4012 8888 8888 1882 is an invoice, not a card.</p></body></html>"],
        {"phone": ["+44 20 7946 0958"], "email": ["night@example.net"]}),
    "statement.pdf": (
        ["Statement: the refund card 4012888888881881 was charged.", "Questions: statements@example.com"],
        {"card": ["4012888888881881"], "email": ["statements@example.com"]}),
    "memo.docx": (
        ["Wire the deposit to IBAN FR14 2004 1010 0505 0001 3M02 606.", "The card on file is 3782 822463 10005."],
        {"iban": ["FR14 2004 1010 0505 0001 3M02 606"], "card": ["3782 822463 10005"]}),
    "slides.pptx": (
        ["Escalations go to ops-lead@example.com or +1 650-253-0000."],
        {"email": ["ops-lead@example.com"], "phone": ["+1 650-253-0000"]}),
    "scan.png": (
        ["Scanned form: call 212-555-0142", "or write to scan.desk@example.com"],
        {"phone": ["212-555-0142"], "email": ["scan.desk@example.com"]}),
}
#: JSONL records: the text field, and a field of its own (``contact``) that becomes metadata.
RECORDS = [
    {"_id": "p1", "title": "Support contract",
     "text": "The customer's card 6011 1111 1111 1117 expires in May; their phone is +49 30 901820.",
     "contact": "p1-owner@example.com"},
    {"_id": "p2", "title": "Closed ticket", "text": "Ticket 6011 1111 1111 1118 was closed in 1858."},
]
RECORD_VALUES = {"card": ["6011 1111 1111 1117"], "phone": ["+49 30 901820"], "email": ["p1-owner@example.com"]}
#: Look-alikes: card-shaped numbers that fail the Luhn check, and a year. They must stay.
LOOKALIKES = ["4111 1111 1111 1112", "1234 5678 9012 3456", "4012 8888 8888 1882", "6011 1111 1111 1118"]
#: Uploaded over HTTP later, into the redacted collection, without naming a policy.
UPLOAD = ("late.txt", "A late note: reach the auditor at auditor@example.com or +1 202-555-0111.",
          {"email": ["auditor@example.com"], "phone": ["+1 202-555-0111"]})


def hand_count() -> dict[str, int]:
    counts = {kind: 0 for kind in parse_policy(POLICY)}
    for _, values in [*TEXTS.values(), (None, RECORD_VALUES)]:
        for kind, found in values.items():
            counts[kind] += len(found)
    return counts


def secrets() -> list[str]:
    """Every value that must vanish, also with its spaces and dashes dropped (how a store might normalise it)."""
    values = [v for _, found in [*TEXTS.values(), (None, RECORD_VALUES), (None, UPLOAD[2])]
              for vs in found.values() for v in vs]
    squeezed = [v.replace(" ", "").replace("-", "") for v in values]
    return sorted({*values, *(s for s in squeezed if len(s) >= 10)})


def make_corpus(root: Path) -> Path:
    import docx
    import pptx

    root.mkdir(parents=True)
    for name in ("contacts.txt", "handbook.md", "page.html"):
        (root / name).write_text("\n".join(TEXTS[name][0]) + "\n")
    (root / "statement.pdf").write_bytes(build_pdf([("  ".join(TEXTS["statement.pdf"][0]), [])]))
    document = docx.Document()
    for line in TEXTS["memo.docx"][0]:
        document.add_paragraph(line)
    document.save(str(root / "memo.docx"))
    deck = pptx.Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[5])
    slide.shapes.title.text = TEXTS["slides.pptx"][0][0]
    deck.save(str(root / "slides.pptx"))
    text_page(TEXTS["scan.png"][0]).save(root / "scan.png")
    (root / "people.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return root


def _cli(data_dir: Path, *args: str) -> Any:
    return CliRunner().invoke(main, [*args, "--profile", "offline", "--data-dir", str(data_dir), "--collection", KB])


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The corpus ingested with --redact through the CLI, and the real app over the same data dir."""
    from fastapi.testclient import TestClient

    from mmrag.config import Settings
    from mmrag.http import create_app

    base = tmp_path_factory.mktemp("redaction")
    corpus, data_dir = make_corpus(base / "corpus"), base / "data"
    with pytest.MonkeyPatch.context() as mp:
        # The conftest's guard is per test; this fixture runs before it. A download by the e-mail
        # validator's suffix list (tldextract) would fail here instead of passing unnoticed.
        real_connect = socket.socket.connect

        def guarded(self: socket.socket, address: Any) -> Any:
            host = address[0] if isinstance(address, tuple) else str(address)
            if self.family in (socket.AF_INET, socket.AF_INET6) and host not in {"127.0.0.1", "::1", "localhost"}:
                raise OSError(f"network access blocked in tests: {address}")
            return real_connect(self, address)

        mp.setattr(socket.socket, "connect", guarded)
        result = _cli(data_dir, "ingest", str(corpus), "--redact", POLICY, "--json")
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        settings = Settings(profile="offline", data_dir=data_dir, collection=KB, api={"auth": False})
        with TestClient(create_app(settings)) as client:
            r = client.post("/v1/documents", data={"collection": KB}, files=[("files", (UPLOAD[0], UPLOAD[1].encode()))])
            assert r.status_code == 201, r.text
            yield {"summary": summary, "client": client, "data_dir": data_dir, "corpus": corpus, "upload": r.json()}


def _leaks(text: str) -> list[str]:
    low = text.lower()
    return [s for s in secrets() if s.lower() in low]


@pytest.mark.slow
def test_summary_counts_match_the_hand_count_and_status_shows_the_policy(ingested: dict[str, Any]) -> None:
    summary = ingested["summary"]
    assert summary["failed"] == [] and summary["indexed"] == len(TEXTS) + len(RECORDS), summary
    assert summary["redact"] == ["card", "email", "iban", "phone"]
    assert summary["redactions"] == hand_count() == {"card": 5, "email": 8, "iban": 3, "phone": 6}
    # The picture of a phone number and an e-mail address is kept as its scrubbed text, not as pixels.
    assert summary["stats"]["redaction_images_left_out"] == 1
    # The upload applied the collection's policy without being asked, and counted its own.
    upload = ingested["upload"]
    assert upload["redact"] == ["card", "email", "iban", "phone"]
    assert upload["redactions"] == {"card": 0, "email": 1, "iban": 0, "phone": 1}
    status = _cli(ingested["data_dir"], "status", "--json")
    assert status.exit_code == 0 and json.loads(status.stdout)["redact"] == "card,email,iban,phone"
    text = _cli(ingested["data_dir"], "status")
    assert "redaction: card,email,iban,phone" in text.stdout


@pytest.mark.slow
def test_no_stored_text_holds_a_redacted_value(ingested: dict[str, Any]) -> None:
    import chromadb

    data_dir: Path = ingested["data_dir"]
    stored: list[str] = []
    images: set[str] = set()
    client = chromadb.PersistentClient(path=str(data_dir / "chroma"))
    for col in client.list_collections():
        got = client.get_collection(col.name, embedding_function=None).get(include=["documents", "metadatas"])
        stored += [json.dumps([d, m]) for d, m in zip(got["documents"], got["metadatas"])]
        images |= {m["doc_id"] for m in got["metadatas"] if m.get("modality") == "image"}
    assert "scan.png" not in images and '"doc_id": "scan.png"' in "\n".join(stored)
    from mmrag.stores.tantivy import TantivyKeywordIndex

    keyword = [json.dumps([i, m, t]) for i, m, t in TantivyKeywordIndex(data_dir / "keyword" / KB).rows()]
    with sqlite3.connect(data_dir / "manifest.sqlite3") as db:
        manifest = list(db.iterdump())
    joined = "\n".join([*stored, *keyword, *manifest])
    assert len(keyword) >= len(TEXTS) + len(RECORDS) and len(stored) > len(keyword)
    assert _leaks(joined) == []
    # Not vacuous: the placeholders and the look-alikes are there, in Chroma and in the keyword rows.
    for where in ("\n".join(stored), "\n".join(keyword)):
        assert all(p in where for p in ("<EMAIL>", "<PHONE>", "<IBAN>", "<CARD>"))
        assert all(v in where for v in LOOKALIKES)
    # Nor any byte of any file mmrag keeps (sqlite pages, segment files, logs), outside the
    # uploaded originals (see the README: uploads keep the file as sent).
    for path in data_dir.rglob("*"):
        if path.is_file() and "uploads" not in path.parts:
            data = path.read_bytes().decode("latin-1").lower()
            assert [s for s in secrets() if s.lower() in data] == [], path


@pytest.mark.slow
@pytest.mark.parametrize("retriever", ["clip", "text", "bm25", "hybrid"])
def test_no_retriever_finds_a_redacted_value(ingested: dict[str, Any], retriever: str) -> None:
    client = ingested["client"]
    total = 0
    for query in [*secrets(), "e-mail address phone number card IBAN"]:
        r = client.post("/v1/search", json={"query": query, "collection": KB, "retriever": retriever, "k": 50})
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        total += len(hits)
        assert _leaks(r.text) == [], (query, retriever)
    assert total > 0
    if retriever == "bm25":  # the keyword index still finds the numbers that are not cards
        r = client.post("/v1/search", json={"query": "4111 1111 1111 1112", "collection": KB, "retriever": "bm25"})
        assert r.json()["hits"][0]["doc_id"] == "contacts.txt"


@pytest.mark.slow
def test_no_answer_holds_a_redacted_value(ingested: dict[str, Any]) -> None:
    client = ingested["client"]
    questions = ["What e-mail address handles refunds?", "Which card is for travel?",
                 "Where do payments go?", "What number is the night line?", "Who do escalations go to?"]
    answered = []
    for q in questions:
        r = client.post("/v1/answer", json={"question": q, "collection": KB, "k": 5})
        assert r.status_code == 200, r.text
        assert _leaks(r.text) == [], q
        answered.append(r.json())
        r = client.post("/v1/chat/completions", json={"model": "mmrag", "collection": KB, "k": 5,
                                                      "messages": [{"role": "user", "content": q}]})
        assert r.status_code == 200, r.text
        assert _leaks(r.text) == [], q
    # Not vacuous: answers quote the scrubbed sentences, placeholders included.
    assert any(not a["abstained"] and "<" in a["answer"] for a in answered), answered


@pytest.mark.slow
def test_another_policy_is_refused_naming_reindex(ingested: dict[str, Any]) -> None:
    result = _cli(ingested["data_dir"], "ingest", str(ingested["corpus"]), "--redact", "email")
    assert result.exit_code == 1 and "mmrag reindex private --redact email" in result.stderr, result.output
    # Without --redact the collection's own policy applies (nothing changed, so nothing was redacted now).
    result = _cli(ingested["data_dir"], "ingest", str(ingested["corpus"]))
    assert result.exit_code == 0 and "redacted: card 0, email 0, iban 0, phone 0" in result.stdout, result.output
    r = ingested["client"].post("/v1/documents", data={"collection": KB, "redact": "none"},
                                files=[("files", ("more.txt", b"Nothing private here."))])
    assert r.status_code == 409 and r.json()["error"]["code"] == "redaction_policy_mismatch", r.text
    assert not (ingested["data_dir"] / "uploads" / KB / "more.txt").exists()  # refused before it was stored


# -- the redactor and the policy rules, on the fakes (fast) -----------------------------------------------


def test_luhn_decides_what_a_card_is() -> None:
    text, counts = Redactor(["card"]).redact_text("pay 4111 1111 1111 1111, not 4111 1111 1111 1112")
    assert text == "pay <CARD>, not 4111 1111 1111 1112" and counts == {"card": 1}


def test_email_validation_opens_no_socket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """tldextract's own ``extract`` downloads the public suffix list; the redactor's reads its wheel's snapshot."""
    opened: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        opened.append(args)
        raise OSError("no sockets in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HOME", str(tmp_path))  # a cache written under ~/.cache would show below
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    text, counts = Redactor(["email"]).redact_text("ann@example.co.uk wrote to bo@example.museum, not to x@y.notatld")
    assert text == "<EMAIL> wrote to <EMAIL>, not to x@y.notatld" and counts == {"email": 2}
    assert opened == [] and not list(tmp_path.rglob("*"))


def test_numbers_in_prose_are_not_phone_numbers() -> None:
    """Presidio's defaults redacted each of these (from SciFact abstracts); a real number beside them stays found."""
    prose = ("PD 0332991 cut growth in 1683 men (adjusted OR, 12.1; 95% CI, 1.6-88.1; HR 1.06, 95% CI 0.89-1.26), "
             "aged 16-44 years, at 3000-5000 IU a day. Tel.: +31-20-5665-633")
    text, counts = Redactor(["phone"]).redact_text(prose)
    assert text == prose.replace("+31-20-5665-633", "<PHONE>") and counts == {"phone": 1}


def test_only_the_policy_kinds_are_replaced() -> None:
    line = "mail a@example.com, call +1 212-555-0198, IBAN GB82WEST12345698765432"
    assert Redactor(["email"]).redact_text(line)[0] == "mail <EMAIL>, call +1 212-555-0198, IBAN GB82WEST12345698765432"
    assert Redactor([]).redact_text(line) == (line, {})


def test_document_metadata_and_sections_are_scrubbed() -> None:
    doc = Document("d", "/x/d.md", "markdown", "h", texts=(TextBlock("call +1 212-555-0198", metadata={
        "section": "Contact b@example.org"}),), metadata={"contact": "c@example.com", "line": 3})
    out = Redactor(["email", "phone"]).redact_document(doc)
    assert out.texts[0].text == "call <PHONE>" and out.texts[0].metadata == {"section": "Contact <EMAIL>"}
    assert out.metadata == {"contact": "<EMAIL>", "line": 3}
    assert out.stats == {"redacted_phone": 1.0, "redacted_email": 2.0}


def test_images_whose_ocr_text_was_redacted_are_left_out() -> None:
    from mmrag.types import ImageAsset

    page2, page3 = ImageAsset(path="/p2.png", page=2, index=0), ImageAsset(path="/p3.png", page=3, index=1)
    logo = ImageAsset(data=b"x", page=3, index=2, name="logo.png")
    scanned = Document("s.pdf", "/s.pdf", "pdf", "h", images=(page2, page3, logo), texts=(
        TextBlock("call +1 212-555-0198", page=2, metadata={"text_source": "ocr"}),
        TextBlock("a quiet page", page=3, metadata={"text_source": "ocr"}),
        TextBlock("typed: +1 212-555-0198", page=3),  # a text layer: the pixels were not read
    ))
    out = Redactor(["phone"]).redact_document(scanned)
    assert out.images == (page3, logo) and out.stats["redaction_images_left_out"] == 1
    named = replace_block(scanned, TextBlock("mail a@example.com", page=3, metadata={"text_source": "ocr",
                                                                                  "ocr_image": "logo.png"}))
    assert Redactor(["email"]).redact_document(named).images == (page2, page3)
    picture = Document("p.png", "/p.png", "image", "h", images=(ImageAsset(path="/p.png"),),
                       texts=(TextBlock("mail a@example.com", metadata={"text_source": "ocr"}),))
    assert Redactor(["email"]).redact_document(picture).images == ()
    assert Redactor(["phone"]).redact_document(picture).images == picture.images  # nothing redacted: kept


def replace_block(doc: Document, block: TextBlock) -> Document:
    from dataclasses import replace

    return replace(doc, texts=(block,))


def test_ray_load_stage_scrubs_with_the_pickled_redactor(tmp_path: Path) -> None:
    """The Ray engine's load stage (run here without Ray) gets the redactor through pickle, as its workers do."""
    import pickle

    from mmrag.chunking import ChunkSpec
    from mmrag.loaders import FileRef, JsonlFields, LoaderLimits
    from mmrag.indexing.steps import FileTask, LoadedDoc
    from mmrag.indexing.ray import _load_rows

    (tmp_path / "a.txt").write_text("Write to ann@example.com about the lift.")
    redactor = pickle.loads(pickle.dumps(Redactor(["email"])))
    rows = list(_load_rows({"tasks": pickle.dumps([FileTask(FileRef.from_path(tmp_path / "a.txt", tmp_path))])},
                           chunk=ChunkSpec(), jsonl=JsonlFields(), limits=LoaderLimits(), redactor=redactor))
    [doc] = [pickle.loads(r["blob"]) for r in rows if r["kind"] == "doc"]
    assert isinstance(doc, LoadedDoc) and [c.text for c in doc.chunks] == ["Write to <EMAIL> about the lift."]


def test_an_unknown_kind_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(InvalidInputError, match="known: card, email, iban, ip, phone"):
        parse_policy("email,passport")
    result = CliRunner().invoke(main, ["ingest", ".", "--redact", "passport"])
    assert result.exit_code == 1 and "passport" in result.stderr


def test_policy_is_recorded_once_and_a_different_one_refused(hashing_kb: Any, tmp_path: Path) -> None:
    from mmrag.indexing import Indexer

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Write to ann@example.com about the lift.")
    summary = Indexer(hashing_kb, redact=["email"]).ingest([tmp_path / "docs"])
    assert summary.redactions == {"email": 1} and summary.indexed == 1
    assert hashing_kb.manifest.flag(hashing_kb.collection, "redact") == "email"
    [row] = list(hashing_kb.keyword.rows())
    assert "<EMAIL>" in row[2] and "ann@" not in row[2]
    (tmp_path / "docs" / "b.txt").write_text("Or to bo@example.com.")
    # No policy asked: the collection's own applies (a forgotten flag must not leak).
    assert Indexer(hashing_kb).ingest([tmp_path / "docs"]).redactions == {"email": 1}
    with pytest.raises(RedactionPolicyError, match=r"mmrag reindex test --redact email,phone"):
        Indexer(hashing_kb, redact=["phone", "email"]).ingest([tmp_path / "docs"])
    with pytest.raises(RedactionPolicyError):
        Indexer(hashing_kb, redact=[]).ingest([tmp_path / "docs"])


def test_a_collection_built_without_a_policy_refuses_one(hashing_kb: Any, tmp_path: Path) -> None:
    from mmrag.indexing import Indexer

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Write to ann@example.com.")
    assert Indexer(hashing_kb).ingest([tmp_path / "docs"]).redactions == {}
    with pytest.raises(RedactionPolicyError, match="built with --redact none"):
        Indexer(hashing_kb, redact=["email"]).ingest([tmp_path / "docs"])
    assert Indexer(hashing_kb, redact=[]).ingest([tmp_path / "docs"]).unchanged == 1
    # Emptied of documents, the collection takes a new policy with its next write.
    Indexer(hashing_kb).delete(["a.txt"])
    (tmp_path / "docs" / "a.txt").write_text("Write to ann@example.com again.")
    assert Indexer(hashing_kb, redact=["email"]).ingest([tmp_path / "docs"]).redactions == {"email": 1}


def test_reindex_changes_the_policy_in_a_new_version(hashing_kb: Any, tmp_path: Path) -> None:
    from mmrag.chunking import ChunkSpec
    from mmrag.indexing import Indexer
    from mmrag.kb import KnowledgeBase
    from mmrag.lifecycle.reindex import reindex
    from mmrag.lifecycle.versions import Versions

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Write to ann@example.com or call +1 212-555-0198.")
    Indexer(hashing_kb, redact=["email"]).ingest([tmp_path / "docs"])

    def open_kb(label: str, chunk: ChunkSpec) -> KnowledgeBase:
        physical = Versions(hashing_kb.manifest).resolve(label)
        return KnowledgeBase(hashing_kb.data_dir, physical, hashing_kb.models, chunk=chunk, clip=hashing_kb.clip,
                             text=hashing_kb.text, manifest=hashing_kb.manifest)

    result = reindex("test", open_kb=open_kb, chunk=hashing_kb.chunk_spec, models=hashing_kb.models,
                     redact=["email", "phone"])
    assert result.redact == ("email", "phone") and result.redactions == {"email": 1, "phone": 1}
    assert result.version.settings["redact"] == "email,phone"
    new = open_kb(result.version.label, hashing_kb.chunk_spec)
    [row] = list(new.keyword.rows())
    assert "<PHONE>" in row[2] and "555-0198" not in row[2]
    # The live version keeps its own policy; a reindex without --redact carries the live one over.
    assert hashing_kb.manifest.flag(hashing_kb.collection, "redact") == "email"
    again = reindex("test", open_kb=open_kb, chunk=hashing_kb.chunk_spec, models=hashing_kb.models)
    assert again.redact == ("email",)
