"""mmrag inside other frameworks: retrievers for LlamaIndex and LangChain.

- :class:`mmrag.integrations.llama_index.MmragRetriever`: a LlamaIndex ``BaseRetriever``
  (``NodeWithScore`` over ``TextNode`` / ``ImageNode``), usable in a ``RetrieverQueryEngine``.
- :class:`mmrag.integrations.langchain.MmragRetriever`: a LangChain ``BaseRetriever`` (``Document``\\ s).

Each works locally, on a :class:`~mmrag.kb.KnowledgeBase`, or remotely, on ``mmrag serve`` with
a URL and an API key. The submodules import their framework, so import the one you use.
"""
