"""Vector store backends: ``chroma`` (the product) and ``memory`` (:class:`~mmrag.stores.memory.InMemoryStore`, a test fake).

The fake is never a default and never a fallback: nothing in the product builds one.
"""
