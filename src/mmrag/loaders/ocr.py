"""Optical character recognition on CPU, through RapidOCR (PP-OCRv4 models on onnxruntime or OpenVINO).

The ``rapidocr-onnxruntime`` wheel ships its detection, direction and recognition models, so
nothing is downloaded at run time. The loaders call :func:`read_text` on rendered PDF pages and
on images; it returns the text in reading order with a confidence, and the share of the image
the detector found text in (how ``--ocr auto`` tells a photo from a picture of a page).
:func:`ocr_block` and :func:`ocr_images` turn results into text blocks that carry
``text_source: ocr`` and the confidence, and count the work in an :class:`OcrStats`.

Example:
    >>> from PIL import Image
    >>> result = read_text(Image.open("scan.png"))  # doctest: +SKIP
    >>> result.text, round(result.confidence, 2)     # doctest: +SKIP
    ('Lorem ipsum dolor sit amet', 0.97)
"""

from __future__ import annotations

import functools
import io
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from mmrag.loaders.ocr_runtime import REFERENCE, choose_runtime
from mmrag.types import ImageAsset, TextBlock

log = logging.getLogger(__name__)

#: Intra-op threads of each onnxruntime session. One: loading runs beside the embedders' torch
#: threads (and Ray workers beside each other), and onnxruntime's spinning pool collapses when
#: its cores are busy. Measured on the 2-core machine under load, the LayoutParser page took
#: 11.5 s with one thread and 23.5 s with two.
OCR_THREADS = 1
#: The detector reads a page shrunk to at most this long side. RapidOCR's "max" limit is not a
#: cap: it picks 960, 1500 or 2000 from the page's own size, so a 150-DPI page (1275x1650) was
#: detected whole and a 300-DPI one at 2000. Measured on the 2-core Xeon with OpenVINO bf16,
#: 8 scanned abstracts at 150 DPI: 1.47 s a page uncapped, 1.21 s at 1280, CER 0.08% and 0.05%;
#: the LayoutParser page (1224x1584 once doubled): CER 4.33% uncapped, 4.15% at 1280, 5.90% at 1024.
DET_MAX_SIDE = 1280
#: The recogniser's input width is rounded up to a multiple of this many pixels. Its input is
#: 48 px high and as wide as the line, and OpenVINO prepares its kernels again for every new shape
#: (it caches the shapes it has seen): a page of lines of 30 widths paid that 30 times. Measured on
#: the 2-core Xeon, 8 scanned abstracts at 150 DPI, OpenVINO bf16 one line a call: 1.21 s a page
#: with exact widths, 0.72 s at 64 px steps, 0.68 s at 128; fp32 1.69 and 1.47 s; CER 0.05% and 0.07%.
REC_WIDTH_STEP = 64
#: How far the detector grows each text box. RapidOCR's 1.6 crops lines so tightly that the
#: (Chinese-and-English) recogniser drops most spaces between English words: the lorem ipsum
#: scan came back as "Loremipsumdolorsitamet" (32 spaces on the page) at 1.3 and 151 at 1.6;
#: 2.0 gave 317, every word apart, which is what keyword search needs.
UNCLIP_RATIO = 2.0
#: Images whose long side is under this many pixels are doubled before OCR.
UPSCALE_BELOW = 1000
#: Lines the recogniser is less sure of than this are dropped (RapidOCR's own default is 0.5).
MIN_LINE_SCORE = 0.5
#: ``--ocr auto`` first runs the detector alone on the image shrunk to this long side (a
#: preview), and reads it in full only when the preview finds enough text. Measured on the
#: 2-core machine: 0.09 s a COCO photo instead of 1.1 s for a full read (which upscales it for
#: the detector); every page image, table picture and scanned PDF page of ingest_docs still
#: showed 13-87% text area at 512 px, where at 384 px one table picture showed none.
PREVIEW_SIDE = 512


@dataclass(frozen=True)
class OcrLine:
    """One detected and recognised line: its text, score and box ``(x0, y0, x1, y1)`` in pixels."""

    text: str
    confidence: float
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class OcrResult:
    """What OCR read from one image.

    Attributes:
        text: The lines in reading order (top to bottom, left to right), one per line of text.
        confidence: Mean recognition score over the lines, weighted by their length (0..1).
        text_area: Share of the image covered by detected text boxes (0..1).
        seconds: Wall time spent in the engine.
        lines: The lines themselves.
    """

    text: str
    confidence: float
    text_area: float
    seconds: float
    lines: tuple[OcrLine, ...] = field(default=(), repr=False)


