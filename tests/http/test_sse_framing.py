"""The SSE wire format of /v1/answer and /v1/chat/completions, byte for byte (FastAPI's framing)."""

from __future__ import annotations

from mmrag.http.routes.query import _sse


def test_an_answer_event_is_one_event_line_and_one_data_line() -> None:
    assert _sse("delta", {"text": "Grüße\nzwei [1]"}) == 'event: delta\ndata: {"text": "Grüße\\nzwei [1]"}\n\n'.encode()
    assert _sse("done", {}) == b"event: done\ndata: {}\n\n"
