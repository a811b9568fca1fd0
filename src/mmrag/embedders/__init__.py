"""Embedding backends: one module per backend (``openclip``, ``sentence``; ``hashing`` is a test fake)."""
