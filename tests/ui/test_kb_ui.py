"""Issue 27, acceptance 3: the knowledge-base UI in headless Chromium against a real ``mmrag serve``.

A real ``mmrag serve --profile offline`` process on an empty temporary data dir, keys on. The
browser connects with a key, drops five files on the upload zone (one named like an HTML tag,
one whose text holds a script, a JSONL record whose id is a tag, a broken PDF), watches each
file's progress end in "indexed" (or "failed" with the reason), sees the documents listed with
their status, opens a document's chunks, searches with a retriever, k and a
type filter (and by text for an image, whose thumbnail loads), asks (extractive, verified) and
sees the cited answer, then the versions and the evaluation reports. No payload ever runs
(``window.__xss`` stays undefined) and each shows as the literal text it is. Screenshots of
every step go to ``$KB_UI_SHOTS`` if set, else the test's tmp dir; their paths are printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pytest
from click.testing import CliRunner

from tests.conftest import SAMPLE_CORPUS, free_port, wait_http

if TYPE_CHECKING:
    from tests.helpers.cdp import Browser

pytestmark = pytest.mark.slow

COLLECTION = "handbook"
NAME_PAYLOAD = "<img src=x onerror=window.__xss=1>.txt"
CHUNK_PAYLOAD = "<script>window.__xss=2</script><img src=x onerror=\"window.__xss=3\">"
PUMPS = f"""# Pump manual

The **main pump** is serviced every March by the night crew. {CHUNK_PAYLOAD}

## Valves

