"""Promote a version behind the canary gate, roll back, prune: what the CLI and the HTTP API share.

Each runs whole under the knowledge base's lifecycle lock (:meth:`Versions.lock`), and reads the
alias under it: a prune that chose its victims before a rollback switched to one of them would
drop the live version (issue 23, finding 1). A promote or rollback first catches the version
going live up with the live one's documents (:func:`~mmrag.lifecycle.reindex.catch_up`), and
writers check the alias under their writer lock (:func:`on_live_version`), so no upload or
delete is lost at a switch.

A promote runs the canary (:mod:`mmrag.lifecycle.canary`: the knowledge base's probes, and its
evaluation dataset when one is configured, on the live version and on the candidate) and switches
the alias only when no metric drops by more than ``lifecycle.canary_budget``. ``force`` switches
anyway; the override and the gate's figures go to the audit log (``events``) and the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from mmrag.config import Settings
from mmrag.errors import CanaryRefusedError, InvalidInputError
from mmrag.kb import KnowledgeBase
from mmrag.lifecycle.reindex import catch_up
from mmrag.lifecycle.versions import Version, Versions

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Switches a writer may meet in a row before it gives up (each one costs it a reopen).
SWITCHES_MET = 20


@dataclass
class PromoteResult:
    """What a promote did."""

    kb_name: str
    previous: Version | None
    live: Version
    canary: Any  # CanaryResult, or None when there was nothing to compare
    forced: bool

    def to_dict(self) -> dict[str, Any]:
        return {"kb": self.kb_name, "previous": self.previous.label if self.previous else None, "live": self.live.label,
                "forced": self.forced, "canary": self.canary.to_dict() if self.canary is not None else None}


def promote(kb_name: str, number: int, *, versions: Versions, open_kb: Callable[[str], KnowledgeBase],
            settings: Settings, force: bool = False) -> PromoteResult:
    """Switch ``kb_name`` to version ``number`` if the canary passes (or ``force``).

    Args:
        kb_name: the knowledge base's name.
        number: the candidate version.
        versions: the data dir's versions.
        open_kb: opens a version by its label ``kb@N``, models attached (the canary searches it).
            Labels, never physical names: version 1's physical name is the knowledge base's own,
            which opens whatever version is live.
        settings: ``lifecycle.canary_budget`` and ``lifecycle.eval_dataset`` are read from it.
        force: switch even when the canary refuses (logged as an override).

    Raises:
        CanaryRefusedError: the candidate is worse than the live version by more than the budget.
        InvalidInputError: the candidate is already live, or not ready.
        NotFoundError: no such version.
    """
    # The canary runs under the lock too: what it compared must still be what the switch replaces.
    with versions.lock(kb_name):
        return _promote(kb_name, number, versions=versions, open_kb=open_kb, settings=settings, force=force)


def _promote(kb_name: str, number: int, *, versions: Versions, open_kb: Callable[[str], KnowledgeBase],
             settings: Settings, force: bool) -> PromoteResult:
    from mmrag.lifecycle.canary import gate
    from mmrag.lifecycle.probes import ProbeStore

    versions.adopt_if_unversioned(kb_name)
    candidate = versions.ready(kb_name, number)
    live_number = versions.live_number(kb_name)
    if live_number == number:
        raise InvalidInputError(f"{candidate.label} is already live")
    previous = versions.get(kb_name, live_number) if live_number is not None else None
    probes = ProbeStore(versions.manifest).list(kb_name)
    target = open_kb(candidate.label)
    result = None
    if previous is not None and (probes or settings.lifecycle.eval_dataset):
        result = gate(open_kb(previous.label), target, probes, settings=settings,
                      eval_dataset=settings.lifecycle.eval_dataset, live_label=previous.label,
                      candidate_label=candidate.label)
        versions.record_figures(candidate.physical, "canary", result.to_dict())
        if not result.passed:
            if not force:
                versions.log(kb_name, "promote-refused", {"to": number, "canary": result.to_dict()})
                raise CanaryRefusedError(
                    f"the canary refused {candidate.label} against {previous.label}:\n{result.render()}\n"
                    f"Fix the candidate (or the probes), raise lifecycle.canary_budget, or pass --force "
                    "(the override is logged)")
            log.warning("promote %s: the canary refused it and --force overrode the gate:\n%s", candidate.label,
                        result.render())
    elif previous is not None:
        log.warning("promote %s: %s has no probes and no evaluation dataset, so there is no canary; add probes "
                    "with `mmrag probes add %s`", candidate.label, kb_name, kb_name)
    _check_servable(target, candidate)
    forced = bool(force and result is not None and not result.passed)
    detail = {"canary": result.to_dict() if result is not None else None}
    switched: list[Version] = []
    catch_up(kb_name, number, versions=versions, open_kb=open_kb, then=lambda: switched.append(
        versions.switch(kb_name, number, reason="promote-forced" if forced else "promote", detail=detail)))
    live = switched[0]
    log.warning("%s now serves %s (was %s)", kb_name, live.label, previous.label if previous else "none")
    return PromoteResult(kb_name, previous, live, result, forced)


def _check_servable(target: KnowledgeBase, candidate: Version) -> None:
    """Refuse a candidate this process's models cannot serve (built with other models), before the switch."""
    from mmrag.errors import EmbedderMismatchError

    try:
        target.clip_store, target.text_store  # identity-checked against the models this process loads
    except EmbedderMismatchError as exc:
        raise EmbedderMismatchError(f"{candidate.label} cannot be served with these models: {exc}. Promote it "
                                    "from a process started with the models it was built with (the same "
                                    "--clip-model/--text-model), and restart the servers with them") from exc


