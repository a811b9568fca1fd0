"""Per-document budgets: pages, embedded images, OCR seconds and load seconds.

One hostile or merely huge document (a 12-page scan, a DOCX of 10,000 pictures) used to take
minutes of CPU with nothing to stop it. Each loader makes a :class:`DocumentBudget` from its
:class:`~mmrag.loaders.LoaderLimits` and checks it between pages and images, so a document over
budget stops within one page or image of the limit and fails with a
:class:`~mmrag.errors.BudgetExceededError` naming the budget and the setting that raises it.
"""

from __future__ import annotations

import time
from typing import Callable

from mmrag.errors import BudgetExceededError
from mmrag.loaders._common import LoaderLimits

#: The environment variable that raises each budget (the settings of :class:`mmrag.config.IngestSettings`).
SETTINGS = {
    "page": "MMRAG_INGEST__MAX_PAGES",
    "image": "MMRAG_INGEST__MAX_IMAGES",
    "OCR time": "MMRAG_INGEST__MAX_OCR_SECONDS",
    "load time": "MMRAG_INGEST__MAX_SECONDS",
}


class DocumentBudget:
    """What one document may still spend; every check raises once a budget is exceeded.

    Args:
        path: the document, named in the error.
        limits: ``max_pages``, ``max_images``, ``max_ocr_seconds`` and ``max_seconds`` apply.
        clock: seconds, monotonic (tests pass their own).

    Example:
        >>> budget = DocumentBudget("a.pdf", LoaderLimits(max_pages=10))
        >>> budget.pages(12)  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        mmrag.errors.BudgetExceededError: a.pdf: over the page budget: 12 pages > 10 per document; ...
    """

    def __init__(self, path: str, limits: LoaderLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.limits = limits
        self._clock = clock
        self._started = clock()

    def pages(self, n: int) -> None:
        """Refuse a document of more than ``max_pages`` pages (or slides)."""
        if n > self.limits.max_pages:
            self._over("page", f"{n:,} pages", f"{self.limits.max_pages:,}")

    def images(self, n: int) -> None:
        """Refuse a document once it holds more than ``max_images`` images to embed."""
        if n > self.limits.max_images:
            self._over("image", f"{n:,} images", f"{self.limits.max_images:,}")

    def check(self, ocr_seconds: float = 0.0) -> None:
        """Refuse a document whose OCR so far (``ocr_seconds``) or load time is over budget."""
        if ocr_seconds > self.limits.max_ocr_seconds:
            self._over("OCR time", f"{ocr_seconds:,.1f} s of OCR", f"{self.limits.max_ocr_seconds:g} s")
        elapsed = self._clock() - self._started
        if elapsed > self.limits.max_seconds:
            self._over("load time", f"{elapsed:,.1f} s", f"{self.limits.max_seconds:g} s")

    def _over(self, budget: str, found: str, limit: str) -> None:
        raise BudgetExceededError(self.path, budget, found, limit, SETTINGS[budget])
