"""A LangChain retriever over mmrag: each hit a ``Document`` (id = record id, ``doc_id`` in metadata).

Example:
    >>> from mmrag.integrations.langchain import MmragRetriever
    >>> retriever = MmragRetriever(url="http://127.0.0.1:8080", api_key="mmrag_...", k=3)
    >>> [d.metadata["doc_id"] for d in retriever.invoke("When does the building close?")]  # doctest: +SKIP
    ['visitor-faq.html', ...]
"""

from __future__ import annotations

from typing import Any

from mmrag.errors import MissingDependencyError
from mmrag.integrations._source import FoundHit, HitSource

try:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from pydantic import ConfigDict, PrivateAttr, SecretStr
except ImportError as exc:
    raise MissingDependencyError("mmrag.integrations.langchain needs langchain-core: "
                                 f"pip install 'mmrag[langchain]' ({exc})") from exc


class MmragRetriever(BaseRetriever):
    """Retrieve from an mmrag knowledge base, locally (``kb``) or from a server (``url`` + ``api_key``).

    Fields:
        kb: a :class:`~mmrag.kb.KnowledgeBase` (local mode).
        url: an ``mmrag serve`` base URL (remote mode); ``api_key`` a ``read`` key.
        collection: the server's collection (remote mode; default the server's).
        k, retriever, modality, filters: as ``POST /v1/search`` takes them.
        timeout: seconds per remote request.

    Each ``Document`` has ``id`` = the record id, ``page_content`` = the chunk's text (an image
    hit's description, or ``"[image] <source>"``), and metadata ``doc_id``, ``source``, ``page``,
    ``modality``, ``score`` (and ``image_url`` for a remote image hit).

    Raises:
        InvalidInputError: neither or both of ``kb`` and ``url``; bad search arguments.
        UnauthorizedError, ForbiddenError, NotFoundError, UpstreamError: the server refused or failed.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    kb: Any = None
    url: str | None = None
    api_key: SecretStr | None = None
    collection: str | None = None
    k: int = 5
    retriever: str = "hybrid"
    modality: str = "all"
    filters: dict[str, Any] | None = None
    timeout: float = 60.0
    _source: HitSource = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        """Check the mode and build the hit source once."""
        key = self.api_key.get_secret_value() if self.api_key else None
        self._source = HitSource(self.kb, url=self.url, api_key=key, collection=self.collection, timeout=self.timeout)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        found = self._source.search(query, k=self.k, retriever=self.retriever, modality=self.modality,
                                    filters=self.filters)
        return [_document(f) for f in found]


def _document(found: FoundHit) -> Document:
    text = found.text or (f"[image] {found.source}" if found.modality == "image" else "")
    return Document(id=found.id, page_content=text, metadata=found.describe())
