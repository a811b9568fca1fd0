"""The ``mmrag`` command line. The only place where :class:`MmragError` becomes a ClickException.

One module per group of commands (ingest, query, evaluate, serve, mcp); each registers on :data:`main`.

Exit status: 0 success; 1 error; 2 usage error (an unknown collection included); 3 ingest finished
but some files failed (each is listed with its reason).
"""

from mmrag.cli import (  # noqa: F401  (registers the commands)
    access, audit, catalog, doctor, drift, evaluate, ingest, lifecycle, mcp, probes, query, serve, snapshot,
)
from mmrag.cli._common import EXIT_PARTIAL, main

__all__ = ["EXIT_PARTIAL", "main"]
