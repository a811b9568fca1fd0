"""Search filters: the metadata a hit must match, checked on every index before its top k.

:class:`SearchFilter` is what a caller writes (CLI options, the API's ``filters`` object); its
:meth:`~SearchFilter.where` is the Chroma ``where`` the vector stores take and the keyword index
translates (:func:`mmrag.stores.tantivy.where_query`). ``source_prefix`` has no Chroma operator:
:class:`mmrag.retrieval.Searcher` turns it into a ``doc_id $in`` list or checks it on the hits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from mmrag.errors import InvalidInputError
from mmrag.loaders._common import DOC_TYPES
from mmrag.types import MetaValue

FILTER_FIELDS = ("source_prefix", "doc_type", "page", "metadata")


@dataclass(frozen=True)
class SearchFilter:
    """Metadata filters; a hit must match every field that is set.

    Args:
        source_prefix: the hit's source path (absolute, as ingested) starts with this.
        doc_type: the document type (``txt``, ``markdown``, ``html``, ``pdf``, ``docx``, ``pptx``,
            ``image``, ``jsonl``); a file suffix such as ``md`` or ``jpg`` is accepted for its type.
        page: the 1-based page or slide number.
        metadata: equality on any ingested metadata key (e.g. ``{"title": "..."}`` or a JSONL field).

    Raises:
        InvalidInputError: a field has the wrong type or value; the message names the field.

    Example:
        >>> SearchFilter(doc_type="md", metadata={"lang": "en"}).doc_type
        'markdown'
    """

    source_prefix: str | None = None
    doc_type: str | None = None
    page: int | None = None
    metadata: Mapping[str, MetaValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source_prefix is not None and (not isinstance(self.source_prefix, str) or not self.source_prefix):
            raise InvalidInputError(f"filters.source_prefix must be a non-empty string, got {self.source_prefix!r}")
        if self.doc_type is not None:
            object.__setattr__(self, "doc_type", _doc_type(self.doc_type))
        if self.page is not None and (isinstance(self.page, bool) or not isinstance(self.page, int) or self.page < 1):
            raise InvalidInputError(f"filters.page must be a whole number >= 1, got {self.page!r}")
        if not isinstance(self.metadata, Mapping):
            raise InvalidInputError("filters.metadata must be a mapping of metadata key to a string, number or boolean")
        meta: dict[str, MetaValue] = {}
        for key, value in self.metadata.items():
            if not isinstance(key, str) or not key or key.startswith("$"):
                raise InvalidInputError(f"filters.metadata: invalid key {key!r} (a non-empty name not starting with '$')")
            if not isinstance(value, (str, int, float, bool)) or (isinstance(value, float) and not math.isfinite(value)):
                raise InvalidInputError(f"filters.metadata.{key} must be a string, number or boolean, got {value!r}")
            meta[key] = value
        object.__setattr__(self, "metadata", MappingProxyType(meta))

    def __hash__(self) -> int:
        return hash((self.source_prefix, self.doc_type, self.page, tuple(sorted(self.metadata.items(), key=lambda kv: kv[0]))))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "SearchFilter":
        """Build from a plain mapping (JSON), refusing unknown keys.

        Raises:
            InvalidInputError: an unknown key, or a field of the wrong type.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise InvalidInputError(f"filters must be an object with keys {', '.join(FILTER_FIELDS)}")
        unknown = sorted(str(k) for k in data if k not in FILTER_FIELDS)
        if unknown:
            raise InvalidInputError(f"Unknown filter field {unknown[0]!r}. Known: {', '.join(FILTER_FIELDS)}")
        return cls(**{str(k): v for k, v in data.items() if v is not None})

    @property
    def is_empty(self) -> bool:
        """True when no field is set."""
        return self.source_prefix is None and self.doc_type is None and self.page is None and not self.metadata

    def where(self) -> dict[str, Any] | None:
        """The Chroma ``where`` of every field but ``source_prefix`` (Chroma has no prefix operator)."""
        clauses: list[dict[str, Any]] = [{key: value} for key, value in self.metadata.items()]
        if self.doc_type is not None:
            clauses.append({"doc_type": self.doc_type})
        if self.page is not None:
            clauses.append({"page": self.page})
        return and_where(*clauses)


def and_where(*filters: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """AND Chroma ``where`` filters (Chroma accepts exactly one top-level key, hence ``$and``)."""
    parts: list[dict[str, Any]] = []
    for f in filters:
        if not f:
            continue
        if len(f) == 1 and "$and" in f:
            parts.extend(dict(p) for p in f["$and"])
        elif len(f) == 1:
            parts.append(dict(f))
        else:
            parts.extend({key: value} for key, value in f.items())
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"$and": parts}


def _doc_type(value: Any) -> str:
    known = sorted(set(DOC_TYPES.values()))
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"filters.doc_type must be a non-empty string, got {value!r}")
    name = value.strip().lower().lstrip(".")
    if name in known:
        return name
    alias = DOC_TYPES.get("." + name)
    if alias is None:
        raise InvalidInputError(f"filters.doc_type: unknown document type {value!r}. Known: {', '.join(known)} "
                                "(or a file suffix such as md or jpg)")
    return alias
