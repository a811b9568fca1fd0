"""Drive headless Chromium over the DevTools protocol: navigate, type, click, upload, wait, screenshot.

Just enough of CDP for the playground test, over ``websockets``' sync client (no browser
automation package is installed). Skips when chromium is missing, as tests/helpers/chromium.py does.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from tests.helpers.chromium import FLAGS, chromium


class Browser:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, profile: Path, size: tuple[int, int] = (1280, 1400)) -> None:
        self.proc = subprocess.Popen(
            [chromium(), *FLAGS, "--remote-debugging-port=0", "--remote-allow-origins=*",
             f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline, url = time.monotonic() + 60, None
        assert self.proc.stderr is not None
        while url is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError("chromium exited before it listened")
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            url = m.group(1) if m else None
        if url is None:
            self.proc.kill()
            raise RuntimeError("chromium did not print its DevTools address")
        # Keep reading stderr, or chromium blocks once the pipe is full.
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()
        self._ids = itertools.count(1)
        self.ws = connect(url, max_size=64 * 1024 * 1024, open_timeout=30)
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Page.enable", session=True)
        self.send("Runtime.enable", session=True)
        self.send("Emulation.setDeviceMetricsOverride", session=True, width=size[0], height=size[1],
                  deviceScaleFactor=1, mobile=False)
        self.console: list[str] = []

    def send(self, method: str, *, session: bool = False, **params: Any) -> dict[str, Any]:
        """Call one CDP method (on the page when ``session``) and return its result."""
        msg_id = next(self._ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv(timeout=120))
            if reply.get("method") == "Runtime.exceptionThrown":
                self.console.append(json.dumps(reply["params"]["exceptionDetails"])[:500])
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})  # type: ignore[no-any-return]

    def eval(self, expression: str) -> Any:
        """Evaluate JavaScript in the page (awaiting a promise) and return its value."""
        result = self.send("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        """Navigate and wait until the page has loaded its script."""
        self.send("Page.navigate", session=True, url=url)
        # The old page (about:blank) is "complete" too: wait for the new one.
        self.wait(f"location.href === {json.dumps(url)} && document.readyState === 'complete'", 30)

    def wait(self, condition: str, seconds: float) -> Any:
        """Poll a JavaScript condition until it is truthy; returns its value (fails after ``seconds``)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            value = self.eval(condition)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out after {seconds} s waiting for {condition}; errors: {self.console}")

    def type(self, selector: str, text: str) -> None:
        """Focus an input and type into it (as keyboard input, not a value assignment)."""
        self.eval(f"document.querySelector({json.dumps(selector)}).focus()")
        self.eval(f"document.querySelector({json.dumps(selector)}).select && document.querySelector({json.dumps(selector)}).select()")
        self.send("Input.insertText", session=True, text=text)

    def click(self, selector: str) -> None:
        """Click an element at its centre with the mouse (scrolled into view first, as a user would)."""
        box = self.eval(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                        " e.scrollIntoView({block: 'center', inline: 'center'}); const r = e.getBoundingClientRect();"
                        " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", session=True, type=kind, x=box[0], y=box[1], button="left",
                      clickCount=1)

    def upload(self, selector: str, path: Path) -> None:
        """Choose a file in a file input."""
        root = self.send("DOM.getDocument", session=True)["root"]["nodeId"]
        node = self.send("DOM.querySelector", session=True, nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", session=True, nodeId=node, files=[str(path)])

    def upload_many(self, selector: str, paths: list[Path]) -> None:
        """Choose several files in a ``multiple`` file input."""
        root = self.send("DOM.getDocument", session=True)["root"]["nodeId"]
        node = self.send("DOM.querySelector", session=True, nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", session=True, nodeId=node, files=[str(p) for p in paths])

    def drop_files(self, selector: str, paths: list[Path]) -> None:
        """Drag files from outside the page and drop them on an element, as a user's mouse does."""
        box = self.eval(f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                        " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        data = {"items": [], "files": [str(p) for p in paths], "dragOperationsMask": 1}
        for kind in ("dragEnter", "dragOver", "drop"):
            self.send("Input.dispatchDragEvent", session=True, type=kind, x=box[0], y=box[1], data=data)

    def screenshot(self, path: Path) -> Path:
        """Save a PNG of the viewport."""
        data = self.send("Page.captureScreenshot", session=True, format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