def on_live_version(name: str, kb: KnowledgeBase, write: Callable[[KnowledgeBase], T], *,
                    resolve: Callable[[str], str], open_kb: Callable[[str], KnowledgeBase]) -> T:
    """Run ``write`` on the version ``name`` names, under its writer lock, with the alias checked under the lock.

    A writer resolves ``kb`` to its live version, then waits for that version's writer lock; a
    promote or rollback in between switches the alias (and catches the new version up while it
    holds the old one's writer lock), and the write would land in the version no longer served,
    lost to readers. Under the lock the alias is read again: if it moved, the write goes to the
    version now live. A switch waits for this writer lock, so once the check passes the write
    is carried over by the next switch's catch-up.

    Args:
        name: what the writer was asked to write to (``kb``, or a label ``kb@N``, which never moves).
        kb: the knowledge base ``name`` resolved to.
        write: the write (an ingest, a delete); it may take the writer lock again (it is re-entrant).
        resolve: the physical collection ``name`` names now.
        open_kb: opens ``name`` again, after a switch.

    Raises:
        StoreBusyError: the alias moved under the writer more than :data:`SWITCHES_MET` times.
    """
    def whole(live: KnowledgeBase, guard: Callable[[], None]) -> T:
        with live.write_lock():
            guard()
            return write(live)

    return ingest_on_live_version(name, kb, whole, resolve=resolve, open_kb=open_kb)


