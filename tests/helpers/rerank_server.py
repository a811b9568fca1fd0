"""A loopback HTTP server that speaks Cohere's rerank API (``POST /v1/rerank`` and ``/v2/rerank``).
It is a test fixture, not part of the product.

Request: ``{"model", "query", "documents": [str, ...], "top_n"?, ...}``. Response, as Cohere sends it:
``{"id", "results": [{"index", "relevance_score"}, ...] sorted best first, "meta": {...}}``. The score
is deterministic: the share of the query's words that the document holds, plus a small tie-break
that prefers shorter documents, so a test can compute the order it expects.

Some model names misbehave on purpose: ``rate-limited`` answers 429, ``broken`` 500, ``slow``
sleeps past any short timeout, ``partial`` scores only the first document, ``denied`` 401.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def words(text: str) -> set[str]:
    """Lower-case word set."""
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def relevance(query: str, document: str) -> float:
    """The server's score: query-word coverage, ties broken towards shorter documents."""
    q = words(query)
    return len(q & words(document)) / max(len(q), 1) + 1.0 / (1000 + len(document))


class CohereRerankServer:
    """The server on an ephemeral loopback port; ``requests`` records each call's path, headers and body."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                model = str(body.get("model", ""))
                if self.path not in ("/v1/rerank", "/v2/rerank"):
                    return self._send(404, {"message": f"no route {self.path}"})
                if "rate-limited" in model:
                    return self._send(429, {"message": "You are using a Trial key, which is limited to 10 API calls / minute."})
                if "broken" in model:
                    return self._send(500, {"message": "internal server error"})
                if "denied" in model:
                    return self._send(401, {"message": "invalid api token"})
                if "slow" in model:
                    time.sleep(3.0)
                docs = [d if isinstance(d, str) else str(d.get("text", "")) for d in body.get("documents", [])]
                scored = sorted(((relevance(body.get("query", ""), d), i) for i, d in enumerate(docs)),
                                key=lambda p: -p[0])
                if "partial" in model:
                    scored = [p for p in scored if p[1] == 0]
                top_n = body.get("top_n") or len(scored)
                results = [{"index": i, "relevance_score": round(s, 6)} for s, i in scored[:top_n]]
                self._send(200, {"id": f"rerank-{len(server.requests)}", "results": results,
                                 "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}})

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "CohereRerankServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
