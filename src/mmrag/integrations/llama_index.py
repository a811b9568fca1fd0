"""A LlamaIndex retriever over mmrag: text chunks as ``TextNode``, images as ``ImageNode``.

Example:
    >>> from llama_index.core.query_engine import RetrieverQueryEngine
    >>> from mmrag.integrations.llama_index import MmragRetriever
    >>> retriever = MmragRetriever(url="http://127.0.0.1:8080", api_key="mmrag_...", collection="docs")
    >>> engine = RetrieverQueryEngine.from_args(retriever, llm=my_llm)        # doctest: +SKIP
    >>> engine.query("When does the building close?").source_nodes          # doctest: +SKIP
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Mapping

from mmrag.errors import MissingDependencyError
from mmrag.images import sniff_mime
from mmrag.integrations._source import FoundHit, HitSource

try:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.schema import ImageNode, NodeRelationship, NodeWithScore, QueryBundle, RelatedNodeInfo, TextNode
except ImportError as exc:  # pragma: no cover - llama-index-core is a core dependency today
    raise MissingDependencyError(f"mmrag.integrations.llama_index needs llama-index-core: "
                                 f"pip install llama-index-core ({exc})") from exc


#: Metadata keys a node shows the LLM.
_SHOWN = ("doc_id", "source", "page", "modality")


class MmragRetriever(BaseRetriever):
    """Retrieve from an mmrag knowledge base, locally or from a server.

    Args:
        kb: a :class:`~mmrag.kb.KnowledgeBase` (local mode).
        url: an ``mmrag serve`` base URL (remote mode), with ``api_key`` (a ``read`` key).
        collection: the server's collection to search (remote mode; default the server's).
        k: hits per query.
        retriever: ``hybrid`` (default), ``clip``, ``text`` or ``bm25``.
        modality: ``all``, ``text`` or ``image``.
        filters: as the API's ``filters`` (source_prefix, doc_type, page, metadata).
        images: attach each image hit's pixels to its node (base64 ``image``); else only its
            path (local) or URL (remote).
        timeout: seconds per remote request.
        **kwargs: passed to LlamaIndex's ``BaseRetriever`` (``callback_manager``, ``verbose``).

    A ``QueryBundle`` with ``image_path`` searches by that image (and its text, if any).

    Raises:
        InvalidInputError: neither or both of ``kb`` and ``url``; bad search arguments.
        UnauthorizedError, ForbiddenError, NotFoundError, UpstreamError: the server refused or failed.
    """

    def __init__(self, kb: Any = None, *, url: str | None = None, api_key: str | None = None,
                 collection: str | None = None, k: int = 5, retriever: str = "hybrid", modality: str = "all",
                 filters: Mapping[str, Any] | None = None, images: bool = True, timeout: float = 60.0,
                 **kwargs: Any) -> None:
        self.source = HitSource(kb, url=url, api_key=api_key, collection=collection, timeout=timeout)
        self.k, self.retriever, self.modality, self.filters, self.images = k, retriever, modality, filters, images
        super().__init__(**kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        image = Path(query_bundle.image_path).read_bytes() if query_bundle.image_path else None
        found = self.source.search(query_bundle.query_str, image=image, k=self.k, retriever=self.retriever,
                                   modality=self.modality, filters=self.filters)
        return [NodeWithScore(node=self._node(f), score=f.score) for f in found]

    def _node(self, found: FoundHit) -> TextNode:
        meta = found.describe()
        relationships = {NodeRelationship.SOURCE: RelatedNodeInfo(node_id=found.doc_id)}
        # The LLM and any re-embedding see where a chunk is from, not mmrag's bookkeeping (offsets, hashes).
        hidden = [k for k in meta if k not in _SHOWN]
        common: dict[str, Any] = {"id_": found.id, "text": found.text or "", "metadata": meta,
                                  "relationships": relationships, "excluded_llm_metadata_keys": hidden,
                                  "excluded_embed_metadata_keys": hidden}
        if found.modality != "image":
            return TextNode(**common)
        data = self.source.image_bytes(found) if self.images else None
        local = found.hit is not None and meta.get("doc_type") == "image"
        return ImageNode(**common, image=base64.b64encode(data).decode("ascii") if data else None,
                         image_mimetype=sniff_mime(data) if data else None,
                         image_path=found.source if local else None, image_url=found.image_url)