class OcrError(Exception):
    """The OCR engine failed on one image. Loaders turn it into a warning or a ``LoadError``."""


class RapidOcrEngine:
    """A RapidOCR engine, created on first use (the three ONNX sessions take ~0.2 s and 60 MB).

    Picklable: the sessions are not pickled, a copy builds its own, so the engine can travel to
    a Ray worker or a subprocess with the loader that uses it.

    Args:
        threads: onnxruntime intra-op threads per session.
        use_cls: Run the 180-degree direction classifier on each line (slower; only upside-down
            scans need it).
    """

    def __init__(self, threads: int = OCR_THREADS, *, use_cls: bool = False) -> None:
        self.threads = threads
        self.use_cls = use_cls
        self._engine: Any = None
        self._preview: Any = None
        #: How the models run, measured when the engine is built (:mod:`mmrag.loaders.ocr_runtime`).
        self.runtime: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"threads": self.threads, "use_cls": self.use_cls, "_engine": None, "_preview": None, "runtime": None}

    def _build(self, **options: Any) -> Any:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:  # pragma: no cover - it is a core dependency
            raise OcrError("OCR needs the rapidocr-onnxruntime package: pip install mmrag") from exc
        return RapidOCR(intra_op_num_threads=self.threads, inter_op_num_threads=1, use_cls=self.use_cls,
                        det_unclip_ratio=UNCLIP_RATIO, **options)

    def _get(self) -> Any:
        if self._engine is None:
            engine = self._build(text_score=MIN_LINE_SCORE, rec_batch_num=REFERENCE.rec_batch)
            _cap_detector(engine, DET_MAX_SIDE)
            _step_recogniser_widths(engine, REC_WIDTH_STEP)
            self.runtime = choose_runtime(engine, self.threads,
                                          setup={"det_max_side": DET_MAX_SIDE, "rec_width_step": REC_WIDTH_STEP})
            self._engine = engine
        return self._engine

    def text_share(self, image: Any) -> tuple[float, float]:
        """The share of ``image`` the detector alone finds text in, on a :data:`PREVIEW_SIDE` preview.

        Returns:
            ``(share, seconds)``: the text boxes' area over the preview's (0..1), and the time taken.

        Raises:
            OcrError: If the engine fails on this image.
        """
        if self._preview is None:
            # The detector keeps the preview's size (RapidOCR's "min" default would upscale it
            # to 736 px on its short side, which is what makes a full read slow).
            preview = self._build()
            _cap_detector(preview, PREVIEW_SIDE)
            # The full engine's detector model, on the runtime measured for it: no second
            # compilation, and the measurement is always the full engine's (1280-px detector).
            preview.text_det.infer = self._get().text_det.infer
            self._preview = preview
        small = image.convert("RGB") if image.mode != "RGB" else image.copy()
        small.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
        started = time.perf_counter()
        try:
            boxes, _ = self._preview(small, use_det=True, use_cls=False, use_rec=False)
        except Exception as exc:  # onnxruntime/OpenCV raise many types; one image fails, not the run
            raise OcrError(f"{type(exc).__name__}: {exc}") from exc
        seconds = time.perf_counter() - started
        area = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in (_bbox(points) for points in boxes or ()))
        return min(1.0, area / (small.width * small.height)), seconds

    def read(self, image: Any) -> OcrResult:
        """Read the text in ``image`` (a PIL image).

        Raises:
            OcrError: If the engine fails on this image (onnxruntime or OpenCV errors).
        """
        engine = self._get()
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        if max(rgb.size) < UPSCALE_BELOW:
            # A page saved at 72 DPI has 7-px letters; doubling it gives the detector room to
            # separate lines (the LayoutParser page image: CER 4.0% as is, 3.7% doubled).
            from PIL import Image

            rgb = rgb.resize((rgb.width * 2, rgb.height * 2), Image.Resampling.LANCZOS)
        started = time.perf_counter()
        try:
            raw, _ = engine(rgb, use_cls=self.use_cls)
        except Exception as exc:  # onnxruntime/OpenCV raise many types; one image fails, not the run
            raise OcrError(f"{type(exc).__name__}: {exc}") from exc
        seconds = time.perf_counter() - started
        lines = tuple(_line(item) for item in raw or ())
        return _result(lines, rgb.size, seconds)


def _cap_detector(engine: Any, side: int) -> None:
    """Make ``side`` the detector's cap on a page's long side (smaller pages keep their size)."""
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess

    det = engine.text_det
    det.get_preprocess = lambda _long_side: DetPreProcess(side, "max", det.mean, det.std)


