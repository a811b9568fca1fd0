"""Evaluation datasets: one JSONL line per query.

Each line is ``{"id": ..., "query": "text"}`` and/or ``{"query_image": "path"}`` plus
``"relevant": [doc ids]`` and, optionally, ``"reference": "a reference answer"``. A line with
``"answerable": false`` is a question the corpus cannot answer (its ``relevant`` may be empty): the
right answer is an abstention, and it is left out of the rank metrics. Image paths are relative to
the dataset file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mmrag.errors import InvalidInputError
from mmrag.jsonlines import read_objects


@dataclass(frozen=True)
class EvalQuery:
    """One dataset line: a text and/or image query, its relevant doc ids, an optional reference answer."""

    id: str
    relevant: frozenset[str]
    text: str | None = None
    image: str | None = None
    reference: str | None = None
    answerable: bool = True


def load_dataset(path: Path) -> list[EvalQuery]:
    """Read and validate an evaluation dataset.

    Args:
        path: a JSONL file (see the module docstring for the fields).

    Returns:
        The queries, in file order.

    Raises:
        NotFoundError: the file does not exist.
        InvalidInputError: a line is not valid; the message names the file and line.
    """
    path = Path(path)
    out = []
    seen: set[str] = set()
    for n, where, row in read_objects(path):
        text, image = row.get("query"), row.get("query_image")
        if not text and not image:
            raise InvalidInputError(f"{where}: needs a 'query' (text) or 'query_image' (path)")
        answerable = row.get("answerable", True)
        if not isinstance(answerable, bool):
            raise InvalidInputError(f"{where}: 'answerable' must be true or false")
        rel = row.get("relevant", [] if not answerable else None)
        if not isinstance(rel, list) or (answerable and not rel):
            raise InvalidInputError(f"{where}: 'relevant' must be a non-empty list of doc ids")
        reference = row.get("reference")
        if reference is not None and not isinstance(reference, str):
            raise InvalidInputError(f"{where}: 'reference' must be a string (a reference answer)")
        if image:
            image = os.path.abspath(path.parent / image)
        qid = str(row.get("id", n))
        if qid in seen:
            # compare matches queries across runs by id: a duplicate would make that ambiguous.
            raise InvalidInputError(f"{where}: duplicate id {qid!r}")
        seen.add(qid)
        out.append(EvalQuery(id=qid, relevant=frozenset(map(str, rel)), text=text, image=image,
                             reference=reference or None, answerable=answerable))
    if not out:
        raise InvalidInputError(f"{path}: no queries")
    return out
