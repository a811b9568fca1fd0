"""Reranker backends (:class:`~mmrag.protocols.Reranker`): one module per backend.

* :mod:`~mmrag.rerankers.crossencoder`: a sentence-transformers ``CrossEncoder`` (hub name or local folder);
* :mod:`~mmrag.rerankers.litellm`: any provider of ``litellm.rerank`` (Cohere, Jina, Voyage, ...).

mmrag's own offline reader lives in ``mmrag.reader``. :func:`mmrag.registry.build_reranker` picks
one from a name; nothing here is imported until a reranker is asked for.
"""
