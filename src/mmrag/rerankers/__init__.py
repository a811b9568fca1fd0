"""Reranker backends (:class:`~mmrag.protocols.Reranker`): one module per backend.

* :mod:`~mmrag.rerankers.crossencoder`: a sentence-transformers ``CrossEncoder`` (hub name or local folder);
* :mod:`~mmrag.rerankers.litellm`: any provider of ``litellm.rerank`` (Cohere, Jina, Voyage, ...);
* :mod:`~mmrag.rerankers.sentences`: ``offline``, the bundled MiniLM reading each sentence of a hit.

mmrag's trained cross-encoder (the offline reader) lives in ``mmrag.reader``.
:func:`mmrag.registry.build_reranker` picks one from a name; nothing here is imported until a
reranker is asked for.
"""
