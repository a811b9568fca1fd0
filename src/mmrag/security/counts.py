"""Collection sizes as a restricted caller may see them: only the documents it can read are counted."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from mmrag.security.labels import Caller
from mmrag.security.rules import LabelTable

if TYPE_CHECKING:
    from mmrag.kb import KnowledgeBase


def visible_sizes(kb: "KnowledgeBase", caller: Caller, unlabelled: str, sizes: Mapping[str, int]) -> dict[str, int]:
    """``documents``, ``clip_records`` and ``text_records`` of the documents ``caller`` may read.

    Read from the manifest (its per-document record counts and the ``doc_access`` labels), so a
    listing costs one pass over the collection's rows and never a scan of the stores.
    """
    labelled = LabelTable(kb.manifest).labelled(kb.collection)
    held = set(caller.labels)
    readable = {d for d, labels in labelled.items() if held & set(labels)}
    docs = clip = text = 0
    for state, _ in kb.manifest.listing(kb.collection, "done"):
        if state.doc_id in labelled:
            ok = state.doc_id in readable
        else:
            ok = unlabelled == "public"
        if ok:
            docs, clip, text = docs + 1, clip + state.n_clip, text + state.n_text
    return {**sizes, "documents": docs, "clip_records": clip, "text_records": text}
