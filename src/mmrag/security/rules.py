"""Where a document's access labels come from at ingest, and the manifest table that keeps them.

A document's labels are the union of:

* ``mmrag ingest --access group:finance`` (repeatable): every document of the run;
* a ``.mmrag-access`` file in the document's folder or any folder above it, up to the ingested
  root: one or more labels per line, ``#`` starts a comment (like ``.gitignore``, it applies to
  everything below it); the file itself is never ingested (discovery skips hidden files);
* a JSONL record's ``access`` field: ``"group:a,group:b"`` (a string; commas or spaces).

When none of them gives a document a label, the labels it already has are kept (set earlier by
``mmrag access set``, or by an earlier ingest), so re-ingesting a changed file never makes a
private document public. A document that ends with no label is unlabelled: public to every key
unless ``access.unlabelled = "private"``.

The table ``doc_access`` is owned here. It is kept per knowledge base (not per version), so a
reindex into a new version carries the labels over.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mmrag.errors import InvalidInputError
from mmrag.manifest import KB_OF, Manifest
from mmrag.security.labels import LABELS_KEY, is_label_key, label_metadata, parse_labels

RULE_FILE = ".mmrag-access"
TABLE = """
CREATE TABLE IF NOT EXISTS doc_access (
    kb     TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    labels TEXT NOT NULL,
    PRIMARY KEY (kb, doc_id)
)
"""
#: One row per knowledge base, rewritten with every ``doc_access`` write: searchers cache the labels
#: (:mod:`mmrag.security.plan`) and reload them when it changes, in this process or another.
STAMP_TABLE = """
CREATE TABLE IF NOT EXISTS doc_access_stamp (
    kb    TEXT PRIMARY KEY,
    stamp TEXT NOT NULL
)
"""


@dataclass
class AccessRules:
    """The labels an ingest run gives its documents.

    Args:
        labels: labels for every document of the run (``--access``).
        roots: the folders the run walks; ``.mmrag-access`` files are read up to them.
    """

    labels: tuple[str, ...] = ()
    roots: Sequence[Path] = ()
    _folders: dict[Path, tuple[str, ...]] = field(default_factory=dict, repr=False)
    #: Folder labels per source, for the run: a JSONL file's thousands of records resolve its path once.
    _sources: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.labels = parse_labels(self.labels, "--access")
        self.roots = [Path(r).resolve() for r in self.roots]

    def labels_for(self, source: str, metadata: Mapping[str, Any]) -> tuple[str, ...]:
        """The labels this run gives a document (its own JSONL field, its folders' files, ``--access``).

        Raises:
            InvalidInputError: a malformed label, naming the file (or the JSONL field) it came from.
        """
        found = set(self.labels)
        raw = metadata.get(LABELS_KEY)
        if raw is not None:
            found.update(parse_labels(str(raw), f"{source}: field {LABELS_KEY!r}"))
        if source not in self._sources:
            self._sources[source] = frozenset(self._folder_labels(Path(source)))
        found.update(self._sources[source])
        return tuple(sorted(found))

    def _folder_labels(self, source: Path) -> set[str]:
        path = source.resolve()
        root = next((r for r in self.roots if r == path or r in path.parents), None)
        if root is None:
            return set()
        out: set[str] = set()
        folder = path.parent
        # From the document's folder up to the root, never above it (a rule file in a home folder
        # must not label a corpus ingested from below it by accident).
        while folder == root or root in folder.parents:
            out.update(self._read_rule(folder))
            folder = folder.parent
        return out

    def _read_rule(self, folder: Path) -> tuple[str, ...]:
        if folder not in self._folders:
            rule = folder / RULE_FILE
            labels: tuple[str, ...] = ()
            if rule.is_file():
                try:
                    lines = rule.read_text(encoding="utf-8").splitlines()
                except (OSError, UnicodeDecodeError) as exc:
                    raise InvalidInputError(f"{rule}: cannot read the access rule file ({exc})") from exc
                values = [line.split("#", 1)[0] for line in lines]
                labels = parse_labels(values, str(rule))
            self._folders[folder] = labels
        return self._folders[folder]


def relabelled(meta: Mapping[str, Any], labels: Iterable[str]) -> dict[str, Any]:
    """A record's metadata with its access keys replaced by those of ``labels``."""
    return {**{k: v for k, v in meta.items() if not is_label_key(k)}, **label_metadata(labels)}


class LabelTable:
    """The ``doc_access`` rows of one data dir's manifest: the labels each document was given."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        # A read first: every ingest batch opens the table, and a write would cost an fsync.
        found = manifest.read("SELECT COUNT(*) FROM sqlite_master WHERE type='table' "
                              "AND name IN ('doc_access', 'doc_access_stamp')")
        if found[0][0] != 2:
            manifest.write(TABLE, [()])
            manifest.write(STAMP_TABLE, [()])

    def get(self, collection: str, doc_ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """The recorded labels of these documents (those with a row)."""
        out: dict[str, tuple[str, ...]] = {}
        for lo in range(0, len(doc_ids), 500):
            part = list(doc_ids[lo:lo + 500])
            marks = ",".join("?" * len(part))
            rows = self.manifest.read(f"SELECT doc_id, labels FROM doc_access WHERE kb={KB_OF} AND doc_id IN ({marks})",
                                      (collection, collection, *part))
            out.update({str(d): tuple(str(labels).split(",")) if labels else () for d, labels in rows})
        return out

    def set(self, collection: str, labels: Mapping[str, Iterable[str]]) -> None:
        """Record each document's labels (an empty list records "public on purpose")."""
        rows = [(collection, collection, doc_id, ",".join(sorted(set(ls)))) for doc_id, ls in labels.items()]
        if rows:
            with self.manifest.transaction() as db:
                db.executemany(f"INSERT OR REPLACE INTO doc_access VALUES ({KB_OF},?,?)", rows)
                db.execute(f"INSERT OR REPLACE INTO doc_access_stamp VALUES ({KB_OF},?)",
                           (collection, collection, uuid.uuid4().hex))

    def stamp(self, collection: str) -> str | None:
        """The knowledge base's access stamp: a new value after every change of its labels (None: never set)."""
        rows = self.manifest.read(f"SELECT stamp FROM doc_access_stamp WHERE kb={KB_OF}", (collection, collection))
        return str(rows[0][0]) if rows else None

    def label_groups(self, collection: str) -> list[tuple[str, int, int, int]]:
        """``(labels, documents, clip records, text records)`` per distinct label set ('' for none).

        Counts the documents whose records the stores hold (every status but ``pending``, as
        :meth:`~mmrag.manifest.Manifest.totals` does).
        """
        # The documents' counts are the manifest's; the labels are this table's, looked up per document.
        return self.manifest.totals_by_labels(
            collection, f"SELECT a.labels FROM doc_access a WHERE a.kb={KB_OF} AND a.doc_id=d.doc_id",
            (collection, collection))

    def labelled(self, collection: str) -> dict[str, tuple[str, ...]]:
        """Every document of the knowledge base that has labels."""
        rows = self.manifest.read(f"SELECT doc_id, labels FROM doc_access WHERE kb={KB_OF} AND labels != ''",
                                  (collection, collection))
        return {str(d): tuple(str(labels).split(",")) for d, labels in rows}


def apply_labels(rules: AccessRules, table: LabelTable, collection: str, docs: Sequence[Any]) -> None:
    """Give each prepared document's records their labels (in place) and record them.

    ``docs`` are :class:`mmrag.indexing.steps.Prepared` (``doc_id``, ``source``, ``clip_metas``,
    ``text_metas``); a document the run gives no label keeps the labels recorded for it.
    """
    if not docs:
        return
    kept = table.get(collection, [d.doc_id for d in docs])
    chosen: dict[str, tuple[str, ...]] = {}
    for doc in docs:
        first = (doc.text_metas or doc.clip_metas or [{}])[0]
        labels = rules.labels_for(doc.source, first) or kept.get(doc.doc_id, ())
        chosen[doc.doc_id] = labels
        doc.clip_metas[:] = [relabelled(m, labels) for m in doc.clip_metas]
        doc.text_metas[:] = [relabelled(m, labels) for m in doc.text_metas]
    table.set(collection, {d: ls for d, ls in chosen.items() if ls or d in kept})
