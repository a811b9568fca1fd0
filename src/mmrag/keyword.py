"""Keyword analysis shared by every keyword index: BM25's tokens, and the ``where`` filters it accepts.

Tokens are bm25s's: Unicode words of two or more characters, lowercased, English stopwords out,
Snowball-stemmed by :func:`mmrag.textanalysis.stem_words` (the stemmer the answer checks use). A
chunk's document title is indexed in front of its text unless the chunk already opens with it, as BEIR's BM25 indexes title + text: only a document's first chunk
holds the title, and without it a later chunk of "Aspirin and stroke" no longer matches "aspirin"
(measured on SciFact train: nDCG@10 0.686 -> 0.689 alone, and +0.006 in the hybrid fusion).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any, Mapping, Sequence

from mmrag.errors import InvalidInputError, MissingDependencyError
from mmrag.textanalysis import stem_words


@lru_cache(maxsize=1)
def _bm25s() -> Any:
    try:
        import bm25s
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependencyError("bm25s is required for keyword analysis: pip install mmrag") from exc
    # bm25s sets its own logger to DEBUG at import time, overriding the application's choice.
    if logging.getLogger("bm25s").level == logging.DEBUG:
        logging.getLogger("bm25s").setLevel(logging.NOTSET)
    return bm25s


def with_title(text: str, title: Any) -> str:
    """``title`` + text, unless the chunk already opens with its title (a first chunk, or "# Title")."""
    if not isinstance(title, str) or not title.strip() or title.strip() in text[: len(title) + 16]:
        return text
    return f"{title.strip()}\n\n{text}"


def analyze(text: str, title: Any = None) -> list[str]:
    """The BM25 tokens of ``text`` (with ``title`` in front, see the module docstring).

    Example:
        >>> analyze("The cells were dividing")
        ['cell', 'were', 'divid']
    """
    return analyze_many([text], [title])[0]


def analyze_many(texts: Sequence[str], titles: Sequence[Any]) -> list[list[str]]:
    """:func:`analyze` for a batch: one tokenizer call (40x faster than one call per text)."""
    if not texts:
        return []
    tokens = _bm25s().tokenize([with_title(t, title) for t, title in zip(texts, titles)], stopwords="en",
                               stemmer=stem_words, show_progress=False, return_ids=False)
    return [list(t) for t in tokens]


_OPERATORS = ("$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte")
#: Conditions (metadata keys compared) one filter may hold. Chroma's SQLite turns each into a level
#: of one expression tree and fails past 1,000 levels (a 503 for what is the client's mistake).
MAX_WHERE_CONDITIONS = 256
#: Conditions the indexes themselves take: a caller's filter plus its access clause (one per label
#: it holds, plus one for unlabelled documents; :mod:`mmrag.security.labels`), which the search adds
#: after checking the caller's part against :data:`MAX_WHERE_CONDITIONS`. Still far below 1,000.
MAX_INDEX_CONDITIONS = MAX_WHERE_CONDITIONS + 1 + 200
#: ``$and``/``$or`` nesting a filter may hold (a checker that recursed died at 1,000 levels).
MAX_WHERE_DEPTH = 32
#: The integers every index stores: tantivy refuses anything outside int64 with a ValueError.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_where(where: Mapping[str, Any], limit: int = MAX_WHERE_CONDITIONS) -> None:
    """Refuse a ``where`` that an index could not evaluate as Chroma would (so no index disagrees).

    Checked without recursion, so a hostile filter costs one pass over it whatever its shape:
    at most :data:`MAX_WHERE_DEPTH` levels of ``$and``/``$or``, :data:`MAX_WHERE_CONDITIONS`
    conditions, and integers within int64 (:func:`check_where_bounds`), besides the operators.

    Raises:
        InvalidInputError: an unknown operator, a malformed clause, or a filter over those limits.
    """
    _walk(where, strict=True, limit=limit)


def check_where_bounds(where: Mapping[str, Any], limit: int = MAX_WHERE_CONDITIONS) -> None:
    """Refuse only a ``where`` over the limits every index can take (nesting, conditions, int64).

    What a store's own validation refuses is left to it (the Chroma store reports that as its
    error); these limits are what a store fails on with an unrelated error or not at all.

    Raises:
        InvalidInputError: a filter nested too deeply, with too many conditions, or an integer
            outside int64.
    """
    _walk(where, strict=False, limit=limit)


def _walk(where: Any, *, strict: bool, limit: int = MAX_WHERE_CONDITIONS) -> None:
    stack: list[tuple[Any, str, int]] = [(where, "where", 1)]
    conditions = 0
    while stack:
        node, at, depth = stack.pop()
        if not isinstance(node, Mapping):
            if strict:
                raise InvalidInputError(f"{at} must be a mapping (a Chroma metadata filter)")
            continue
        if depth > MAX_WHERE_DEPTH:
            raise InvalidInputError(f"where: a filter nests at most {MAX_WHERE_DEPTH} levels of $and/$or; flatten it")
        for key, cond in node.items():
            if not isinstance(key, str):
                if strict:
                    raise InvalidInputError(f"{at}: keys must be strings, got {key!r}")
                continue
            if key in ("$and", "$or"):
                if not isinstance(cond, (list, tuple)) or not cond:
                    if strict:
                        raise InvalidInputError(f"{at}.{key} must be a non-empty list of filters")
                    continue
                stack.extend((part, f"{at}.{key}[{n}]", depth + 1) for n, part in enumerate(cond))
                continue
            if key.startswith("$"):
                if strict:
                    raise InvalidInputError(f"{at}: unknown operator {key!r}. Known: $and, $or")
                continue
            conditions += 1
            if conditions > limit:
                raise InvalidInputError(f"where: a filter (filters.metadata and where together) compares at most "
                                        f"{MAX_WHERE_CONDITIONS} metadata keys; narrow it")
            if not isinstance(cond, Mapping):
                _check_value(f"{at}.{key}", cond)
            elif strict:
                if len(cond) != 1 or next(iter(cond)) not in _OPERATORS:
                    raise InvalidInputError(f"{at}.{key}: one operator of {', '.join(_OPERATORS)}, got {dict(cond)!r}")
                _check_operand(f"{at}.{key}", *next(iter(cond.items())))
            else:
                for op, arg in cond.items():
                    for value in arg if isinstance(arg, (list, tuple)) else [arg]:
                        _check_value(f"{at}.{key}.{op}", value)


def _check_value(at: str, value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        raise InvalidInputError(f"{at}: the integer {value} is outside the 64-bit range the indexes store "
                                f"({INT64_MIN} to {INT64_MAX})")


def _check_operand(at: str, op: str, arg: Any) -> None:
    # Chroma refuses these (a 400 from every index, rather than BM25 answering what Chroma refuses).
    if op in ("$in", "$nin"):
        if not isinstance(arg, (list, tuple)) or not arg:
            raise InvalidInputError(f"{at}.{op} must be a non-empty list")
        if len({type(a) for a in arg}) > 1:
            raise InvalidInputError(f"{at}.{op}: all values must have one type, got {list(arg)!r}")
        for value in arg:
            _check_value(f"{at}.{op}", value)
        return
    if op in ("$gt", "$gte", "$lt", "$lte") and (isinstance(arg, bool) or not isinstance(arg, (int, float))):
        raise InvalidInputError(f"{at}.{op} compares numbers only, got {arg!r}")
    _check_value(f"{at}.{op}", arg)
