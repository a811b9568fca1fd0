"""Issue 13, acceptance 3: search and ask in the UI at ``/`` in headless Chromium, with keys on, screenshotted.

The playground this tested became the knowledge-base UI (issue 27; ``/playground`` redirects to
``/``); its search and ask tabs keep these promises. The browser types the key, connects,
searches "a red circle" (its thumbnail must show, loaded through the API with the key), searches
by an uploaded image, then asks the demo question and watches the answer stream in before its
citation appears and can be clicked. Screenshots of each step land in the test's tmp dir
(printed); they must not be blank. tests/ui/test_kb_ui.py drives the rest of the UI.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import SAMPLE_CORPUS
from tests.helpers.sample_server import COLLECTION, DEMO_QUESTION, SampleServer

pytestmark = pytest.mark.slow


def _not_blank(shot: Path) -> None:
    from PIL import Image

    with Image.open(shot) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 10, f"{shot} is blank"


def test_page_is_static_and_keeps_the_key_in_the_page(sample_server: SampleServer) -> None:
    import re

    page = httpx.get(f"{sample_server.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    [script] = re.findall(r'<script type="module" crossorigin src="(/ui/assets/[^"]+\.js)"', page.text)
    assert httpx.get(f"{sample_server.url}{script}").status_code == 200  # the page's own script, no inline one
    assert httpx.get(f"{sample_server.url}/playground", follow_redirects=True).text == page.text
    # The page is open; the API behind it is not.
    assert httpx.get(f"{sample_server.url}/v1/collections").status_code == 401


def test_playground_in_chromium(sample_server: SampleServer, tmp_path: Path) -> None:
    from tests.helpers.cdp import Browser

    shots = []
    with Browser(tmp_path / "profile") as b:
        b.goto(f"{sample_server.url}/")
        b.type("#key", sample_server.reader)
        b.click("#load")
        b.wait("document.querySelector('#status').textContent === 'connected'", 30)
        assert b.eval("[...document.querySelectorAll('#collection option')].map(o => o.value)") == [COLLECTION]

        # Text search: the red circle's thumbnail shows (fetched with the key: <img> cannot send it).
        b.click("#tab-search")
        b.type("#query", "a red circle")
        b.click("#search")
        red = "#results li.hit-image[data-doc-id='images/red-circle.png'] img.thumb"
        b.wait(f"(() => {{ const i = document.querySelector({json.dumps(red)}); return i && i.complete && i.naturalWidth > 0; }})()", 60)
        first_image = b.eval("document.querySelector('#results li.hit-image').dataset.docId")
        assert first_image == "images/red-circle.png"
        assert b.eval(f"document.querySelector({json.dumps(red)}).src").startswith("blob:")
        shots.append(b.screenshot(tmp_path / "1-search-red-circle.png"))

        # Image search: upload the yellow triangle; it ranks first, thumbnail shown.
        b.eval("(() => { const q = document.querySelector('#query'); q.value = '';"
               " q.dispatchEvent(new Event('input', {bubbles: true})); })()")
        b.upload("#image", SAMPLE_CORPUS / "images" / "yellow-triangle.png")
        b.click("#search")
        b.wait("(() => { const li = document.querySelector('#results li.hit'); return li && li.dataset.docId === "
               "'images/yellow-triangle.png' && li.querySelector('img.thumb')?.naturalWidth > 0; })()", 60)
        shots.append(b.screenshot(tmp_path / "2-search-by-image.png"))

        # Ask with the chat model: the answer streams (partial text while the stream is open), then its
        # citation shows. (An extractive answer streams too, but too fast to catch between two polls.)
        b.click("#tab-ask")
        b.eval("(() => { const m = document.querySelector('#mode'); m.value = 'generate';"
               " m.dispatchEvent(new Event('change', {bubbles: true})); })()")
        b.type("#question", DEMO_QUESTION)
        b.click("#ask")
        seen, deadline = [], time.monotonic() + 240
        while time.monotonic() < deadline:
            state = b.eval("[document.querySelector('#answer').className, document.querySelector('#answer').textContent,"
                           " document.querySelector('#answer').dataset.done || '']")
            if not seen or state != seen[-1]:
                seen.append(state)
            if state[2] == "true":
                break
            time.sleep(0.02)
        print("answer states seen:", seen)
        streaming = [text for cls, text, done in seen if cls == "streaming" and text and not done]
        assert streaming, f"no partial answer was shown while streaming: {seen}"
        final = seen[-1]
        assert final[2] == "true" and final[0] != "error", seen
        cites = b.eval("[...document.querySelectorAll('#citations li.citation')].map(li => li.textContent)")
        assert any("visitor-faq.html" in c for c in cites), cites
        assert "18:00" in final[1]
        assert b.eval("document.querySelector('#verdict').textContent").strip()  # the verification mark
        shots.append(b.screenshot(tmp_path / "3-answer.png"))

        # The citation marker in the answer is a link that selects its source.
        link = b.eval("(() => { const a = document.querySelector('#answer a.cite'); return a && a.dataset.n; })()")
        assert link, "the answer shows no clickable citation"
        b.click("#answer a.cite")
        b.wait(f"document.querySelector('#cite-{link}').classList.contains('selected')", 10)
        shots.append(b.screenshot(tmp_path / "4-citation-selected.png"))
        assert b.console == [], b.console
        # The key lived in the page only.
        assert b.eval("localStorage.length + sessionStorage.length") == 0 and b.eval("document.cookie") == ""
    for shot in shots:
        _not_blank(shot)
    print("screenshots:", *shots)
