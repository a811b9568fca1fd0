"""Change a document's access labels: a metadata write to each index, never a re-embed.

Under the collection's writer lock, each of the document's records in the joint-space and text
collections gets the new label keys (old ones deleted) through the store's ``update_metadata``;
its keyword rows are rewritten with the same text and the new metadata (tantivy updates by
delete-and-add, which reads no model); the manifest's ``doc_access`` row records the labels so a
later ingest or reindex keeps them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from mmrag.errors import NotFoundError
from mmrag.security.labels import label_changes, parse_labels
from mmrag.security.rules import LabelTable, relabelled
from mmrag.types import Record

if TYPE_CHECKING:
    from mmrag.kb import KnowledgeBase


def set_labels(kb: "KnowledgeBase", doc_id: str, labels: Iterable[str]) -> dict[str, object]:
    """Give document ``doc_id`` exactly ``labels`` (none: unlabelled) in every index.

    Args:
        kb: the knowledge base (no model is loaded).
        doc_id: the document.
        labels: ``group:<name>`` / ``user:<name>`` labels.

    Returns:
        ``{"doc_id", "labels", "records"}``: the labels now in force and how many records changed.

    Raises:
        NotFoundError: no indexed document ``doc_id`` in the collection.
        InvalidInputError: a malformed label.
    """
    wanted = parse_labels(list(labels), "labels")
    with kb.write_lock():
        state = kb.manifest.get(kb.collection, doc_id)
        if state is None or state.status != "done":
            raise NotFoundError(f"no document {doc_id!r} in collection {kb.collection!r}")
        changed = 0
        for which in ("clip", "text"):
            store = kb.bare_store(which)
            rows = list(store.records_of([doc_id]))
            if rows:
                store.update_metadata([rid for rid, _, _ in rows], [label_changes(meta, wanted) for _, meta, _ in rows])
                changed += len(rows)
        text_rows = list(kb.bare_store("text").records_of([doc_id], include=("metadatas", "documents")))
        # The keyword index's rows are the text collection's records; rewrite them from it.
        kb.keyword.write(delete_docs=[doc_id],
                         records=[Record(rid, (), relabelled(meta, wanted), text or "") for rid, meta, text in text_rows])
        LabelTable(kb.manifest).set(kb.collection, {doc_id: wanted})
    return {"doc_id": doc_id, "labels": list(wanted), "records": changed}
