"""BM25 keyword index over prose chunks (bm25s, English stopwords, Snowball stemming).

The index is derived data: it is rebuilt from the text collection whenever that changes, so it
can never drift from the vector indexes, and a missing or half-written one is simply rebuilt.
It is saved to a temporary folder and swapped into place, so readers never see a partial index.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

from mmrag.errors import MissingDependencyError, StoreError
from mmrag.types import Hit

META_FILE = "mmrag_rows.json"


def _stemmer() -> Any:
    try:
        import Stemmer

        return Stemmer.Stemmer("english").stemWords
    except ImportError:  # PyStemmer is optional: unstemmed BM25 still works, a little worse
        return None


def _bm25s() -> Any:
    try:
        import bm25s
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependencyError("bm25s is required for the keyword index: pip install mmrag") from exc
    # bm25s sets its own logger to DEBUG at import time, overriding the application's choice.
    if logging.getLogger("bm25s").level == logging.DEBUG:
        logging.getLogger("bm25s").setLevel(logging.NOTSET)
    return bm25s


class KeywordIndex:
    """A BM25 index whose rows are ``(record id, metadata)`` of text chunks."""

    def __init__(self, retriever: Any, rows: list[dict[str, Any]]) -> None:
        self._retriever = retriever
        self._rows = rows
        self._stem = _stemmer()

    def __len__(self) -> int:
        return len(self._rows)

    @classmethod
    def build(cls, ids: Sequence[str], texts: Sequence[str], metas: Sequence[dict[str, Any]]) -> "KeywordIndex":
        """Index chunk texts."""
        bm25s = _bm25s()
        rows = [{"id": i, **m} for i, m in zip(ids, metas)]
        if not texts:
            return cls(None, [])
        tokens = bm25s.tokenize(list(texts), stopwords="en", stemmer=_stemmer(), show_progress=False)
        retriever = bm25s.BM25()
        retriever.index(tokens, show_progress=False)
        return cls(retriever, rows)

    def save(self, folder: Path) -> None:
        """Write the index to ``folder`` atomically (temp folder, then rename)."""
        tmp = folder.with_name(folder.name + ".tmp")
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            if self._retriever is not None:
                self._retriever.save(str(tmp), show_progress=False)
            (tmp / META_FILE).write_text(json.dumps(self._rows))
            shutil.rmtree(old, ignore_errors=True)
            if folder.exists():
                folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            raise StoreError(f"Cannot save the keyword index to {folder}: {exc}") from exc

    @classmethod
    def load(cls, folder: Path) -> "KeywordIndex | None":
        """Load a saved index, or None if there is none (or only a partial one)."""
        meta = folder / META_FILE
        if not meta.is_file():
            return None
        try:
            rows = json.loads(meta.read_text())
            retriever = _bm25s().BM25.load(str(folder), show_progress=False) if rows else None
        except (OSError, ValueError) as exc:
            raise StoreError(f"The keyword index in {folder} is unreadable ({exc}); rerun `mmrag ingest` to rebuild it") from exc
        return cls(retriever, rows)

    def query(self, text: str, k: int) -> list[Hit]:
        """Top ``k`` chunks by BM25 score (only chunks that share a term with the query)."""
        if self._retriever is None or k <= 0:
            return []
        bm25s = _bm25s()
        tokens = bm25s.tokenize([text], stopwords="en", stemmer=self._stem, show_progress=False, return_ids=False)
        vocab = self._retriever.vocab_dict
        known = [[t for t in tokens[0] if t in vocab]]
        if not known[0]:
            return []
        docs, scores = self._retriever.retrieve(known, k=min(k, len(self._rows)), show_progress=False, n_threads=1)
        hits = []
        for idx, score in zip(docs[0], scores[0]):
            if score <= 0:
                continue
            row = self._rows[int(idx)]
            page = row.get("page")
            hits.append(Hit(id=row["id"], doc_id=row.get("doc_id", row["id"]), source=row.get("source", ""),
                            modality="text", score=float(score), page=page if isinstance(page, int) else None,
                            text=row.get("text"), metadata={k2: v for k2, v in row.items() if k2 not in {"id", "text"}}))
        return hits
