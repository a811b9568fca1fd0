"""Promote a version behind the canary gate, roll back, prune: what the CLI and the HTTP API share.

A promote runs the canary (:mod:`mmrag.lifecycle.canary`: the knowledge base's probes, and its
evaluation dataset when one is configured, on the live version and on the candidate) and switches
the alias only when no metric drops by more than ``lifecycle.canary_budget``. ``force`` switches
anyway; the override and the gate's figures go to the audit log (``events``) and the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from mmrag.config import Settings
from mmrag.errors import CanaryRefusedError, InvalidInputError
from mmrag.kb import KnowledgeBase
from mmrag.lifecycle.versions import Version, Versions

log = logging.getLogger(__name__)


@dataclass
class PromoteResult:
    """What a promote did."""

    kb: str
    previous: Version | None
    live: Version
    canary: Any  # CanaryResult, or None when there was nothing to compare
    forced: bool

    def to_dict(self) -> dict[str, Any]:
        return {"kb": self.kb, "previous": self.previous.label if self.previous else None, "live": self.live.label,
                "forced": self.forced, "canary": self.canary.to_dict() if self.canary is not None else None}


def promote(kb: str, number: int, *, versions: Versions, open_kb: Callable[[str], KnowledgeBase],
            settings: Settings, force: bool = False) -> PromoteResult:
    """Switch ``kb`` to version ``number`` if the canary passes (or ``force``).

    Args:
        kb: the knowledge base.
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
    from mmrag.lifecycle.canary import gate
    from mmrag.lifecycle.probes import ProbeStore

    versions.adopt_if_unversioned(kb)
    candidate = versions.ready(kb, number)
    live_number = versions.live_number(kb)
    if live_number == number:
        raise InvalidInputError(f"{candidate.label} is already live")
    previous = versions.get(kb, live_number) if live_number is not None else None
    probes = ProbeStore(versions.manifest).list(kb)
    target = open_kb(candidate.label)
    result = None
    if previous is not None and (probes or settings.lifecycle.eval_dataset):
        result = gate(open_kb(previous.label), target, probes, settings=settings,
                      eval_dataset=settings.lifecycle.eval_dataset, live_label=previous.label,
                      candidate_label=candidate.label)
        versions.record_figures(candidate.physical, "canary", result.to_dict())
        if not result.passed:
            if not force:
                versions.log(kb, "promote-refused", {"to": number, "canary": result.to_dict()})
                raise CanaryRefusedError(
                    f"the canary refused {candidate.label} against {previous.label}:\n{result.render()}\n"
                    f"Fix the candidate (or the probes), raise lifecycle.canary_budget, or pass --force "
                    "(the override is logged)")
            log.warning("promote %s: the canary refused it and --force overrode the gate:\n%s", candidate.label,
                        result.render())
    elif previous is not None:
        log.warning("promote %s: %s has no probes and no evaluation dataset, so there is no canary; add probes "
                    "with `mmrag probes add %s`", candidate.label, kb, kb)
    _check_servable(target, candidate)
    forced = bool(force and result is not None and not result.passed)
    detail = {"canary": result.to_dict() if result is not None else None}
    live = versions.switch(kb, number, reason="promote-forced" if forced else "promote", detail=detail)
    log.warning("%s now serves %s (was %s)", kb, live.label, previous.label if previous else "none")
    return PromoteResult(kb, previous, live, result, forced)


def _check_servable(target: KnowledgeBase, candidate: Version) -> None:
    """Refuse a candidate this process's models cannot serve (built with other models), before the switch."""
    from mmrag.errors import EmbedderMismatchError

    try:
        target.clip_store, target.text_store  # identity-checked against the models this process loads
    except EmbedderMismatchError as exc:
        raise EmbedderMismatchError(f"{candidate.label} cannot be served with these models: {exc}. Promote it "
                                    "from a process started with the models it was built with (the same "
                                    "--clip-model/--text-model), and restart the servers with them") from exc


def prune(kb: str, *, versions: Versions, open_bare: Callable[[str], KnowledgeBase], keep: int = 1) -> list[str]:
    """Drop the versions of ``kb`` that are neither live, nor among the ``keep`` newest others, nor building.

    Returns:
        The labels of the versions dropped.
    """
    live = versions.live_number(kb)
    others = [v for v in versions.list(kb) if v.number != (live or 1) and v.state != "building"]
    dropped = []
    for v in others[: max(0, len(others) - keep)]:
        target = open_bare(v.label)
        with target.write_lock():
            target.drop()
        target.close()
        versions.forget(kb, v.number)
        dropped.append(v.label)
    return dropped
