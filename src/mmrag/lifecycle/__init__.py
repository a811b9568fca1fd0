"""The index lifecycle: versions behind an alias, canary-gated promotion, probes, drift, snapshots, doctor.

* :mod:`mmrag.lifecycle.versions`: versioned collections and the alias (the seam the rest builds on).
* :mod:`mmrag.lifecycle.reindex`: build a new version from the live one's sources.
* :mod:`mmrag.lifecycle.probes`: synthetic queries with the documents they must find (recall SLIs).
* :mod:`mmrag.lifecycle.canary`: the gate a promote passes (probes and evaluation against the live version).
* :mod:`mmrag.lifecycle.drift`: a compact reference of each version's embedding distribution, and a score.
* :mod:`mmrag.lifecycle.snapshots`: consistent, checksummed snapshots and their restore.
* :mod:`mmrag.lifecycle.doctor`: manifest, Chroma and keyword index checked against each other.
"""
