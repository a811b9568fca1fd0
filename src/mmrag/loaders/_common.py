"""Types and helpers shared by the per-format loaders.

The public names here are re-exported from :mod:`mmrag.loaders`; import them from there.
"""

from __future__ import annotations

import logging

import codecs
import io
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mmrag.errors import LoadError

log = logging.getLogger(__name__)

#: File suffix (lower case) -> ``Document.doc_type``.
DOC_TYPES: dict[str, str] = {
    ".txt": "txt",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".docx": "docx",
    ".pptx": "pptx",
    ".png": "image",
    ".jpg": "image",
    ".jpeg": "image",
    ".webp": "image",
    ".gif": "image",
    ".bmp": "image",
    ".tiff": "image",
    ".tif": "image",
    ".jsonl": "jsonl",
}

SUPPORTED_SUFFIXES: frozenset[str] = frozenset(DOC_TYPES)

# Pillow format names of raster images the embedding pipeline can decode. Vector formats that
# Office files carry (EMF/WMF) open as a header in Pillow but cannot be rasterised on Linux.
RASTER_FORMATS = frozenset({"PNG", "JPEG", "MPO", "GIF", "BMP", "TIFF", "WEBP", "JPEG2000"})

# Embedded images smaller than this on either side are bullets, spacers and rules: useless as
# retrieval targets and noise in the joint embedding space.
MIN_IMAGE_SIDE = 16
#: The most any later step scales an image's short side up to: CLIP resizes it to its input
#: (224-448 px), RapidOCR's detector to 736 px. A 1x120,000 PNG (553 bytes) passes a pixel count,
#: and CLIP's resize made it 64x7,680,000: gigabytes from a few hundred bytes.
UPSCALE_SIDE = 1024


@dataclass(frozen=True)
class JsonlFields:
    """Field names of a JSONL corpus (the defaults match BEIR's ``corpus.jsonl``).

    When ``id`` is the default ``"_id"`` and a record has no ``_id``, its ``id`` field is used.

    Attributes:
        id: Field holding the record's unique id (a string or integer).
        title: Optional field prepended to the text and stored as ``metadata["title"]``.
        text: Field holding the record's text.
    """

    id: str = "_id"
    title: str = "title"
    text: str = "text"


@dataclass(frozen=True)
class LoaderLimits:
    """Resource limits that keep one hostile or huge file from exhausting the process.

    Attributes:
        max_file_bytes: Files larger than this are refused before they are read.
        max_image_pixels: Images (files or embedded) with more pixels are refused or skipped.
            Pillow itself refuses anything over twice ``PIL.Image.MAX_IMAGE_PIXELS`` whatever
            this says, so raising it past that has no effect.
        max_text_chars: Limit on the extracted text of one document (one file, or one JSONL
            record).
        ocr: When text is read from pixels: ``auto`` (pages without a text layer and images
            whose detector finds text), ``always`` or ``never``.
        page_images: Also index pages that have a text layer as rendered page images (pages
            without one always are).
        max_image_aspect: Images whose long side is more than this many times their short side
            are refused or skipped before they are decoded (see :func:`image_shape_problem`).
        max_pages: Budget: pages (PDF) or slides (PPTX) of one document.
        max_images: Budget: embedded images of one document (those kept for embedding).
        max_ocr_seconds: Budget: seconds of OCR for one document.
        max_seconds: Budget: seconds to load one document (parsing and OCR).
    """

    max_file_bytes: int = 200 * 1024 * 1024
    max_image_pixels: int = 89_478_485
    max_text_chars: int = 20_000_000
    ocr: str = "auto"
    page_images: bool = False
    max_image_aspect: float = 20.0
    max_pages: int = 2_000
    max_images: int = 1_000
    max_ocr_seconds: float = 600.0
    max_seconds: float = 1_200.0


