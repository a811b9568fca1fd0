"""Embedding drift: a compact reference of each version's vectors, and a score against recent ones.

A :class:`Reference` summarises one physical collection's vectors in one space, per modality:

* ``text``: text records in the text model's space (``<physical>-text``);
* ``clip-text`` and ``clip-image``: text and image records in the CLIP space;
* ``clip``: the whole CLIP space (both halves, in proportion). A text knowledge base has no image
  reference, so images arriving in it show here: the reference only ever saw CLIP text vectors,
  and CLIP puts images in another region of the sphere (the "modality gap").

It holds the count, the mean vector, and for each of :data:`DIRECTIONS` fixed random unit
directions (seeded, so every version of every collection projects on the same ones) the
:data:`BINS`-bin histogram of the projections, with bin edges at the reference's own quantiles
(so each reference bin holds about 1/16 of it). About 1,000 floats per modality, built from at
most :data:`SAMPLE` records: O(sample), whatever the collection's size.

The score of recent vectors (the records of the most recently updated documents, or the recent
query vectors of a server) is ``max(js, mean_distance / 2)``, in [0, 1]:

* ``js``, the *sliced Jensen–Shannon divergence*: the mean over the directions of the JS
  divergence, in bits, between the reference histogram and the recent one, less the plug-in
  estimator's small-sample bias ``(BINS - 1) / (8 ln 2) * (1/n_ref + 1/n_recent)``; it sees a
  change of shape (spread, modes) along any direction.
* ``mean_distance``: 1 - cosine of the two mean vectors, less what sampling alone gives
  (``spread / (2 |mean|^2 n)`` per side); it sees the centre move, which random directions of a
  128–384-d space see only weakly (images arriving in a text CLIP space: ``js`` 0.35, the mean
  distance 1.22, nearly opposite). Halved, it is ``sin^2`` of half the angle between the means.

Both corrections are floored at 0, so the same distribution scores about 0 at any sample size;
fewer than :data:`MIN_VECTORS` vectors on either side give no score.

Threshold (``lifecycle.drift_threshold``, default 0.2), measured with the offline models
(tests/lifecycle/test_drift.py and the same figures at larger samples): a same-distribution split
of a self-made prose corpus scored 0.000–0.015 in every modality (120 vs 80 documents), while
easy-vqa shapes arriving in that text knowledge base scored 0.61–0.69 on ``clip``, and off-topic
prose 0.44 on ``text``. A mix of half images, half on-topic text scored 0.24. So 0.2 is over ten
times the same-distribution noise and flags a change of kind or topic, or a recent window that
is about half new material.

Queries are compared with the same document reference. A query is shorter than a chunk, so even
on-topic queries score above 0 (about 0.19 on ``text`` for short on-topic questions, 0.50 for
off-topic ones): read the ``queries`` figures as a trend. A report's ``drifted`` (and
``mmrag drift --fail``) therefore judges the documents; ``queries_drifted`` is reported beside it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mmrag.errors import InvalidInputError, MmragError, NotFoundError, StoreError
from mmrag.lifecycle.driftrefs import DriftRefs

log = logging.getLogger(__name__)

MODALITIES = ("text", "clip", "clip-text", "clip-image")
#: Random projection directions and histogram bins per direction.
DIRECTIONS = 32
BINS = 16
#: Seed of the directions: fixed, so references of every version compare with each other.
SEED = 20_240_512
#: Records per half read to build a reference, and at most per modality to score.
SAMPLE = 2000
#: Windows the reference sample is read in (at random offsets: Chroma's order is insertion order).
WINDOWS = 4
#: Fewer vectors than this give no score (the histograms would be noise).
MIN_VECTORS = 20
#: Default drift threshold (``lifecycle.drift_threshold``); see the module docstring.
THRESHOLD = 0.2
#: Recent query vectors kept per (collection, modality), and how often they are written to disk.
QUERY_CAPACITY = 500
PERSIST_SECONDS = 30.0


# -- the math ----------------------------------------------------------------------------------
def directions(dim: int, n: int = DIRECTIONS, seed: int = SEED) -> np.ndarray:
    """``n`` random unit directions in ``dim`` dimensions, the same for every call with one seed."""
    rng = np.random.default_rng([seed, dim])
    dirs = rng.standard_normal((n, dim))
    return (dirs / np.linalg.norm(dirs, axis=1, keepdims=True)).astype(np.float64)


@dataclass(frozen=True)
class Reference:
    """A compact summary of one modality's vectors (see the module docstring).

    An empty reference (``count`` 0) records that the modality had no records when it was built.
    """

    modality: str
    count: int
    mean: np.ndarray  # (dim,)
    edges: np.ndarray  # (DIRECTIONS, BINS - 1), interior bin edges per direction
    hist: np.ndarray  # (DIRECTIONS, BINS), probabilities
    #: Mean squared distance of the vectors from their mean (the trace of their covariance).
    spread: float = 0.0
    created_at: float = field(default_factory=time.time)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def of(cls, modality: str, vectors: np.ndarray) -> "Reference":
        """The reference of ``vectors`` (rows)."""
        vecs = np.asarray(vectors, dtype=np.float64)
        if vecs.size == 0:
            return cls(modality, 0, np.zeros(0), np.zeros((0, BINS - 1)), np.zeros((0, BINS)))
        proj = vecs @ directions(vecs.shape[1]).T  # (n, DIRECTIONS)
        edges = np.quantile(proj, np.arange(1, BINS) / BINS, axis=0).T  # (DIRECTIONS, BINS - 1)
        mean = vecs.mean(axis=0)
        spread = float(((vecs - mean) ** 2).sum(axis=1).mean())
        return cls(modality, len(vecs), mean, edges, _histograms(proj, edges), spread)

    def to_json(self) -> str:
        return json.dumps({"modality": self.modality, "count": self.count, "mean": _round(self.mean),
                           "edges": _round(self.edges), "hist": _round(self.hist), "spread": round(self.spread, 6),
                           "created_at": self.created_at})

    @classmethod
    def from_json(cls, text: str) -> "Reference":
        d = json.loads(text)
        return cls(d["modality"], int(d["count"]), np.asarray(d["mean"], dtype=np.float64),
                   np.asarray(d["edges"], dtype=np.float64).reshape(-1, BINS - 1),
                   np.asarray(d["hist"], dtype=np.float64).reshape(-1, BINS), float(d["spread"]), float(d["created_at"]))


def _round(a: np.ndarray) -> Any:
    return np.round(a, 6).tolist()


def _histograms(proj: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Per direction, the share of projections in each bin (``proj`` is (n, D), ``edges`` (D, BINS - 1))."""
    out = np.zeros((edges.shape[0], BINS))
    for d in range(edges.shape[0]):
        # side="right": a value equal to an edge goes to the upper bin, as np.quantile splits ties.
        out[d] = np.bincount(np.searchsorted(edges[d], proj[:, d], side="right"), minlength=BINS) / len(proj)
    return out


