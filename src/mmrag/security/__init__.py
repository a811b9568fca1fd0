"""Per-document access: labels on documents, the groups a caller holds, and the store filter between them.

* :mod:`mmrag.security.labels`: labels (``group:finance``, ``user:alice``), :class:`Caller`, and
  :func:`access_where`, the Chroma ``where`` every index evaluates inside its query.
* :mod:`mmrag.security.rules`: where a document's labels come from at ingest (``--access``, a
  ``.mmrag-access`` file in a folder, a JSONL ``access`` field) and the manifest table that keeps them.
* :mod:`mmrag.security.tokens`: callers from a JWT signed by a trusted identity provider.
* :mod:`mmrag.security.relabel`: changing a document's labels (a metadata write, never a re-embed).
"""

from typing import TYPE_CHECKING, Any

from mmrag.security.labels import Caller, NoAccess, access_where, can_read, parse_labels

if TYPE_CHECKING:
    from mmrag.kb import KnowledgeBase

__all__ = ["Caller", "NoAccess", "access_where", "can_read", "parse_labels", "set_labels"]


def set_labels(kb: "KnowledgeBase", doc_id: str, labels: Any) -> dict[str, object]:
    """Give document ``doc_id`` exactly ``labels`` in every index: a metadata write, never a re-embed.

    See :func:`mmrag.security.relabel.set_labels` (imported lazily: it needs the knowledge base).

    Example:
        >>> set_labels(kb, "hr/salaries.pdf", ["group:hr"])  # doctest: +SKIP
        {'doc_id': 'hr/salaries.pdf', 'labels': ['group:hr'], 'records': 12}
    """
    from mmrag.security.relabel import set_labels as relabel

    return relabel(kb, doc_id, labels)
