"""The access log: one JSON line per request, answering "who read document X" (``mmrag audit``).

Each line holds ``time`` (UTC, ISO 8601, when the response was sent), ``key`` (the key id, never
the token) and ``key_name``, ``method``, ``route`` (the route's template), ``path``, ``status``,
``collection``, ``tool`` (an MCP tool call), ``doc_ids`` (the documents the caller was shown:
hits, citations, an image's document), ``context_doc_ids`` (for answers: the documents the model read),
``written_doc_ids`` (uploads and deletes: the documents the request wrote) and ``ms`` (latency, to the last
byte of a streamed reply). The query text is left out unless ``api.access_log_queries`` is on.

Route handlers and MCP tools call :func:`note` with what they returned; :class:`AccessLog` (an
ASGI middleware outside every other) writes the line once the response is sent, so refused
requests (401, 403) are logged too, and streamed answers with their citations.

On by default, to ``DATA_DIR/access.log``: an audit trail must exist before the question "who read
this?" is asked, and it can hold no query text unless asked to, so keeping it costs no privacy.
``MMRAG_API__ACCESS_LOG=off`` turns it off, ``-`` writes to stdout.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from mmrag.config import Settings
from mmrag.errors import ConfigError

#: Where a request's record lives in its ASGI scope (MCP's transport sees the same scope).
SCOPE_KEY = "mmrag.access"


def log_path(settings: Settings) -> Path | None:
    """The access log's file, or None when it is off or goes to stdout."""
    where = settings.api.access_log
    if where in ("off", "-"):
        return None
    return Path(where) if where else Path(settings.data_dir) / "access.log"


def note(scope: Any, *, collection: str | None = None, doc_ids: Iterable[str] = (),
         context_doc_ids: Iterable[str] = (), written_doc_ids: Iterable[str] = (), query: str | None = None,
         tool: str | None = None) -> None:
    """Record what a request returned, for its access-log line.

    Args:
        scope: the request's ASGI scope (``request.scope``); a scope without a record (stdio MCP,
            a test calling a handler directly) is ignored.
        collection: the collection the request read.
        doc_ids: the documents the caller was shown (hits, citations, an image's document).
        context_doc_ids: the documents an answer's model read, cited or not.
        written_doc_ids: the documents an upload indexed (or found unchanged) or a delete removed.
        query: the query text; written only with ``api.access_log_queries`` on.
        tool: the MCP tool called.
    """
    record = scope.get(SCOPE_KEY) if isinstance(scope, dict) else None
    if record is None:
        return
    if collection is not None:
        record["collection"] = collection
    record["doc_ids"] = _unique([*record.get("doc_ids", []), *doc_ids])
    if context_doc_ids:
        record["context_doc_ids"] = _unique([*record.get("context_doc_ids", []), *context_doc_ids])
    if written_doc_ids:
        record["written_doc_ids"] = _unique([*record.get("written_doc_ids", []), *written_doc_ids])
    if query is not None:
        record["query"] = query
    if tool is not None:
        record["tool"] = tool


def _unique(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(str(i) for i in ids if i))


def open_writer(settings: Settings) -> logging.Logger | None:
    """A logger that writes the access log as ``settings.api`` says; None when it is off.

    Raises:
        ConfigError: the log's folder cannot be created or the file cannot be opened for appending.
    """
    api = settings.api
    if api.access_log == "off":
        return None
    # A private logger (not in logging's registry): each app gets its own handler, and no root
    # handler ever echoes the lines elsewhere.
    logger = logging.Logger("mmrag.access", logging.INFO)
    path = log_path(settings)
    handler: logging.Handler
    if path is None:
        handler = logging.StreamHandler(sys.stdout)
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a"):
                pass
        except OSError as exc:
            raise ConfigError(f"cannot write the access log {path}: {exc.strerror or exc}; set "
                              "MMRAG_API__ACCESS_LOG to a writable file, '-' for stdout, or 'off'") from exc
        # Rotation is per process: with several workers, point each at stdout ('-') or at a log
        # shipper, as two processes rotating one file can lose lines.
        handler = _ClosingRotatingHandler(path, maxBytes=api.access_log_max_bytes,
                                                       backupCount=api.access_log_backups, encoding="utf-8",
                                                       delay=True)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    return logger


class _ClosingRotatingHandler(logging.handlers.RotatingFileHandler):
    """Rotates like its parent, but holds no file open between lines.

    An app built and dropped without its lifespan (tests, embedding the app) would otherwise leak
    the handle; reopening per line costs microseconds next to a request, and another process's
    rotation is picked up at the next line instead of writing on into a renamed file.
    """

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if self.stream is not None:
            self.stream.close()
            self.stream = None  # type: ignore[assignment]


def close_writer(writer: logging.Logger | None) -> None:
    """Close the access log's file (the app's lifespan ends)."""
    for handler in writer.handlers if writer is not None else []:
        handler.close()


class AccessLog:
    """ASGI middleware that writes one access-log line per HTTP request.

    Args:
        app: the next ASGI app.
        services: the server's services (settings and key store).
        writer: the logger from :func:`open_writer`; None passes requests through untouched.
    """

    def __init__(self, app: Any, *, services: Any, writer: logging.Logger | None) -> None:
        self.app = app
        self.services = services
        self.writer = writer
        self.queries = services.settings.api.access_log_queries

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.writer is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        record: dict[str, Any] = {}
        scope[SCOPE_KEY] = record
        status = 500

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self._write(scope, record, status, (time.perf_counter() - started) * 1000)

    def _write(self, scope: dict[str, Any], record: dict[str, Any], status: int, ms: float) -> None:
        key = self._key(scope) if status != 401 else None
        line: dict[str, Any] = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "key": key.id if key else None, "key_name": key.name if key else None,
            "method": scope.get("method"), "route": getattr(scope.get("route"), "path", None) or scope.get("path"),
            "path": scope.get("path"), "status": status, "collection": record.get("collection"),
            "tool": record.get("tool"), "doc_ids": record.get("doc_ids", []),
            "context_doc_ids": record.get("context_doc_ids", []),
            "written_doc_ids": record.get("written_doc_ids", []), "ms": round(ms, 2),
        }
        if self.queries and record.get("query") is not None:
            line["query"] = record["query"]
        assert self.writer is not None
        try:
            self.writer.info(json.dumps(line, ensure_ascii=False))
        except Exception:  # noqa: BLE001 - the log must never fail the request it records
            logging.getLogger("mmrag.http").exception("could not write the access log")

    def _key(self, scope: dict[str, Any]) -> Any:
        """The key the request authenticated with (None: auth off, no key, or an unknown one)."""
        if not self.services.settings.api.auth:
            return None
        from mmrag.http.auth import bearer_token

        headers = dict(scope.get("headers") or [])
        token = bearer_token(headers.get(b"authorization", b"").decode("latin-1") or None)
        try:
            return self.services.keys.authenticate(token) if token else None
        except Exception:  # noqa: BLE001 - an unreadable key file is the request's error, not the log's
            return None