def js_bits(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen–Shannon divergence in bits, row by row, of two arrays of probability rows (0 <= JS <= 1)."""
    m = (p + q) / 2

    def kl(a: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(a > 0, a * np.log2(a / m), 0.0)
        return terms.sum(axis=1)  # type: ignore[no-any-return]

    return np.clip((kl(p) + kl(q)) / 2, 0.0, 1.0)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ModalityScore:
    """The drift of one modality: ``score`` (None when either side has too few vectors) and its parts."""

    modality: str
    score: float | None
    js: float | None
    mean_distance: float | None
    n_reference: int
    n_recent: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"modality": self.modality, "score": self.score, "js": self.js, "mean_distance": self.mean_distance,
                "n_reference": self.n_reference, "n_recent": self.n_recent, "note": self.note}


def compare(ref: Reference, vectors: np.ndarray) -> ModalityScore:
    """Score ``vectors`` against ``ref`` (the module docstring defines the score).

    Raises:
        InvalidInputError: the vectors' dimension is not the reference's (another model).
    """
    vecs = np.asarray(vectors, dtype=np.float64)
    n = len(vecs) if vecs.size else 0
    if ref.count == 0:
        note = "no reference vectors (the modality was empty when the reference was built)" if n else ""
        return ModalityScore(ref.modality, None, None, None, 0, n, note)
    if n < MIN_VECTORS or ref.count < MIN_VECTORS:
        return ModalityScore(ref.modality, None, None, None, ref.count, n,
                             f"too few vectors to score (fewer than {MIN_VECTORS})")
    if vecs.shape[1] != ref.dim:
        raise InvalidInputError(f"{ref.modality}: vectors of dimension {vecs.shape[1]} against a reference of "
                                f"dimension {ref.dim}; rebuild the reference (`mmrag drift KB --rebuild`)")
    # Shape: sliced JS divergence, less the plug-in estimator's bias (Miller-Madow, both samples).
    recent = _histograms(vecs @ directions(ref.dim).T, ref.edges)
    js = max(0.0, float(js_bits(ref.hist, recent).mean()) - (BINS - 1) / (8 * math.log(2)) * (1 / ref.count + 1 / n))
    # Centre: 1 - cos of the means, less what sampling alone gives (delta method: spread / (2 |mean|^2 n) per side).
    mean = vecs.mean(axis=0)
    spread = float(((vecs - mean) ** 2).sum(axis=1).mean())
    norm_ref, norm_new = float(np.linalg.norm(ref.mean)), float(np.linalg.norm(mean))
    if norm_ref * norm_new == 0:
        distance = 1.0
    else:
        noise = ref.spread / (2 * norm_ref**2 * ref.count) + spread / (2 * norm_new**2 * n)
        distance = max(0.0, 1.0 - float(mean @ ref.mean) / (norm_ref * norm_new) - noise)
    score = max(js, distance / 2)
    return ModalityScore(ref.modality, round(score, 4), round(js, 4), round(distance, 4), ref.count, n)


# -- references of a collection ----------------------------------------------------------------
def _halves(kb: Any) -> dict[str, Any]:
    """The stores behind each stored modality: ``text``, ``clip-text`` and ``clip-image``."""
    texts, images = kb.bare_store("clip").parts()  # the CLIP space's text and image collections
    return {"text": kb.bare_store("text"), "clip-text": texts, "clip-image": images}


def _sample(store: Any, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """At most :data:`SAMPLE` vectors of ``store`` (read in :data:`WINDOWS` pages at random offsets) and its count."""
    total = store.count()
    if total <= SAMPLE:
        return store.embeddings(total), total
    size = SAMPLE // WINDOWS
    starts = sorted(rng.choice(total - size + 1, size=WINDOWS, replace=False))
    # Windows may overlap when the collection is barely larger than the sample: a few duplicates, no bias.
    return np.concatenate([store.embeddings(size, int(s)) for s in starts]), total


def _mixture(parts: Mapping[str, tuple[np.ndarray, int]], rng: np.random.Generator) -> np.ndarray:
    """The whole CLIP space: each half's sample, thinned so the halves keep the proportions of their counts."""
    present = {k: v for k, v in parts.items() if len(v[0])}
    if not present:
        return np.zeros((0, 0))
    # Vectors per record of each half; the half sampled most thinly sets the common rate.
    rate = min(len(vecs) / total for vecs, total in present.values())
    kept = [vecs[rng.choice(len(vecs), size=max(1, round(total * rate)), replace=False)]
            for vecs, total in present.values()]
    return np.concatenate(kept)


def build_reference(kb: Any) -> dict[str, Reference]:
    """Summarise what ``kb`` (one physical collection) holds now, per modality, from a bounded sample.

    Reads at most :data:`SAMPLE` vectors per store (three stores), whatever the collection's size.

    Raises:
        StoreError: a store could not be read.
    """
    rng = np.random.default_rng(SEED)
    samples = {modality: _sample(store, rng) for modality, store in _halves(kb).items()}
    refs = {m: Reference.of(m, vecs) for m, (vecs, _) in samples.items()}
    refs["clip"] = Reference.of("clip", _mixture({m: samples[m] for m in ("clip-text", "clip-image")}, rng))
    return refs


def save(manifest: Any, physical: str, refs: Mapping[str, Reference]) -> None:
    """Store (replace) the references of ``physical`` (in :class:`~mmrag.lifecycle.driftrefs.DriftRefs`)."""
    DriftRefs(manifest).put(physical, {m: ref.to_json() for m, ref in refs.items()})


def load(manifest: Any, physical: str) -> dict[str, Reference]:
    """The stored references of ``physical`` by modality (empty when none was built)."""
    rows = DriftRefs(manifest).get(physical)
    try:
        return {m: Reference.from_json(v) for m, v in rows.items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"the drift reference of {physical!r} is damaged ({exc}); rebuild it with "
                         f"`mmrag drift {physical} --rebuild`") from exc


def ensure_reference(kb: Any) -> bool:
    """Build and store ``kb``'s reference if it has documents and no reference yet (the end of an ingest).

    One primary-key read when the reference exists, so every ingest may call it. Never raises: a
    failure is logged, because drift is a diagnostic and must not fail the ingest that called it.

    Returns:
        Whether a reference was built.
    """
    try:
        if DriftRefs(kb.manifest).exists(kb.collection):
            return False
        if not kb.manifest.counts(kb.collection).get("done"):
            return False
        save(kb.manifest, kb.collection, build_reference(kb))
        return True
    except Exception:  # noqa: BLE001 - a diagnostic must never fail the write that called it
        log.warning("collection %r: could not build its drift reference; `mmrag drift %s --rebuild` retries",
                    kb.collection, kb.collection, exc_info=True)
        return False


# -- scoring -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DriftReport:
    """The drift of one physical collection: recent documents and recent queries against its reference."""

    collection: str
    label: str
    threshold: float
    documents: dict[str, ModalityScore]
    queries: dict[str, ModalityScore]
    recent_documents: int
    reference_created_at: float

    @property
    def drifted(self) -> bool:
        """Whether any document score is above the threshold (what ``mmrag drift --fail`` gates on)."""
        return _above(self.documents.values(), self.threshold)

    @property
    def queries_drifted(self) -> bool:
        """Whether any query score is above the threshold (a trend signal: see the module docstring)."""
        return _above(self.queries.values(), self.threshold)

    def to_dict(self) -> dict[str, Any]:
        return {"collection": self.collection, "label": self.label, "threshold": self.threshold,
                "drifted": self.drifted, "queries_drifted": self.queries_drifted,
                "recent_documents": self.recent_documents,
                "reference_created_at": self.reference_created_at,
                "documents": {m: s.to_dict() for m, s in self.documents.items()},
                "queries": {m: s.to_dict() for m, s in self.queries.items()}}


def _above(scores: Iterable[ModalityScore], threshold: float) -> bool:
    return any(s.score is not None and s.score > threshold for s in scores)


def recent_doc_ids(manifest: Any, physical: str, n: int) -> list[str]:
    """The ``n`` most recently updated indexed documents of ``physical`` (newest first)."""
    return list(manifest.recent(physical, "done", int(n)))


def recent_vectors(kb: Any, doc_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """At most :data:`SAMPLE` vectors per modality of these documents' records."""
    out = {m: store.embeddings_of(list(doc_ids), SAMPLE) for m, store in _halves(kb).items()}
    parts = [out[m] for m in ("clip-text", "clip-image") if len(out[m])]
    out["clip"] = np.concatenate(parts) if parts else np.zeros((0, 0))
    return out


def score(kb: Any, *, recent: int = 500, queries: "QueryLog | None" = None,
          threshold: float = THRESHOLD, label: str | None = None) -> DriftReport:
    """Compare ``kb``'s most recently updated documents, and its recent queries, with its reference.

    Args:
        kb: the knowledge base of one physical collection (a version).
        recent: how many of the most recently updated documents to compare.
        queries: where recent query vectors are kept (default: the files a server writes under
            ``DATA_DIR/drift``).
        threshold: the score above which a modality counts as drifted.
        label: the version's label (``kb@N``) for the report; default the collection's name.

    Raises:
        NotFoundError: the collection has no reference yet.
        StoreError: a store could not be read.
    """
    if recent < 1:
        raise InvalidInputError(f"recent must be >= 1, got {recent}")
    refs = load(kb.manifest, kb.collection)
    if not refs:
        raise NotFoundError(f"collection {kb.collection!r} has no drift reference yet (one is built when it is "
                            f"first ingested); `mmrag drift {kb.collection} --rebuild` builds one from what it holds")
    ids = recent_doc_ids(kb.manifest, kb.collection, recent)
    vectors = recent_vectors(kb, ids) if ids else {}
    log_ = queries if queries is not None else QueryLog(kb.data_dir)
    docs = {m: compare(ref, vectors.get(m, np.zeros((0, 0)))) for m, ref in refs.items()}
    asked = {m: compare(ref, log_.recent(kb.collection, m)) for m, ref in refs.items()}
    created = min((r.created_at for r in refs.values()), default=0.0)
    return DriftReport(kb.collection, label or kb.collection, threshold, docs,
                       {m: s for m, s in asked.items() if s.n_recent}, len(ids), created)


# -- recent queries ----------------------------------------------------------------------------
class QueryLog:
    """The last :data:`QUERY_CAPACITY` query vectors per (physical collection, space), in memory and on disk.

    The server's search path calls :meth:`record` (O(1): one row copied into a ring buffer). Every
    :data:`PERSIST_SECONDS` at most, a buffer is also written to ``DATA_DIR/drift/<collection>-<space>.npy``
    (replaced atomically), so ``mmrag drift`` in another process reads what the server saw.

    Args:
        data_dir: the data directory.
        capacity: vectors kept per buffer.
        persist_seconds: the least time between two writes of one buffer.
    """

    #: The spaces a query is embedded in; ``clip`` is read as both CLIP ones together.
    SPACES = ("text", "clip-text", "clip-image")

    def __init__(self, data_dir: Path, *, capacity: int = QUERY_CAPACITY,
                 persist_seconds: float = PERSIST_SECONDS) -> None:
        self.folder = Path(data_dir) / "drift"
        self.capacity = capacity
        self.persist_seconds = persist_seconds
        self._lock = threading.Lock()
        # (collection, space) -> [ring, next slot, filled, last written]
        self._rings: dict[tuple[str, str], list[Any]] = {}

    def record(self, collection: str, space: str, vector: Any) -> None:
        """Remember one query vector (never raises: a failed write is logged)."""
        vec = np.asarray(vector, dtype=np.float32).ravel()
        key = (collection, space)
        with self._lock:
            ring = self._rings.get(key)
            if ring is None or ring[0].shape[1] != len(vec):
                ring = self._rings[key] = [np.zeros((self.capacity, len(vec)), np.float32), 0, 0, time.monotonic()]
            ring[0][ring[1]] = vec
            ring[1] = (ring[1] + 1) % self.capacity
            ring[2] = min(ring[2] + 1, self.capacity)
            due = time.monotonic() - ring[3] >= self.persist_seconds
            if due:
                ring[3] = time.monotonic()
                snapshot = self._ordered(ring)
        if due:
            self._write(key, snapshot)

    def flush(self) -> None:
        """Write every buffer now."""
        with self._lock:
            snapshots = {key: self._ordered(ring) for key, ring in self._rings.items()}
        for key, snap in snapshots.items():
            self._write(key, snap)

    def recent(self, collection: str, modality: str) -> np.ndarray:
        """The recent query vectors of ``collection`` in ``modality`` (this process's, else the last written)."""
        spaces = ("clip-text", "clip-image") if modality == "clip" else (modality,)
        parts = [p for p in (self._recent(collection, s) for s in spaces) if len(p)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def _recent(self, collection: str, space: str) -> np.ndarray:
        with self._lock:
            ring = self._rings.get((collection, space))
            if ring is not None:
                return self._ordered(ring)
        path = self._path((collection, space))
        try:
            return np.load(path, allow_pickle=False)  # type: ignore[no-any-return]
        except FileNotFoundError:
            return np.zeros((0, 0), np.float32)
        except (OSError, ValueError) as exc:
            log.warning("cannot read recent queries %s (%s); ignoring them", path, exc)
            return np.zeros((0, 0), np.float32)

    @staticmethod
    def _ordered(ring: list[Any]) -> np.ndarray:
        buf, nxt, filled = ring[0], ring[1], ring[2]
        if filled < len(buf):
            return buf[:filled].copy()  # type: ignore[no-any-return]
        return np.concatenate([buf[nxt:], buf[:nxt]])

    def _path(self, key: tuple[str, str]) -> Path:
        return self.folder / f"{key[0]}-{key[1]}.npy"

    def _write(self, key: tuple[str, str], vectors: np.ndarray) -> None:
        path = self._path(key)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.npy")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            np.save(tmp, vectors, allow_pickle=False)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write recent queries to %s: %s", path, exc)
            tmp.unlink(missing_ok=True)


# -- cached scores (for /metrics) ----------------------------------------------------------------
class ScoreCache:
    """Drift scores of every collection, refreshed in the background at most every ``every`` seconds.

    A scrape reads :meth:`current` (no I/O); when the figures are older than ``every``, it also
    starts one refresh thread, so the next scrape sees new ones.

    Args:
        refresh: computes the reports: a callable returning ``{physical: DriftReport}``.
        every: seconds between refreshes.
    """

    def __init__(self, refresh: Any, every: float = 60.0) -> None:
        self._refresh = refresh
        self.every = every
        self._reports: dict[str, DriftReport] = {}
        self._at = -math.inf
        self._running = threading.Lock()

    def current(self) -> dict[str, DriftReport]:
        """The last computed reports (starting a refresh when they are stale)."""
        if time.monotonic() - self._at >= self.every and self._running.acquire(blocking=False):
            self._at = time.monotonic()
            threading.Thread(target=self._run, name="mmrag-drift-refresh", daemon=True).start()
        return dict(self._reports)

    def _run(self) -> None:
        try:
            self._reports = dict(self._refresh())
        except Exception:  # noqa: BLE001 - a background diagnostic must not die silently, nor raise
            log.warning("drift scores could not be refreshed", exc_info=True)
        finally:
            self._running.release()


def score_all(kbs: Iterable[tuple[Any, str]], *, recent: int, threshold: float,
              queries: "QueryLog | None" = None) -> dict[str, DriftReport]:
    """Reports for several ``(kb, label)`` pairs; collections without a reference (or unreadable) are left out."""
    out = {}
    for kb, label in kbs:
        try:
            out[kb.collection] = score(kb, recent=recent, queries=queries, threshold=threshold, label=label)
        except NotFoundError:
            continue
        except MmragError:
            log.warning("drift of collection %r unavailable", kb.collection, exc_info=True)
    return out
