"""Render a report in headless Chromium: a screenshot and the DOM after parsing (skips without chromium)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    """The chromium binary; skips the test when it is not installed (CI installs it: .ci/run)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium is not installed (apt-get install chromium)")


def render(html: Path, tmp: Path) -> tuple[str, Path]:
    """Return (the rendered DOM, a 1280x2000 PNG screenshot) of ``html``."""
    binary = chromium()
    shot = tmp / "screenshot.png"
    common = [binary, *FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}"]
    url = html.resolve().as_uri()
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1280,2000", url],
                   check=True, capture_output=True, timeout=120)
    dom = subprocess.run([*common, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=120).stdout
    return dom, shot


def assert_renders(html: Path, tmp: Path, *, thumbnails: bool = True) -> str:
    """The page renders: summary table, a plot, (a thumbnail), and a screenshot that is not blank."""
    from PIL import Image

    dom, shot = render(html, tmp)
    assert '<table id="summary"' in dom
    assert '<figure class="plot"' in dom and "<svg" in dom and "<rect" in dom
    if thumbnails:
        assert '<img class="thumb" src="data:image/png;base64,' in dom
    with Image.open(shot) as im:
        assert im.size == (1280, 2000)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 10, "the screenshot is blank"
    return dom