def rollback(kb_name: str, *, versions: Versions, open_kb: Callable[[str], KnowledgeBase] | None,
             detail: dict[str, Any] | None = None) -> tuple[str, Version]:
    """Return ``kb_name`` to the version that was live before the current one, under its lifecycle lock.

    The version rolled back to is first caught up with the live one's documents
    (:func:`~mmrag.lifecycle.reindex.catch_up`): a rollback undoes a build, not the uploads and
    deletes made since.

    Args:
        kb_name: the knowledge base's name.
        versions: the data dir's versions.
        open_kb: opens a version by its label, models attached (for the catch-up; None skips it,
            for a caller that has no models: uploads since the promote are then not carried back).
        detail: added to the audit event.

    Returns:
        The label that was live, and the version now live.

    Raises:
        InvalidInputError: ``kb_name`` has no earlier live version.
    """
    with versions.lock(kb_name):
        back = versions.previous(kb_name)
        result: list[tuple[int, Version]] = []
        if open_kb is None:
            result.append(versions.rollback(kb_name, detail=detail))
        else:
            catch_up(kb_name, back, versions=versions, open_kb=open_kb,
                     then=lambda: result.append(versions.rollback(kb_name, detail=detail)))
    current, live = result[0]
    log.warning("%s now serves %s (rolled back from %s@%d)", kb_name, live.label, kb_name, current)
    return f"{kb_name}@{current}", live


def prune(kb_name: str, *, versions: Versions, open_bare: Callable[[str], KnowledgeBase], keep: int = 1) -> list[str]:
    """Drop the versions of ``kb_name`` that are neither live, nor among the ``keep`` kept, nor building.

    The kept ones are those a rollback returns to first (the alias history, newest first), then the
    newest others. Victims are chosen and dropped under the lifecycle lock, from the alias as it is
    then: a rollback or promote in another process waits for the prune, or the prune for it.

    Returns:
        The labels of the versions dropped.
    """
    with versions.lock(kb_name):
        live = versions.live_number(kb_name) or 1
        others = {v.number: v for v in versions.list(kb_name) if v.number != live and v.state != "building"}
        order: list[int] = []  # the history names a version once per promote: each counts once
        for n in [*reversed(versions.history(kb_name)), *sorted(others, reverse=True)]:
            if n in others and n not in order:
                order.append(n)
        victims = sorted(order[keep:])
        dropped = []
        for number in victims:
            v = others[number]
            target = open_bare(v.label)
            try:
                with target.write_lock():
                    target.drop()
            finally:
                target.close()
            versions.forget(kb_name, v.number)
            dropped.append(v.label)
        return dropped


class _AliasMoved(Exception):
    """Raised by :func:`ingest_on_live_version`'s guard: the alias left the version being written."""


def ingest_on_live_version(name: str, kb: KnowledgeBase, ingest: Callable[[KnowledgeBase, Callable[[], None]], T],
                           *, resolve: Callable[[str], str], open_kb: Callable[[str], KnowledgeBase]) -> T:
    """:func:`on_live_version` for an ingest, which takes the writer lock a slice at a time.

    Holding the writer lock for a whole ingest would keep a small upload waiting behind a long
    document's loading, OCR and embedding (issue 23, finding 7), so the alias is checked each
    time the ingest takes the lock instead (``ingest`` passes the guard to its
    :class:`~mmrag.indexing.Indexer`). What it wrote before a switch is carried over by the
    switch's catch-up; once the alias has moved, the guard stops the run before it writes again,
    and the ingest starts over on the version now live, where the carried-over documents are
    unchanged and cost nothing.

    Args:
        name: what the writer was asked to write to (``kb``, or a label ``kb@N``, which never moves).
        kb: the knowledge base ``name`` resolved to.
        ingest: runs the ingest on a knowledge base with a guard for its ``Indexer(guard=...)``.
        resolve: the physical collection ``name`` names now.
        open_kb: opens ``name`` again, after a switch.

    Raises:
        StoreBusyError: the alias moved under the writer more than :data:`SWITCHES_MET` times.
    """
    from mmrag.errors import StoreBusyError

    for _ in range(SWITCHES_MET):
        target = kb

        def guard() -> None:
            if resolve(name) != target.collection:
                raise _AliasMoved(target.collection)

        try:
            return ingest(kb, guard)
        except _AliasMoved:
            log.warning("%s moved to another version during a write; writing again to the version now live", name)
            kb = open_kb(name)
    raise StoreBusyError(f"{name!r} switched versions {SWITCHES_MET} times during a write; try again")
