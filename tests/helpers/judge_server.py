"""A deterministic OpenAI-compatible chat server on 127.0.0.1: the judge (and answer model) of the
judge tests. It is a test fixture, not part of the product.

Ragas asks for JSON through instructor's JSON mode: the system message carries the response model's
JSON schema, whose ``title`` names what is wanted (``NLIStatementOutput``...). The server answers each
known title with a fixed, valid object; an unknown title gets a generic instance built from the
schema. A request without a schema is an answer request (mmrag's prompt): the reply quotes the first
sentence of context block 1 and cites it, so the grounding guard accepts it.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

#: Questions whose answer gets an unsupported second statement (faithfulness 0.5 -> hallucinated).
UNSUPPORTED_MARKER = "parking"
INVENTED = "The answer invents a detail."


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", "") for part in content or [] if isinstance(part, dict))


def _schema(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    for message in messages:
        text = _text(message.get("content"))
        if "json_schema" not in text:
            continue
        start = text.index("{", text.index("json_schema"))
        try:
            schema, _ = json.JSONDecoder().raw_decode(text[start:])
        except json.JSONDecodeError:
            return None
        return schema
    return None


def _generic(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    if "$ref" in schema:
        return _generic(defs[schema["$ref"].split("/")[-1]], defs)
    kind = schema.get("type")
    if kind == "object":
        return {k: _generic(v, defs) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        return [_generic(schema.get("items", {}), defs)]
    return {"string": "ok", "integer": 1, "number": 1.0, "boolean": True}.get(kind, None)


def _last_input(prompt: str) -> str:
    # Ragas prompts end with the real input after a few worked examples.
    return prompt.rsplit("Input:", 1)[-1] if "Input:" in prompt else prompt


def reply_for(messages: list[dict[str, Any]]) -> tuple[str, str]:
    """(kind, content) for a chat request: kind is the schema title, or "answer"."""
    schema = _schema(messages)
    prompt = "\n".join(_text(m.get("content")) for m in messages if m.get("role") == "user")
    if schema is None:
        block = re.search(r'<context id="1"[^>]*>\s*(.*?)</context>', prompt, re.S)
        first = re.split(r"(?<=[.!?])\s", (block.group(1) if block else "").strip())[0][:200]
        return "answer", (f"{first} [1]" if first else "I don't know.")
    title = schema.get("title", "")
    last = _last_input(prompt)
    # The statement step sees the question; it plants a marked statement that the NLI step rejects.
    second = INVENTED if UNSUPPORTED_MARKER in last.lower() else "The answer adds a detail."
    replies: dict[str, Any] = {
        "StatementGeneratorOutput": {"statements": ["The answer states a fact.", second]},
        "NLIStatementOutput": {"statements": [
            {"statement": "The answer states a fact.", "reason": "stated in the context", "verdict": 1},
            {"statement": "The answer adds a detail.", "reason": "judged by the test server",
             "verdict": 0 if INVENTED in last else 1}]},
        "ContextPrecisionOutput": {"reason": "useful", "verdict": 1},
        "AnswerRelevanceOutput": {"question": "When does the building close?", "noncommittal": 0},
        "MultiModalFaithfulnessOutput": {"faithful": True, "reason": "consistent with the contexts"},
        "MultiModalRelevanceOutput": {"relevant": True, "reason": "on topic"},
    }
    body = replies.get(title) or _generic(schema, schema.get("$defs", {}))
    return title, json.dumps(body)


class JudgeServer:
    """Serves ``POST /v1/chat/completions`` (whole, or streamed as server-sent events when the request
    says ``stream``); records the kind of every request it answered."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.images = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if not self.path.endswith("/chat/completions"):
                    self.send_error(404)
                    return
                messages = body.get("messages", [])
                server.images += sum(1 for m in messages if isinstance(m.get("content"), list)
                                     for p in m["content"] if p.get("type") == "image_url")
                kind, content = reply_for(messages)
                server.requests.append(kind)
                if body.get("stream"):
                    self._stream(body.get("model", "test"), content, len(server.requests))
                    return
                data = json.dumps({
                    "id": f"chatcmpl-{len(server.requests)}", "object": "chat.completion", "created": 0,
                    "model": body.get("model", "test"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, model: str, content: str, n: int) -> None:
                # OpenAI's server-sent events: one chunk per word, the finish, then the usage.
                words = content.split(" ")
                deltas = [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]
                chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": d},
                                        "finish_reason": None}]} for d in deltas]
                chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                chunks.append({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": len(words),
                                                        "total_tokens": 10 + len(words)}})
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for chunk in chunks:
                    event = {"id": f"chatcmpl-{n}", "object": "chat.completion.chunk", "created": 0, "model": model,
                             **chunk}
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_port}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "JudgeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def serve() -> Iterator[JudgeServer]:
    """Generator for a pytest fixture."""
    with JudgeServer() as server:
        yield server
