"""Vector store backends: ``chroma`` (the product) and ``memory`` (a test fake)."""