Valve V-7 is replaced every two years, and the spare valves are kept in room B12.
"""
BOILER = "The boiler room closes at 18:00 on weekdays and at noon on Saturdays.\n"
ID_PAYLOAD = "<img src=x onerror=window.__xss=4>"
UPLOADS = [NAME_PAYLOAD, "pumps.md", "red-circle.png", "records.jsonl", "broken.pdf"]


def _not_blank(shot: Path) -> None:
    from PIL import Image

    with Image.open(shot) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 10, f"{shot} is blank"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """``mmrag serve`` on an empty data dir; yields its URL, a read+write key and the data dir."""
    pytest.importorskip("gguf")
    from mmrag.cli import main
    from tests.ui.test_catalog_routes import _report

    data_dir = tmp_path / "data"
    made = CliRunner().invoke(main, ["keys", "create", "ui", "--scope", "read", "--scope", "write",
                                     "--data-dir", str(data_dir), "--json"], catch_exceptions=False)
    assert made.exit_code == 0, made.output
    _report(data_dir / "reports" / "nightly", 0.8125)  # what `mmrag eval run --out <data_dir>/reports/nightly` writes
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # two shared cores: leave one to the browser
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "mmrag", "serve", "--profile", "offline", "--data-dir", str(data_dir),
                             "--port", str(port), "--collection", COLLECTION], env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/readyz", 180, proc)
        yield url, str(json.loads(made.stdout)["token"]), data_dir
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        print(f"server log: {log}")


def test_kb_ui_upload_documents_chunks_search_ask_versions(server: tuple[str, str, Path], tmp_path: Path) -> None:
    from tests.helpers.cdp import Browser

    url, token, _ = server
    shots_dir = Path(os.environ.get("KB_UI_SHOTS") or tmp_path / "screenshots")
    shots_dir.mkdir(parents=True, exist_ok=True)
    files = tmp_path / "files"
    files.mkdir()
    (files / NAME_PAYLOAD).write_text(BOILER, encoding="utf-8")
    (files / "pumps.md").write_text(PUMPS, encoding="utf-8")
    (files / "red-circle.png").write_bytes((SAMPLE_CORPUS / "images" / "red-circle.png").read_bytes())
    (files / "records.jsonl").write_text(json.dumps({"_id": ID_PAYLOAD, "text": "Fire doors are tested monthly."}) + "\n",
                                         encoding="utf-8")
    (files / "broken.pdf").write_bytes(b"%PDF-1.4 cut short")
    shots: list[Path] = []
    started = time.monotonic()

    def shot(name: str) -> None:
        b.eval("window.scrollTo(0, 0)")
        shots.append(b.screenshot(shots_dir / name))

    with Browser(tmp_path / "profile", size=(1280, 1100)) as b:
        try:
            _walk(b, url, token, files, shot)
        except BaseException:
            b.screenshot(shots_dir / "failed.png")
            print("failed at", shots_dir / "failed.png", "\npage:", b.eval("document.querySelector('main').innerText")[:3000])
            raise
    for s in shots:
        _not_blank(s)
    print(f"UI walk-through in {time.monotonic() - started:.1f} s; screenshots:", *shots, sep="\n  ")


def _walk(b: "Browser", url: str, token: str, files: Path, shot: Callable[[str], None]) -> None:
    """The user's walk through the UI, step by step (each step asserts what it shows)."""
    b.goto(f"{url}/")
    b.wait("document.querySelector('#status').textContent.includes('API key')", 20)  # keys on: it asks
    b.type("#key", token)
    b.click("#load")
    b.wait("document.querySelector('#status').textContent.startsWith('connected')", 30)

    # Upload: drop five files on the zone; each gets its own progress row, which ends in its outcome.
    b.type("#upload-collection", COLLECTION)
    b.drop_files("#dropzone", [files / n for n in UPLOADS])
    b.wait(f"document.querySelectorAll('#uploads li.upload').length === {len(UPLOADS)}", 10)
    b.wait("[...document.querySelectorAll('#uploads li.upload')].every(li => li.dataset.state !== 'queued'"
           " && li.dataset.state !== 'sending' && li.dataset.state !== 'indexing')", 120)
    rows = b.eval("[...document.querySelectorAll('#uploads li.upload')].map(li => [li.querySelector('.name').textContent,"
                  " li.dataset.state, li.querySelector('progress').value, li.querySelector('.state').textContent])")
    assert [r[:3] for r in rows] == [[n, "failed" if n == "broken.pdf" else "indexed", 100] for n in UPLOADS], rows
    assert "not a readable PDF" in rows[UPLOADS.index("broken.pdf")][3], rows
    assert b.eval("document.querySelectorAll('#uploads img').length") == 0  # the name stayed text

    # The documents, with their status (the stored name is the upload's, reduced to a safe file name;
    # a JSONL record keeps its own id, markup and all) and the failure's reason.
    stored = NAME_PAYLOAD.replace("<", "").replace(">", "")
    b.wait("document.querySelectorAll('#documents tr.doc').length === 5", 30)
    docs = b.eval("[...document.querySelectorAll('#documents tr.doc')].map(tr => [tr.dataset.docId, tr.dataset.status,"
                  " tr.querySelector('button.open').textContent])")
    assert sorted(docs) == sorted([[stored, "indexed", stored], ["pumps.md", "indexed", "pumps.md"],
                                   ["red-circle.png", "indexed", "red-circle.png"], [ID_PAYLOAD, "indexed", ID_PAYLOAD],
                                   ["broken.pdf", "failed", "broken.pdf"]]), docs
    reason = b.eval("document.querySelector('#documents tr.doc[data-doc-id=\"broken.pdf\"] .reason').textContent")
    assert "not a readable PDF" in reason, reason
    assert b.eval("document.querySelectorAll('#documents img, #documents script').length") == 0
    b.eval("(() => { const s = document.querySelector('#doc-status'); s.value = 'failed';"
           " s.dispatchEvent(new Event('change', {bubbles: true})); })()")
    b.wait("document.querySelectorAll('#documents tr.doc').length === 1", 30)
    assert b.eval("document.querySelector('#documents tr.doc').dataset.docId") == "broken.pdf"
    shot("1a-failed-only.png")
    b.eval("(() => { const s = document.querySelector('#doc-status'); s.value = '';"
           " s.dispatchEvent(new Event('change', {bubbles: true})); })()")
    b.wait("document.querySelectorAll('#documents tr.doc').length === 5", 30)
    shot("1-uploaded-and-indexed.png")

    # A document's chunks, with their metadata: the script in the text is shown, not run.
    b.click("#documents tr.doc[data-doc-id='pumps.md'] button.open")
    b.wait("document.querySelectorAll('#chunks li.chunk').length > 0", 30)
    chunk_text = b.eval("[...document.querySelectorAll('#chunks li.chunk .text')].map(d => d.textContent).join('\\n')")
    assert CHUNK_PAYLOAD in chunk_text and "main pump" in chunk_text, chunk_text
    assert b.eval("document.querySelectorAll('#chunks script, #chunks li.chunk img').length") == 0
    meta = b.eval("[...document.querySelectorAll('#chunks li.chunk dl.metadata dt')].map(d => d.textContent)")
    assert "doc_id" in meta and "doc_type" in meta, meta
    b.eval("document.querySelectorAll('#chunks details').forEach(d => d.open = true)")
    shot("2-chunks.png")

    # Search: bm25, k=2, only markdown; then the image by text, its thumbnail fetched with the key.
    b.click("#tab-search")
    b.type("#query", "valves spare room")
    b.eval("(() => { const s = document.querySelector('#retriever'); s.value = 'bm25';"
           " s.dispatchEvent(new Event('change', {bubbles: true})); })()")
    b.type("#k", "2")
    b.eval("(() => { const s = document.querySelector('#f-doc-type'); s.value = 'markdown';"
           " s.dispatchEvent(new Event('change', {bubbles: true})); })()")
    b.click("#search")
    b.wait("document.querySelector('#search-summary') && document.querySelectorAll('#results li.hit').length > 0", 30)
    hits = b.eval("[...document.querySelectorAll('#results li.hit')].map(li => [li.dataset.docId, li.dataset.docType])")
    assert 0 < len(hits) <= 2 and all(h == ["pumps.md", "markdown"] for h in hits), hits
    assert "bm25" in b.eval("document.querySelector('#search-summary').textContent")
    assert "Valve V-7" in b.eval("document.querySelector('#results li.hit .text').textContent")
    shot("3-search-filtered.png")

    b.eval("(() => { for (const [id, v] of [['#retriever', 'hybrid'], ['#f-doc-type', ''], ['#modality', 'image']]) {"
           " const s = document.querySelector(id); s.value = v; s.dispatchEvent(new Event('change', {bubbles: true})); } })()")
    b.type("#query", "a red circle")
    b.type("#k", "5")
    b.click("#search")
    red = "#results li.hit-image[data-doc-id='red-circle.png'] img.thumb"
    b.wait(f"(() => {{ const i = document.querySelector({json.dumps(red)}); return i && i.complete && i.naturalWidth > 0; }})()", 30)
    assert b.eval(f"document.querySelector({json.dumps(red)}).src").startswith("blob:")
    shot("4-search-image.png")

    # Ask (extractive, verified): the answer cites the boiler file; its [n] link selects the citation.
    b.click("#tab-ask")
    b.eval("(() => { const s = document.querySelector('#mode'); s.value = 'extractive';"
           " s.dispatchEvent(new Event('change', {bubbles: true})); })()")
    b.type("#question", "When does the boiler room close on weekdays?")
    b.click("#ask")
    b.wait("document.querySelector('#answer').dataset.done === 'true'", 120)
    answer = b.eval("document.querySelector('#answer').textContent")
    assert "18:00" in answer and b.eval("document.querySelector('#answer').className") != "error", answer
    assert b.eval("document.querySelector('#answer').dataset.mode") == "extractive"
    cites = b.eval("[...document.querySelectorAll('#citations li.citation')].map(li => li.textContent)")
    assert any(stored in c for c in cites), cites
    assert b.eval("document.querySelector('#verdict').textContent").strip()
    link = b.eval("(() => { const a = document.querySelector('#answer a.cite'); return a && a.dataset.n; })()")
    assert link, "the answer shows no clickable citation"
    b.click("#answer a.cite")
    b.wait(f"document.querySelector('#cite-{link}').classList.contains('selected')", 10)
    shot("5-answer.png")

    # A question whose answer quotes the Markdown and the script: rendered as Markdown, the tags as text.
    b.type("#question", "How often is the main pump serviced, and by whom?")
    b.click("#ask")
    b.wait("document.querySelector('#answer').dataset.done === 'true'", 120)
    answer = b.eval("document.querySelector('#answer').textContent")
    assert "March" in answer, answer
    assert "**" not in answer and b.eval("document.querySelectorAll('#answer strong').length") > 0, answer
    assert b.eval("document.querySelectorAll('#answer script, #answer img').length") == 0
    shot("6-answer-markdown.png")

    # The live version, probes and drift; the evaluation reports.
    b.click("#tab-versions")
    b.wait(f"!!document.querySelector('#versions tr.version.live[data-label=\"{COLLECTION}@1\"]')", 30)
    assert b.eval("document.querySelector('#live').textContent") == f"Live: {COLLECTION}@1"
    b.wait("!!(document.querySelector('#probes') && document.querySelector('#drift'))", 60)
    assert f"Drift of {COLLECTION}@1" in b.eval("document.querySelector('#drift h3').textContent")
    assert b.eval("document.querySelectorAll('#drift tbody tr').length") > 0  # per modality, documents and queries
    shot("7-versions.png")
    b.click("#tab-reports")
    b.wait("!!document.querySelector('.report[data-name=nightly]')", 30)
    assert "0.8125" in b.eval("document.querySelector('.report[data-name=nightly]').textContent")
    shot("8-reports.png")

    assert b.eval("typeof window.__xss") == "undefined"  # no payload ran, anywhere
    assert b.console == [], b.console
    assert b.eval("localStorage.length + sessionStorage.length") == 0 and b.eval("document.cookie") == ""