@dataclass(frozen=True)
class RecordProblem:
    """One bad line of a JSONL file, reported by :func:`~mmrag.loaders.load_iter`.

    The file's other records still load; this one is not indexed.

    Attributes:
        source: The file, as in ``Document.source``.
        line: The 1-based line number.
        reason: What is wrong with the line and what to do, e.g.
            ``"invalid JSON (Expecting value at column 1); fix or remove the line"``.
        doc_id: The record's id when the line got far enough to have one (a wrong field type,
            text over the limit, a duplicate), else ``None``. A caller pruning records that
            are gone should keep the previously indexed version of this id.
    """

    source: str
    line: int
    reason: str
    doc_id: str | None = None


@dataclass(frozen=True)
class FileRef:
    """A file found by :func:`~mmrag.loaders.discover`, ready for :func:`~mmrag.loaders.load`.

    Attributes:
        path: Absolute path of the file (symlinks are not resolved, so it stays under ``root``).
        root: Absolute path of the ingested root; for a file given directly, its parent.
        doc_id: ``path`` relative to ``root`` with POSIX separators.
        suffix: The file's suffix in lower case, e.g. ``".pdf"``.
    """

    path: Path
    root: Path
    doc_id: str
    suffix: str

    @classmethod
    def from_path(cls, path: Path | str, root: Path | str | None = None) -> FileRef:
        """Build a reference to one file.

        Args:
            path: The file.
            root: The directory ids are relative to; defaults to the file's parent, so the id
                is the file name.

        Returns:
            The reference. The file is not opened.

        Raises:
            ValueError: If ``path`` is not inside ``root``.

        Example:
            >>> FileRef.from_path("/data/docs/a/b.PDF", "/data/docs").doc_id
            'a/b.PDF'
        """
        abs_path = Path(os.path.abspath(path))
        abs_root = Path(os.path.abspath(root)) if root is not None else abs_path.parent
        doc_id = abs_path.relative_to(abs_root).as_posix()
        return cls(path=abs_path, root=abs_root, doc_id=doc_id, suffix=abs_path.suffix.lower())


def mb(n_bytes: int) -> str:
    """Format a byte count as megabytes for messages ("12.3 MB", "200 MB")."""
    value = n_bytes / (1024 * 1024)
    return f"{value:.0f} MB" if value == int(value) else f"{value:.1f} MB"


def describe(exc: BaseException) -> str:
    """A one-line, bounded description of a third-party exception for a ``LoadError`` reason."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


@contextmanager
def translating(path: str, what: str) -> Iterator[None]:
    """Turn any exception raised by a parser into a :class:`LoadError` naming ``path``.

    Parsers (pypdf, python-docx, python-pptx, lxml, Pillow) raise a long tail of exception types
    on malformed input (``KeyError``, ``AssertionError``, ``struct.error``...), so this catches
    ``Exception`` deliberately: a bad file must never take the ingest run down with it.

    Args:
        path: The file being read, for the error.
        what: What was being parsed, e.g. ``"PDF"``; used in the reason.

    Raises:
        LoadError: For every exception raised inside the block.
    """
    try:
        yield
    except LoadError:
        raise
    except MemoryError as exc:
        raise LoadError(path, f"ran out of memory reading the {what}; it is too large or malformed") from exc
    except RecursionError as exc:
        raise LoadError(path, f"the {what} is nested too deeply to parse (malformed?)") from exc
    except Exception as exc:
        raise LoadError(path, f"not a readable {what} ({type(exc).__name__}: {describe(exc)})") from exc


def check_text_size(path: str, n_chars: int, limits: LoaderLimits) -> None:
    """Raise :class:`LoadError` if ``n_chars`` exceeds ``limits.max_text_chars``."""
    if n_chars > limits.max_text_chars:
        raise LoadError(
            path,
            f"extracted text is {n_chars:,} characters, over the {limits.max_text_chars:,} "
            "character limit; split the file",
        )


def normalize_newlines(text: str) -> str:
    """Convert CRLF and lone CR line ends to LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


