"""How a restricted caller's vector query is run: chosen by the share of the index it may read.

Why not always the store's ``where``: Chroma 1.5.9 (embedded) has no index on boolean metadata
values, so it answers a label filter by scanning its whole metadata table (every collection's
rows), whatever the caller may read. On the 10k-chunk bench (``eval/bench/query.py --access``)
a text-model query for 100 hits costs 10 ms unfiltered and 60-160 ms with the label filter (98 ms
as a caller of half the corpus), while an unfiltered query for ids and distances alone costs
1.7 ms for 100, 4.4 ms for 1,000 and 27 ms for all 10,000 (the record's metadata and text, which
Chroma reads per result, are what a deep query pays for).

So, as Qdrant, Weaviate and Vespa choose their filter plan by selectivity:

* **over-fetch** when ``k' = ceil(n / share * MARGIN)`` (or the whole index, when smaller) is at
  most :data:`MAX_OVERFETCH`: the nearest ``k'`` ids and distances with no filter; the first ``n``
  of documents the caller may read (their labels from the manifest's ``doc_access`` table, cached
  here); then only those ``n`` records are read, and each one's *stored* metadata must pass
  :func:`~mmrag.security.labels.can_read`, the rule of the store filter. The allowed top ``n`` of
  the unfiltered top ``k'`` is the filtered query's top ``n`` whenever ``n`` survive (or ``k'``
  covered the whole index). When fewer survive, or any record's stored labels disagree with the
  cache (a relabel in flight), the filtered query answers instead.
* **filtered** otherwise: the store's ``where``, as before.

In a hybrid search the over-fetch's records are not read per index: the allowed ids and scores
(:func:`readable_candidates`) go into the fusion, and only the fused top k are read and checked
(:func:`read_checked`, from :meth:`mmrag.retrieval.Searcher._hybrid`); a refusal there runs the
search again with every index read in full.

The cache is reloaded when the manifest's access stamp changes (every ``doc_access`` write sets
a new one, :meth:`mmrag.security.rules.LabelTable.set`), so a relabel by another process is seen
by the next query. Nothing read about a forbidden record (its id, its rank, that it exists) leaves
this module: callers get only records that passed ``can_read``.
"""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

from mmrag.security.labels import Caller, can_read
from mmrag.security.rules import LabelTable
from mmrag.types import Hit, doc_id_of

if TYPE_CHECKING:
    from mmrag.kb import KnowledgeBase

#: Over-fetch factor on ``n / share``: at share 0.5 and n = 100 the 300 candidates hold 150
#: allowed ones on average (sd 8.7), so a fallback for too few is a > 5-sigma event for
#: candidates that are not sorted by label; clusters of forbidden records do trigger it.
MARGIN = 1.5
#: Deepest unfiltered over-fetch: 27 ms for 10,000 ids and distances on the bench machine, a
#: third of one filtered query over the same 10,000 records (which scans every metadata row).
MAX_OVERFETCH = 10_000
#: Distinct callers whose readable counts one snapshot keeps.
MAX_CALLERS = 256


@dataclass
class _Snapshot:
    """The labels of one knowledge base's documents at one access stamp."""

    stamp: tuple[str | None, tuple[int, int]]
    labels: dict[str, frozenset[str]]  # labelled documents only
    groups: list[tuple[frozenset[str], int, int, int]]  # (label set, documents, clip records, text records)
    readable: dict[tuple[tuple[str, ...], str], tuple[int, int, int]] = field(default_factory=dict)

    def counts(self, caller: Caller, unlabelled: str) -> tuple[int, int, int]:
        """(documents, clip records, text records) ``caller`` may read."""
        key = (caller.labels, unlabelled)
        hit = self.readable.get(key)
        if hit is None:
            held = set(caller.labels)
            docs = clip = text = 0
            for labels, n_docs, n_clip, n_text in self.groups:
                if (labels & held) if labels else unlabelled == "public":
                    docs, clip, text = docs + n_docs, clip + n_clip, text + n_text
            hit = (docs, clip, text)
            if len(self.readable) >= MAX_CALLERS:
                self.readable.clear()
            self.readable[key] = hit
        return hit

    def totals(self) -> tuple[int, int]:
        """(clip records, text records) of the whole index."""
        return sum(g[2] for g in self.groups), sum(g[3] for g in self.groups)

    def may_read(self, doc_id: str, held: set[str], unlabelled: str) -> bool:
        labels = self.labels.get(doc_id)
        return bool(labels & held) if labels else unlabelled == "public"


