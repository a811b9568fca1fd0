"""``mmrag audit``: who read a document, and what a key read, from the server's access log.

The log is :mod:`mmrag.http.access`'s JSON lines; its rotated files (``access.log.1`` ...) are read
too, oldest first, so the answer covers everything the server still keeps.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import click

from mmrag.cli._common import UsageFailure, emit, errors_to_click, main, settings_from

_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@main.command()
@click.option("--log", "log", type=click.Path(path_type=Path), envvar="MMRAG_API__ACCESS_LOG", default=None,
              help="The access log (its rotated files are read too). [default: DATA_DIR/access.log]")
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="MMRAG_DATA_DIR", default=None,
              help="Where the server's state lives. [env MMRAG_DATA_DIR; default ./.mmrag]")
@click.option("--doc", "doc_id", default=None,
              help="Who read this document id (hits, citations, images), or uploaded or deleted it.")
@click.option("--key", "key", default=None, help="What this key (id or name) read, and when.")
@click.option("--since", default=None, help="Only requests at or after this time: ISO 8601, or 30m, 24h, 7d ago.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (the matching log lines).")
@errors_to_click
def audit(log: Path | None, data_dir: Path | None, doc_id: str | None, key: str | None, since: str | None,
          as_json: bool) -> None:
    """Answer "who read document X" (--doc) and "what did key Y read, and when" (--key).

    Lists each matching request: time, key, route, status, collection and the documents it
    returned. A document counts as read when a request showed it (a hit, a citation, an image)
    or gave it to the answering model; uploads and deletes are listed as writes ("wrote ...").
    """
    if log is None or str(log) in ("", "-", "off"):
        log = Path(settings_from({"data_dir": data_dir}).data_dir) / "access.log"
    after = parse_since(since) if since else None
    rows = [e for e in read_log(log) if matches(e, doc_id=doc_id, key=key, after=after)]
    if as_json:
        emit(rows)
        return
    if not rows:
        click.echo("no matching requests", err=True)
        return
    for e in rows:
        who = e.get("key") or "-"
        if e.get("key_name"):
            who += f" ({e['key_name']})"
        where = e.get("route") or e.get("path")
        if e.get("tool"):
            where += f" {e['tool']}"
        docs = ", ".join(e.get("doc_ids") or []) or "-"
        if e.get("written_doc_ids"):
            docs += "  wrote " + ", ".join(e["written_doc_ids"])
        click.echo(f"{e.get('time')}  {who}  {e.get('method')} {where}  {e.get('status')}  "
                   f"{e.get('collection') or '-'}  {docs}")


def read_log(path: Path) -> Iterator[dict[str, Any]]:
    """The access log's entries, oldest first, across its rotated files.

    Raises:
        UsageFailure: neither the log nor any rotated file of it exists.
    """
    rotated = sorted(path.parent.glob(f"{path.name}.*"), key=_rotation, reverse=True)
    files = [p for p in rotated if _rotation(p) > 0] + ([path] if path.exists() else [])
    if not files:
        raise UsageFailure(f"no access log at {path}; pass --log (the server's MMRAG_API__ACCESS_LOG)")
    for file in files:
        with file.open(encoding="utf-8", errors="replace") as lines:
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    # A line cut by a crash mid-write is skipped, not fatal: the rest still answers.
                    click.echo(f"warning: {file}:{n}: not a JSON line; skipped", err=True)
                    continue
                if isinstance(entry, dict):
                    yield entry


def _rotation(path: Path) -> int:
    suffix = path.name.rsplit(".", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0


def matches(entry: dict[str, Any], *, doc_id: str | None, key: str | None, after: datetime | None) -> bool:
    """Whether a log entry is one the question asks about."""
    touched = [*(entry.get("doc_ids") or []), *(entry.get("context_doc_ids") or []),
               *(entry.get("written_doc_ids") or [])]
    if doc_id is not None and doc_id not in touched:
        return False
    if key is not None and key not in (entry.get("key"), entry.get("key_name")):
        return False
    if after is not None:
        try:
            when = datetime.fromisoformat(str(entry.get("time")))
        except ValueError:
            return False
        if when < after:
            return False
    return True


def parse_since(text: str) -> datetime:
    """``--since``: an ISO 8601 time (UTC when it names no zone) or an age such as ``24h``.

    Raises:
        UsageFailure: neither.
    """
    ago = _AGO.match(text.strip())
    if ago:
        return datetime.now(timezone.utc) - timedelta(**{_UNITS[ago.group(2)]: float(ago.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise UsageFailure(f"--since {text!r}: give an ISO 8601 time (2026-01-31T09:00) "
                           "or an age (30m, 24h, 7d)") from exc
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