# UTF-32 before UTF-16: the UTF-32-LE BOM starts with the UTF-16-LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def bom_encoding(data: bytes) -> tuple[str, int] | None:
    """Return ``(encoding, bom_length)`` when ``data`` starts with a Unicode BOM."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return encoding, len(bom)
    return None


def _utf16_without_bom(data: bytes) -> str | None:
    # ASCII-heavy UTF-16 without a BOM is also valid UTF-8 (with a NUL in every other byte), so
    # it has to be recognised before the UTF-8 attempt.
    sample = data[:4096]
    half = len(sample) // 2
    if half < 4:
        return None
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    if odd > 0.4 * half and even < 0.05 * half:
        return "utf-16-le"
    if even > 0.4 * half and odd < 0.05 * half:
        return "utf-16-be"
    return None


# Bytes that text in any ASCII-compatible encoding hardly ever holds: the C0 controls but tab,
# LF, VT, FF, CR and ESC (colour codes in logs), and DEL. Uniform random bytes (compressed or
# encrypted data, media) are about 10.5% of them; prose, source code and logs well under 1%.
_CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\x0b\x0c\r\x1b") + b"\x7f"
_MAX_CONTROL_SHARE = 0.05
# Detection looks at this much of the file only, so its cost does not grow with the file.
TEXT_SAMPLE_BYTES = 64 * 1024


def _sample(data: bytes) -> bytes:
    if len(data) <= TEXT_SAMPLE_BYTES:
        return data
    sample = data[:TEXT_SAMPLE_BYTES]
    # End on a line break so a multi-byte character cut in half does not skew the guess.
    cut = sample.rfind(b"\n")
    return sample[: cut + 1] if cut >= TEXT_SAMPLE_BYTES // 2 else sample


def _check_not_binary(path: str, sample: bytes) -> None:
    if not sample:
        return
    controls = len(sample) - len(sample.translate(None, _CONTROL_BYTES))
    if controls > _MAX_CONTROL_SHARE * len(sample):
        share = controls / len(sample)
        size = f"{len(sample) // 1024} KiB" if len(sample) >= 1024 else f"{len(sample)} bytes"
        raise LoadError(
            path,
            f"file looks binary, not text ({share:.0%} of its first {size} are control bytes, and it is not "
            "UTF-8); is the suffix wrong?",
        )


def _guess_legacy_encoding(sample: bytes) -> str | None:
    from charset_normalizer import from_bytes

    matches = list(from_bytes(sample))
    if not matches:
        return None
    best = matches[0]
    # charset-normalizer scores Western European text the same in cp1250, cp1252 and cp1257
    # and returns whichever it tried first (cp1250, turning "naïve" into "naďve"). On a tie,
    # the most common of them wins; a real cp1250 or cp1251 text does not tie.
    tied = {m.encoding for m in matches if (m.chaos, m.coherence) == (best.chaos, best.coherence)}
    return "cp1252" if "cp1252" in tied else best.encoding


def decode_text(path: str, data: bytes) -> tuple[str, str]:
    """Decode a text file's bytes, guessing the encoding.

    Order: a BOM (UTF-8, UTF-16 and UTF-32, either byte order), BOM-less UTF-16, strict UTF-8;
    then, for bytes that are none of these, a binary check on the first
    :data:`TEXT_SAMPLE_BYTES`, charset-normalizer's best guess from that sample (cp1252 on a
    tie), and Latin-1, which cannot fail. Bytes of a guessed
    encoding that do not decode (past the sample) become U+FFFD rather than failing the file.

    Args:
        path: The file, for errors.
        data: Its bytes.

    Returns:
        ``(text, encoding)``; newlines are not normalised here.

    Raises:
        LoadError: If the bytes look binary: too many control bytes in the sample, or NUL bytes
            in a file that is not UTF-16/32.
    """
    found = bom_encoding(data)
    if found is not None:
        encoding, skip = found
        # A BOM is strong evidence: a stray bad byte later should not sink the whole file.
        return data[skip:].decode(encoding, errors="replace").replace("\x00", ""), encoding
    text: str | None = None
    encoding = ""
    utf16 = _utf16_without_bom(data)
    if utf16 is not None:
        try:
            text, encoding = data.decode(utf16), utf16
        except UnicodeDecodeError:
            pass
    if text is None:
        try:
            text, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            # Valid UTF-8 is text whatever characters it holds; bytes that are not need a second
            # look before guessing: a NUL-free binary file used to load as megabytes of Latin-1
            # garbage that then kept the embedder busy for minutes.
            sample = _sample(data)
            _check_not_binary(path, sample)
            encoding = _guess_legacy_encoding(sample) or "latin-1"
            text = data.decode(encoding, errors="replace")
    if "\x00" in text:
        raise LoadError(path, "file contains binary data (NUL bytes), not text; is the suffix wrong?")
    return text, encoding


def image_header_ok(data: bytes, limits: LoaderLimits) -> bool:
    """Whether embedded image bytes are worth keeping, judged from the header only.

    Rules: Pillow recognises a raster format (:data:`RASTER_FORMATS`), both sides are at least
    :data:`MIN_IMAGE_SIDE` pixels, and the pixel count is within ``limits.max_image_pixels``.
    Pixels are not decoded.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            fmt = img.format or ""
    except Exception:  # unreadable header, or a decompression bomb: drop this embedded image
        log.debug("embedded image dropped: unreadable header or over the pixel limit", exc_info=True)
        return False
    if fmt not in RASTER_FORMATS:
        return False
    if min(width, height) < MIN_IMAGE_SIDE:
        return False
    return image_shape_problem(width, height, limits) is None


