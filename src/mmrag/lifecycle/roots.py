"""Where doctor's repair and reindex may read sources: under the roots a collection was ingested from.

A manifest row's ``source`` is a path that repair and reindex open and ingest. Rows written by an
ingest name files under the paths that ingest was given, which :meth:`Manifest.add_roots
<mmrag.manifest.Manifest.add_roots>` records; rows restored from a snapshot come from the
snapshot's author, who could name any file on this machine (``/etc/passwd``), and a repair would
then make its contents searchable by any read key. :func:`outside_roots` is the one check both
callers make: a source is read only when it lies under a root recorded for the collection's
knowledge base (shared by its versions: a reindex builds ``kb--v2`` from ``kb``'s sources), unless
the caller says otherwise (``--allow-source-outside-roots``).

Paths are compared after :func:`os.path.normpath`, not :func:`os.path.realpath`: an ingest keeps a
symlinked file's path under its root (it does not resolve links), and a planted row cannot create
a link on this machine, only name a path, so ``..`` is what must be taken out.

Object URLs (``s3://bucket/prefix``, :mod:`mmrag.sources`) are roots and sources too: a URL source
is read only under a URL root of the same scheme and bucket, a local one only under a local root,
and a URL with a ``.`` or ``..`` part is never read (a server may resolve them out of the prefix).
"""

from __future__ import annotations

import os
from typing import Iterable

from mmrag.errors import InvalidInputError
from mmrag.manifest import Manifest
from mmrag.sources import is_url, normalize_url

#: The flag that lets repair and reindex read sources outside the roots.
FLAG = "--allow-source-outside-roots"
#: Example sources named in a refusal.
EXAMPLES = 3


def allowed_roots(manifest: Manifest, collection: str) -> set[str]:
    """The roots ``collection`` may read sources under: its knowledge base's, shared by every version.

    Args:
        manifest: the data dir's manifest.
        collection: a physical collection (``kb`` or ``kb--vN``).
    """
    return {r if is_url(r) else os.path.normpath(r) for r in manifest.roots(collection)}


def inside(source: str, roots: set[str]) -> bool:
    """Whether ``source`` is one of ``roots`` or lies under one (an ancestor lookup, not a scan of roots)."""
    if is_url(source):
        return _url_inside(source, roots)
    path = os.path.normpath(source)
    if not os.path.isabs(path):
        return False  # an ingest records absolute sources; a relative one resolves against the cwd
    while True:
        if path in roots:
            return True
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent


def _url_inside(source: str, roots: set[str]) -> bool:
    try:
        url = normalize_url(source)
    except InvalidInputError:
        return False  # a "." or ".." part
    while "://" in url:
        if url in roots:
            return True
        url = url.rpartition("/")[0]
    return False


def outside_roots(manifest: Manifest, collection: str, sources: Iterable[str], *,
                  allow_outside: bool = False) -> list[str]:
    """The sources of ``collection`` that repair and reindex must not read, in the order given.

    This is the one confinement check: :func:`mmrag.lifecycle.doctor.repair` leaves these
    documents unrepaired and :func:`mmrag.lifecycle.reindex.reindex` refuses to build from them.

    Args:
        manifest: the data dir's manifest.
        collection: the physical collection whose rows name ``sources``.
        sources: manifest ``source`` paths.
        allow_outside: the caller trusts every source (``--allow-source-outside-roots``): none is refused.

    Returns:
        The sources outside every allowed root (empty when ``allow_outside``).
    """
    if allow_outside:
        return []
    roots = allowed_roots(manifest, collection)
    return [s for s in sources if not inside(s, roots)]


def reason(manifest: Manifest, collection: str) -> str:
    """Why a source outside the roots was not read, and what to do (for a finding or an error)."""
    roots = sorted(allowed_roots(manifest, collection))
    listed = ", ".join(roots[:EXAMPLES]) + (f" and {len(roots) - EXAMPLES} more" if len(roots) > EXAMPLES else "")
    where = f"the folders it was ingested from ({listed})" if roots else "any folder it was ingested from (none is " \
        "recorded: a restored snapshot's sources are not trusted)"
    return (f"its source lies outside {where}, so it is not read; if you trust this source, rerun with {FLAG}, "
            f"or ingest its folder with `mmrag ingest`")


def refuse_outside(manifest: Manifest, collection: str, sources: Iterable[str], *, allow_outside: bool = False,
                   action: str = "read") -> None:
    """Raise when any of ``sources`` lies outside the roots (see :func:`outside_roots`).

    Raises:
        InvalidInputError: naming how many sources, a few of them, and the flag that allows them.
    """
    refused = outside_roots(manifest, collection, sources, allow_outside=allow_outside)
    if refused:
        more = f" and {len(refused) - EXAMPLES} more" if len(refused) > EXAMPLES else ""
        raise InvalidInputError(f"{action} refused: {len(refused)} document source(s) of {collection!r} "
                                f"({', '.join(refused[:EXAMPLES])}{more}): {reason(manifest, collection)}; or delete "
                                "those documents with `mmrag delete`")