def _step_recogniser_widths(engine: Any, step: int) -> None:
    """Round the recogniser's padded input width up to a multiple of ``step`` pixels."""
    rec = engine.text_rec
    height = rec.rec_image_shape[1]
    resize = rec.resize_norm_img
    rec.resize_norm_img = lambda img, ratio: resize(img, math.ceil(height * ratio / step) * step / height)


def _bbox(points: Sequence[Sequence[float]]) -> tuple[float, float, float, float]:
    """The axis-aligned box ``(x0, y0, x1, y1)`` around a detector polygon."""
    xs = [float(p[0]) for p in points]
    ys = [float(p[1]) for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def _line(item: Sequence[Any]) -> OcrLine:
    return OcrLine(text=str(item[1]).strip(), confidence=float(item[2]), box=_bbox(item[0]))


def _result(lines: tuple[OcrLine, ...], size: tuple[int, int], seconds: float) -> OcrResult:
    lines = tuple(line for line in lines if line.text)
    width, height = size
    area = sum((b[2] - b[0]) * (b[3] - b[1]) for b in (line.box for line in lines))
    chars = sum(len(line.text) for line in lines)
    confidence = sum(line.confidence * len(line.text) for line in lines) / chars if chars else 0.0
    return OcrResult(
        text=reading_order(lines),
        confidence=confidence,
        text_area=min(1.0, area / (width * height)) if width and height else 0.0,
        seconds=seconds,
        lines=lines,
    )


def reading_order(lines: Sequence[OcrLine]) -> str:
    """Join detected lines into text: boxes on one baseline form a row, read left to right.

    The detector returns one box per run of words, so a table row (or words split by a wide
    gap) comes back as several boxes side by side; they are joined with a space. A box is on
    the row of the one before it when the two overlap vertically by half the smaller height and
    are of like height: a tall box (a rotated margin note, an arXiv stamp) would otherwise span,
    and swallow, every row beside it.
    """
    rows: list[list[OcrLine]] = []
    for line in sorted(lines, key=lambda ln: (ln.box[1], ln.box[0])):
        if rows and _same_row(rows[-1][0], line):
            rows[-1].append(line)
        else:
            rows.append([line])
    return "\n".join(" ".join(ln.text for ln in sorted(row, key=lambda ln: ln.box[0])) for row in rows)


def _same_row(anchor: OcrLine, line: OcrLine) -> bool:
    h1, h2 = anchor.box[3] - anchor.box[1], line.box[3] - line.box[1]
    if min(h1, h2) <= 0 or max(h1, h2) > 2 * min(h1, h2):
        return False
    overlap = min(anchor.box[3], line.box[3]) - max(anchor.box[1], line.box[1])
    return overlap > 0.5 * min(h1, h2)


@functools.lru_cache(maxsize=4)
def default_engine(threads: int = OCR_THREADS) -> RapidOcrEngine:
    """The process's shared engine (one per thread count), built lazily on first OCR."""
    return RapidOcrEngine(threads)


def read_text(image: Any, engine: RapidOcrEngine | None = None) -> OcrResult:
    """OCR one PIL image with ``engine`` (default: :func:`default_engine`).

    Args:
        image: A PIL image, any mode.
        engine: The engine to use.

    Returns:
        The text, its confidence and the detected text area.

    Raises:
        OcrError: If the engine fails on this image.
    """
    return (engine or default_engine()).read(image)


# --- what the loaders use -------------------------------------------------------------------

#: ``--ocr auto`` keeps an image's OCR text only when detected text covers at least this share of
#: it and is read with :data:`MIN_KEEP_CONFIDENCE`: a scan, screenshot or table picture is 5-45%
#: text boxes (two lines on a slide about 4%); the ingest_docs photos have none at all, and
#: stray boxes on textures are small and read with low confidence.
MIN_TEXT_AREA = 0.03
MIN_KEEP_CONFIDENCE = 0.7
#: Embedded images smaller than this on their short side are logos and icons, not text to read.
MIN_OCR_SIDE = 96
#: An image file smaller than this on its longest side is not looked at for text by ``auto`` (an
#: icon, a spacer): the detector (DBNet) works on 32-pixel cells, and a legible word needs more.
MIN_TEXT_SIDE = 32


@dataclass
class OcrStats:
    """Counters a loader fills and puts in ``Document.stats`` (summed into the ingest summary)."""

    pages: int = 0
    images: int = 0
    previews: int = 0
    failed: int = 0
    seconds: float = 0.0

    def as_stats(self) -> dict[str, float]:
        """The non-zero counters as ``ocr_pages``, ``ocr_images``, ``ocr_previews``, ``ocr_failed``, ``ocr_seconds``."""
        values = {"ocr_pages": self.pages, "ocr_images": self.images, "ocr_previews": self.previews,
                  "ocr_failed": self.failed, "ocr_seconds": round(self.seconds, 3)}
        return {key: float(value) for key, value in values.items() if value}


def read_if_text(image: Any, mode: str, stats: OcrStats, engine: RapidOcrEngine | None = None) -> OcrResult | None:
    """OCR ``image`` under ``mode`` (``auto`` or ``always``), counting the work in ``stats``.

    ``auto`` skips an image under :data:`MIN_TEXT_SIDE` pixels on its longest side, and reads only
    an image whose preview (:meth:`RapidOcrEngine.text_share`) shows at
    least :data:`MIN_TEXT_AREA` of text, so a photo costs a detector pass on 512 px, not a read.

    Returns:
        The full result, or ``None`` when the preview found too little text to read.

    Raises:
        OcrError: If the engine fails on this image.
    """
    if mode == "auto" and max(getattr(image, "size", (MIN_TEXT_SIDE,))) < MIN_TEXT_SIDE:
        return None  # an icon or a spacer: no preview pass (it cost 4 ms an image, a third of a tiny image's ingest)
    engine = engine or default_engine()
    if mode == "auto":
        share, seconds = engine.text_share(image)
        stats.previews += 1
        stats.seconds += seconds
        if share < MIN_TEXT_AREA:
            return None
    result = engine.read(image)
    stats.images += 1
    stats.seconds += result.seconds
    return result


def ocr_block(result: OcrResult, page: int | None, **extra: str | int | float | bool) -> TextBlock:
    """A text block of OCR text, marked ``text_source: ocr`` with its confidence."""
    meta: dict[str, str | int | float | bool] = {"text_source": "ocr", "ocr_confidence": round(result.confidence, 3)}
    meta.update(extra)
    return TextBlock(text=result.text, page=page, metadata=meta)


def keep_text(result: OcrResult, mode: str) -> bool:
    """Whether an image's OCR text is worth indexing: any text for ``always``, enough for ``auto``."""
    if not result.text.strip():
        return False
    return mode == "always" or (result.text_area >= MIN_TEXT_AREA and result.confidence >= MIN_KEEP_CONFIDENCE)


def ocr_images(
    path: str, images: Sequence[ImageAsset], mode: str, stats: OcrStats, engine: RapidOcrEngine | None = None,
    *, budget: Any = None,
) -> list[TextBlock]:
    """OCR the embedded images of a document; one text block per image that holds text.

    An image the engine or Pillow cannot read is logged and counted in ``stats.failed``; the
    document keeps its other text (and the image still goes to CLIP).

    Args:
        path: The document, for warnings.
        images: Its embedded images (``data`` set).
        mode: ``limits.ocr``; ``never`` reads nothing.
        stats: Counters to update.
        engine: The engine (default: the process's shared one).
        budget: The document's :class:`~mmrag.loaders.budget.DocumentBudget`, checked before each
            image (OCR seconds so far, load time).

    Returns:
        Blocks with ``text_source: ocr``, ``ocr_confidence`` and ``ocr_image`` (the image's name).
    """
    if mode == "never":
        return []
    from PIL import Image

    blocks: list[TextBlock] = []
    for image in images:
        if budget is not None:
            budget.check(stats.seconds)  # outside the handlers below: a budget fails the document
        try:
            with Image.open(io.BytesIO(image.read_bytes())) as img:
                if min(img.size) < MIN_OCR_SIDE:
                    continue
                result = read_if_text(img, mode, stats, engine)
        except OcrError as exc:
            log.warning("%s: OCR failed on embedded image %s (%s); its text is left out", path, image.name, exc)
            stats.failed += 1
            continue
        except Exception as exc:  # Pillow's long tail on odd embedded bytes: this image only
            log.warning("%s: embedded image %s unreadable for OCR (%s: %s)", path, image.name,
                        type(exc).__name__, exc)
            stats.failed += 1
            continue
        if result is not None and keep_text(result, mode):
            blocks.append(ocr_block(result, image.page, ocr_image=image.name or f"image{image.index}"))
    if budget is not None:
        budget.check(stats.seconds)
    return blocks
