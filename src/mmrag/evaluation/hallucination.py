"""How well the hallucination detector does on labelled answers (``mmrag eval hallucination``).

The application side of :mod:`mmrag.answering.verification`: the detector judges one answer; this module reads
a file of answers (:func:`load_answers`), runs the detector over them and scores it against their
labels, at its own threshold and with a threshold chosen by stratified k-fold cross-validation
(:func:`cross_validate_threshold`). Folds, the ROC sweep and the metrics are scikit-learn's
(a core dependency through sentence-transformers, pinned as one of mmrag's own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from mmrag.errors import InvalidInputError
from mmrag.jsonlines import read_objects

if TYPE_CHECKING:
    from mmrag.answering.verification import HallucinationDetector

__all__ = ["CVResult", "LabelledAnswer", "best_threshold", "confusion", "cross_validate_threshold",
           "evaluate_detector", "load_answers"]


@dataclass(frozen=True)
class CVResult:
    """Threshold chosen by k-fold cross-validation, scored on pooled out-of-fold predictions."""

    balanced_accuracy: float
    f1: float
    tn: int
    fp: int
    fn: int
    tp: int
    thresholds: tuple[float, ...]
    fold_balanced_accuracy: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"balanced_accuracy": self.balanced_accuracy, "f1": self.f1,
                "confusion": {"tn": self.tn, "fp": self.fp, "fn": self.fn, "tp": self.tp},
                "thresholds": list(self.thresholds), "fold_balanced_accuracy": list(self.fold_balanced_accuracy),
                "mean_fold_balanced_accuracy": float(np.mean(self.fold_balanced_accuracy))
                if self.fold_balanced_accuracy else None}


def cross_validate_threshold(scores: Sequence[float], labels: Sequence[int], folds: int = 5,
                             seed: int = 0) -> CVResult:
    """Choose a threshold by stratified k-fold CV; score the pooled out-of-fold predictions.

    In each fold the threshold that maximises balanced accuracy on the training folds (a midpoint
    between adjacent training scores, :func:`best_threshold`) classifies the held-out fold
    (``score >= threshold`` is positive). Balanced accuracy, F1 and the confusion matrix are
    computed once over all held-out predictions pooled; the per-fold balanced accuracies are kept too.

    Args:
        scores: one detector score per answer.
        labels: 1 for a hallucinated answer, 0 for a faithful one.
        folds: the number of folds (scikit-learn's ``StratifiedKFold``, shuffled).
        seed: the shuffle's seed: the same seed gives the same folds.

    Raises:
        InvalidInputError: lengths differ, labels are not 0/1, or a class has fewer than ``folds`` items.
    """
    from sklearn.model_selection import StratifiedKFold

    x = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if x.shape != y.shape or x.ndim != 1:
        raise InvalidInputError("scores and labels must be 1-D and the same length")
    if not np.isin(y, (0, 1)).all():
        raise InvalidInputError("labels must be 0 or 1")
    y = y.astype(int)
    if folds < 2 or min(int(y.sum()), int((1 - y).sum())) < folds:
        raise InvalidInputError(f"{folds}-fold CV needs folds >= 2 and at least {folds} items of each label")
    pred = np.zeros(len(y), dtype=int)
    thresholds, fold_ba = [], []
    for train, test in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y):
        t = best_threshold(x[train], y[train])
        thresholds.append(t)
        pred[test] = x[test] >= t
        fold_ba.append(confusion(y[test], pred[test])["balanced_accuracy"])
    m = confusion(y, pred)
    return CVResult(m["balanced_accuracy"], m["f1"], m["tn"], m["fp"], m["fn"], m["tp"], tuple(thresholds),
                    tuple(fold_ba))


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold with the best balanced accuracy on ``scores``, halfway between two adjacent scores.

    The ROC sweep is scikit-learn's ``roc_curve``; balanced accuracy is ``(tpr + 1 - fpr) / 2``, so
    the best point maximises ``tpr - fpr``. Among equal points the lowest threshold wins. The
    threshold returned lies halfway between the chosen score and the next lower one, so that a
    held-out score between the two is not decided by which side of the gap the sweep stopped at.

    Raises:
        InvalidInputError: ``labels`` hold only one class (no ROC curve).
    """
    from sklearn.metrics import roc_curve

    y = np.asarray(labels).astype(int)
    if y.min() == y.max():
        raise InvalidInputError("a threshold needs both labels among the scores")
    fpr, tpr, cuts = roc_curve(y, scores, drop_intermediate=False)  # cuts: inf, then each score, descending
    j = np.round(tpr - fpr, 12)  # equal points must tie, whatever the float rounding of each rate
    best = len(j) - 1 - int(np.argmax(j[::-1]))
    if best == 0:  # flag nothing: just above the highest score
        return float(cuts[1] + 1e-9)
    lower = cuts[best + 1] if best + 1 < len(cuts) else cuts[best] - 2e-9
    return float((cuts[best] + lower) / 2)


def confusion(labels: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray) -> dict[str, Any]:
    """Confusion matrix, balanced accuracy and F1 (positive = hallucinated).

    Balanced accuracy is the mean recall of the two classes (a class absent from ``labels`` counts 0).
    """
    from sklearn.metrics import confusion_matrix, f1_score, recall_score

    y, p = np.asarray(labels).astype(int), np.asarray(predicted).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, p, labels=[0, 1]).ravel())
    balanced = float(recall_score(y, p, labels=[0, 1], average="macro", zero_division=0))
    f1 = float(f1_score(y, p, labels=[0, 1], zero_division=0))
    return {"balanced_accuracy": balanced, "f1": f1, "tn": tn, "fp": fp, "fn": fn, "tp": tp}