def image_shape_problem(width: int, height: int, limits: LoaderLimits) -> str | None:
    """Why an image of ``width`` x ``height`` must not be decoded or resized, or ``None``.

    Judged from the header's size alone, before any pixel is decoded: more pixels than
    ``limits.max_image_pixels``; a long side more than ``limits.max_image_aspect`` times the
    short one; or more pixels than that limit once the short side is scaled up to
    :data:`UPSCALE_SIDE` (what CLIP's and OCR's resizes do). The reasons name the size and the
    limit. Example:

        >>> image_shape_problem(120_000, 1, LoaderLimits())
        'extreme aspect ratio (120000x1 pixels, 120,000:1 > the 20:1 limit); crop or split the image'
    """
    if width <= 0 or height <= 0:
        return f"image has no pixels ({width}x{height})"
    if width * height > limits.max_image_pixels:
        return f"image too large ({width}x{height} = {width * height:,} pixels > {limits.max_image_pixels:,} limit)"
    short, long = min(width, height), max(width, height)
    if long > limits.max_image_aspect * short:
        return (f"extreme aspect ratio ({width}x{height} pixels, {long / short:,.0f}:1 > the "
                f"{limits.max_image_aspect:g}:1 limit); crop or split the image")
    if short < UPSCALE_SIDE:
        upscaled = UPSCALE_SIDE * math.ceil(long * UPSCALE_SIDE / short)
        if upscaled > limits.max_image_pixels:
            return (f"image too large once resized ({width}x{height} pixels become {upscaled:,} when its short side "
                    f"is scaled to {UPSCALE_SIDE} px, > {limits.max_image_pixels:,}); crop or split the image")
    return None


def flat_metadata(values: dict[str, object]) -> dict[str, str | int | float | bool]:
    """Keep only flat, storable metadata values: no ``None``, no containers, no NaN."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            continue
        if isinstance(value, str):
            value = value.strip()
            if not value:
                continue
        if isinstance(value, (str, int, float, bool)):
            out[key] = value
    return out


_WS_RUN = re.compile(r"\n{3,}")


def tidy_blank_lines(text: str) -> str:
    """Collapse runs of blank lines to one and strip the ends."""
    return _WS_RUN.sub("\n\n", text).strip()
