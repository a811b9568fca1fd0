"""Per-document access: labels on documents, the groups a caller holds, and the store filter between them.

* :mod:`mmrag.security.labels`: labels (``group:finance``, ``user:alice``), :class:`Caller`, and
  :func:`access_where`, the Chroma ``where`` every index evaluates inside its query.
* :mod:`mmrag.security.rules`: where a document's labels come from at ingest (``--access``, a
  ``.mmrag-access`` file in a folder, a JSONL ``access`` field) and the manifest table that keeps them.
* :mod:`mmrag.security.tokens`: callers from a JWT signed by a trusted identity provider.
* :mod:`mmrag.security.relabel`: changing a document's labels (a metadata write, never a re-embed).
"""

from mmrag.security.labels import Caller, NoAccess, access_where, can_read, parse_labels

__all__ = ["Caller", "NoAccess", "access_where", "can_read", "parse_labels"]