class AccessView:
    """Per knowledge base: the documents' labels and record counts, reloaded when their stamp changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snap: _Snapshot | None = None
        self._table: LabelTable | None = None

    def snapshot(self, kb: "KnowledgeBase") -> _Snapshot:
        """The current labels (one indexed read of the stamp; a full read only after a change)."""
        # Made once: a LabelTable checks that its tables exist, a read every search need not pay.
        table = self._table = self._table or LabelTable(kb.manifest)
        # The record totals too: documents ingested unlabelled (or deleted) change the shares.
        stamp = (table.stamp(kb.collection), kb.manifest.totals(kb.collection))
        snap = self._snap
        if snap is not None and snap.stamp == stamp:
            return snap
        with self._lock:
            snap = self._snap
            if snap is None or snap.stamp != stamp:
                labels = {d: frozenset(ls) for d, ls in table.labelled(kb.collection).items()}
                groups = [(frozenset(ls.split(",")) if ls else frozenset(), docs, clip, text)
                          for ls, docs, clip, text in table.label_groups(kb.collection)]
                snap = self._snap = _Snapshot(stamp, labels, groups)
            return snap

    def forget(self) -> None:
        """Drop the snapshot (its labels disagreed with a stored record's): the next query reloads."""
        self._snap = None


_VIEWS: "weakref.WeakKeyDictionary[Any, AccessView]" = weakref.WeakKeyDictionary()
_VIEWS_LOCK = threading.Lock()


def view_of(kb: "KnowledgeBase") -> AccessView:
    """The :class:`AccessView` of this knowledge base object (one per object, made on first use)."""
    with _VIEWS_LOCK:
        view = _VIEWS.get(kb)
        if view is None:
            view = _VIEWS[kb] = AccessView()
        return view


def reads_nothing(kb: "KnowledgeBase", caller: Caller, unlabelled: str) -> bool:
    """Whether the manifest records documents but none that ``caller`` may read (its queries answer ``[]``).

    Records the manifest does not account for (written straight to the stores, as some tests do)
    are left to the store filter: False when it records no document at all.
    """
    snap = view_of(kb).snapshot(kb)
    return bool(snap.groups) and snap.counts(caller, unlabelled)[0] == 0


def overfetch_depth(n: int, readable: int, total: int) -> int | None:
    """The unfiltered depth for ``n`` allowed hits, or None when the filtered query is the cheaper plan."""
    if readable <= 0 or total <= 0:
        return None
    depth = min(total, math.ceil(n / (readable / total) * MARGIN))
    return depth if depth <= MAX_OVERFETCH else None


def readable_candidates(kb: "KnowledgeBase", which: str, store: Any, vector: Sequence[float], n: int,
                        caller: Caller, unlabelled: str, modality: str | None = None) -> list[tuple[str, float]] | None:
    """The ids and scores of the nearest ``n`` records ``caller`` may read, by the manifest's labels.

    None when the filtered store query is the cheaper plan, or the exact one: the caller's share is
    too small to over-fetch, the store cannot give unfiltered ids, an id is not an mmrag record's,
    or the allowed top ``n`` may lie deeper than the over-fetch reached. The labels come from a
    cache, so whoever reads the records must check their *stored* labels (:func:`read_checked`).
    """
    nearest = getattr(store, "nearest", None)
    if nearest is None or n <= 0:
        return None
    snap = view_of(kb).snapshot(kb)
    _, clip, text = snap.counts(caller, unlabelled)
    total_clip, total_text = snap.totals()
    readable, total = (clip, total_clip) if which == "clip" else (text, total_text)
    depth = overfetch_depth(n, readable, total)
    if depth is None:
        return None
    candidates = nearest(vector, depth, modality)
    if candidates is None:
        return None  # the store cannot pick the modality without a filter
    held = set(caller.labels)
    chosen: list[tuple[str, float]] = []
    for rid, score in candidates:
        doc_id = doc_id_of(rid)
        if doc_id is None:
            return None  # not an mmrag record id: its document is unknown here
        if snap.may_read(doc_id, held, unlabelled):
            chosen.append((rid, score))
            if len(chosen) == n:
                break
    if len(chosen) < n and len(candidates) >= depth:
        # The allowed top n may lie deeper. Fewer candidates than asked for: the store had no
        # more, so the allowed ones among them are all there are.
        return None
    return chosen


def read_checked(kb: "KnowledgeBase", store: Any, chosen: Sequence[tuple[str, float]], caller: Caller | None,
                 unlabelled: str) -> list[Hit] | None:
    """The records of ``chosen`` (ids and scores), each checked against its stored labels.

    None when one was deleted since, or its stored labels refuse ``caller`` (a relabel in flight:
    the label cache is dropped): the filtered query must answer instead. With no ``caller`` (an
    unrestricted search) there is nothing to check but that every record is still there.
    """
    found = {h.id: h for h in store.get([rid for rid, _ in chosen])}
    hits = []
    for rid, score in chosen:
        hit = found.get(rid)
        if hit is None:
            return None  # deleted since: the filtered query sees the store as it is now
        if caller is not None and (hit.doc_id != doc_id_of(rid) or not can_read(caller, hit.metadata, unlabelled)):
            view_of(kb).forget()  # stored labels differ from the cache: a relabel is in flight
            return None
        hits.append(replace(hit, score=score))
    return hits


def query_readable(kb: "KnowledgeBase", which: str, store: Any, vector: Sequence[float], n: int, caller: Caller,
                   unlabelled: str, filtered: Callable[[], list[Hit]], modality: str | None = None) -> list[Hit]:
    """The top ``n`` records of ``store`` that ``caller`` may read, by the cheaper exact plan.

    Args:
        kb: the knowledge base ``store`` belongs to (its manifest holds the labels).
        which: ``clip`` or ``text``: whose record counts give the share.
        store: a vector store with ``nearest(vector, n, modality)`` (ids and scores, unfiltered;
            None when it cannot) and ``get(ids)``; a store without ``nearest`` is queried filtered.
        vector: the query vector.
        n: hits wanted.
        caller: a restricted caller.
        unlabelled: ``public`` or ``private``.
        filtered: the store query with the access ``where`` (and the modality): the other plan,
            and the fallback.
        modality: only records of this modality (the CLIP store's image or text half).
    """
    chosen = readable_candidates(kb, which, store, vector, n, caller, unlabelled, modality)
    hits = read_checked(kb, store, chosen, caller, unlabelled) if chosen is not None else None
    return filtered() if hits is None else hits