@dataclass(frozen=True)
class LabelledAnswer:
    """One line of a ``mmrag eval hallucination`` file."""

    context: str | tuple[str, ...]
    answer: str
    question: str | None = None
    label: int | None = None
    id: str | None = None


def load_answers(path: Any) -> list[LabelledAnswer]:
    """Read JSONL lines ``{"context", "answer", "question"?, "label"? (0|1), "id"?}``.

    ``context`` is a string or a list of passages.

    Raises:
        NotFoundError: the file does not exist.
        InvalidInputError: a line is not a JSON object, or a field is missing or of the wrong type;
            the message names the line number and the field.
    """
    out = [_labelled(row, where) for _, where, row in read_objects(path)]
    if not out:
        raise InvalidInputError(f"{path}: no answers (expected JSONL lines with context and answer)")
    return out


def _labelled(row: dict[str, Any], where: str) -> LabelledAnswer:
    for key in ("context", "answer"):
        if key not in row:
            raise InvalidInputError(f"{where}: missing field {key!r}")
    context = row["context"]
    if isinstance(context, list) and all(isinstance(c, str) for c in context):
        context = tuple(context)
    elif not isinstance(context, str):
        raise InvalidInputError(f"{where}: field 'context' must be a string or a list of strings")
    if not isinstance(row["answer"], str):
        raise InvalidInputError(f"{where}: field 'answer' must be a string")
    question = row.get("question")
    if question is not None and not isinstance(question, str):
        raise InvalidInputError(f"{where}: field 'question' must be a string")
    label = row.get("label")
    if label is not None:
        if isinstance(label, bool) or label in (0, 1):
            label = int(label)
        else:
            raise InvalidInputError(f"{where}: field 'label' must be 0 or 1, got {label!r}")
    ident = row.get("id")
    return LabelledAnswer(context, row["answer"], question, label, None if ident is None else str(ident))


def evaluate_detector(detector: HallucinationDetector, answers: Sequence[LabelledAnswer], *, folds: int = 5,
                      seed: int = 0) -> dict[str, Any]:
    """Run ``detector`` on ``answers``; with labels, score it at its threshold and with a CV threshold.

    Returns:
        ``{"answers", "threshold", "flagged", "mean_score", "per_answer", "labelled"}``, plus with
        labels ``"default"`` (metrics at ``detector.threshold``) and ``"cv"`` (see
        :func:`cross_validate_threshold`; pooled out-of-fold predictions).
    """
    verdicts = detector.verify_many([(a.context, a.answer, a.question) for a in answers])
    scores = [v.score for v in verdicts]
    report: dict[str, Any] = {
        "answers": len(answers), "threshold": detector.threshold,
        "flagged": sum(v.hallucinated for v in verdicts), "mean_score": float(np.mean(scores)),
        "per_answer": [{"id": a.id, "score": round(v.score, 4), "hallucinated": v.hallucinated, "label": a.label,
                        "unsupported": [s.text for s in v.unsupported]} for a, v in zip(answers, verdicts)],
    }
    labelled = [(v, a.label) for v, a in zip(verdicts, answers) if a.label is not None]
    report["labelled"] = len(labelled)
    if labelled:
        y = [label for _, label in labelled]
        report["positives"] = sum(y)
        report["default"] = confusion(y, [v.hallucinated for v, _ in labelled])
        try:
            cv = cross_validate_threshold([v.score for v, _ in labelled], y, folds=folds, seed=seed).to_dict()
        except InvalidInputError as exc:  # too few labels of one kind: report the fixed threshold only
            report["cv"], report["cv_skipped"] = None, str(exc)
        else:
            report["cv"] = {**cv, "folds": folds, "seed": seed, "pooled": "out-of-fold predictions of all folds, pooled"}
    return report
