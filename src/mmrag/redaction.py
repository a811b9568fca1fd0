"""Scrubbing at ingest: e-mail addresses, phone numbers, IBANs, card numbers and IP addresses.

A collection may carry a redaction *policy* (``mmrag ingest --redact email,phone,iban,card``):
the kinds of sensitive value replaced by a placeholder (``<EMAIL>``, ``<PHONE>``, ...) in every
document before it is chunked and embedded. The text blocks (text files, OCR text, HTML, DOCX,
PPTX and PDF text, JSONL text fields) and every string of metadata (section paths, titles,
JSONL's other fields) are scrubbed, so the vectors, the keyword index, the stored chunk text and
every answer built from them never hold a redacted value. Pixels cannot be scrubbed this way: an
image whose OCR text held a redacted value is left out of the joint space (its scrubbed text is
kept), so no image vector is made from a picture of a card number. Other images are embedded as
they are; a value OCR did not read stays in their pixels.

The detectors are Presidio's pattern recognizers (``presidio-analyzer``): regular expressions
plus a validator each (the Luhn checksum for card numbers, the IBAN check digits, Google's
``phonenumbers`` for phone numbers, a public-suffix check for e-mail domains), run without an
NLP engine, so no language model is loaded. The e-mail validator's suffix list is the snapshot
inside ``tldextract``'s wheel, never a download.

The policy belongs to a collection (one version of a knowledge base): it is stored in the
manifest (:func:`stored_policy`), :func:`bind_policy` sets it on the first write and refuses a
write that asks for another one, and changing it is a new version (``mmrag reindex --redact``).
Documents indexed before a policy existed would otherwise keep what the policy promises to
remove.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from mmrag.errors import InvalidInputError, LoadError, MissingDependencyError, RedactionPolicyError
from mmrag.types import Document, ImageAsset, TextBlock

if TYPE_CHECKING:
    from mmrag.manifest import Manifest

#: The kinds a policy may name, with the Presidio entity each one detects and its placeholder.
KINDS: dict[str, tuple[str, str]] = {
    "card": ("CREDIT_CARD", "<CARD>"),
    "email": ("EMAIL_ADDRESS", "<EMAIL>"),
    "iban": ("IBAN_CODE", "<IBAN>"),
    "ip": ("IP_ADDRESS", "<IP>"),
    "phone": ("PHONE_NUMBER", "<PHONE>"),
}
#: The manifest flag holding a collection's policy (``"card,email"``; ``"none"`` for none).
POLICY_FLAG = "redact"
#: ``Document.stats`` keys carrying a document's redaction counts (``redacted_email`` ...).
STAT_PREFIX = "redacted_"
#: ``Document.stats`` key counting images left out because their OCR text held a redacted value.
IMAGES_LEFT_OUT = "redaction_images_left_out"
NONE = "none"
#: Fewest digits a phone number may have. Presidio's phone recognizer (Google's ``phonenumbers``,
#: over several regions) takes short numbers for local ones: on 1,000 SciFact abstracts it
#: redacted confidence intervals ("0.89-1.26"), counts ("1683 men") and drug codes
#: ("PD 0332991"); with strict grouping and nine digits (an area code) it redacts none of those.
PHONE_MIN_DIGITS = 9
#: phonenumbers' ``Leniency.STRICT_GROUPING``: the digits must be grouped as the region writes them.
PHONE_LENIENCY = 2
#: A version's physical collection (``kb--v3``; see :mod:`mmrag.lifecycle.versions`), named in messages by its kb.
_VERSION_SUFFIX = re.compile(r"--v[0-9]+$")


def parse_policy(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """A policy from ``--redact`` text (``"email,phone"``) or a list of kinds: sorted, each once.

    ``"none"`` or an empty value is the empty policy.

    Raises:
        InvalidInputError: an unknown kind (the message lists the known ones).

    Example:
        >>> parse_policy("phone, email,phone")
        ('email', 'phone')
    """
    if text is None:
        return ()
    parts = text.split(",") if isinstance(text, str) else list(text)
    kinds = {p.strip().lower() for p in parts if p and p.strip()} - {NONE}
    unknown = sorted(kinds - set(KINDS))
    if unknown:
        raise InvalidInputError(f"--redact: unknown kind(s) {', '.join(unknown)}; known: {', '.join(sorted(KINDS))} "
                                f"(or '{NONE}')")
    return tuple(sorted(kinds))


def policy_text(policy: Iterable[str]) -> str:
    """How a policy is stored and shown: ``"card,email"``, or ``"none"``."""
    return ",".join(policy) or NONE


def stored_policy(manifest: "Manifest", collection: str) -> tuple[str, ...] | None:
    """The policy ``collection`` was built with; None when none was ever recorded (no redaction)."""
    value = manifest.flag(collection, POLICY_FLAG)
    return None if value is None else parse_policy(value)


def check_policy(manifest: "Manifest", collection: str, wanted: Iterable[str] | None, *,
                 kb_name: str | None = None) -> tuple[str, ...] | None:
    """The policy a write to ``collection`` would apply, without recording anything.

    Returns:
        The policy to apply; None when ``wanted`` is new to a collection that holds no document
        (the write records it: :func:`bind_policy`).

    Raises:
        RedactionPolicyError: the collection holds documents built with another policy.
    """
    stored = stored_policy(manifest, collection)
    if wanted is None:
        return stored or ()
    policy = parse_policy(wanted)
    if not manifest.has_collection(collection):
        # No document yet (a new collection, or one whose documents were all deleted): nothing was
        # built with another policy, so this write sets it.
        return policy if stored == policy else None
    if policy != (stored or ()):
        name = kb_name or _VERSION_SUFFIX.sub("", collection)
        raise RedactionPolicyError(
            f"collection {name!r} was built with --redact {policy_text(stored or ())}; this write asks for "
            f"--redact {policy_text(policy)}. Changing the policy rebuilds every document: run "
            f"`mmrag reindex {name} --redact {policy_text(policy)}` (then `mmrag promote {name}`), "
            f"or ingest with --redact {policy_text(stored or ())}")
    return policy


def bind_policy(manifest: "Manifest", collection: str, wanted: Iterable[str] | None, *,
                kb_name: str | None = None) -> tuple[str, ...]:
    """The policy a write to ``collection`` applies; records ``wanted`` while the collection holds no document.

    Call it under the collection's writer lock, before anything is written.

    Args:
        manifest: the collection's manifest.
        collection: the physical collection written.
        wanted: the policy the caller asked for; None to apply whatever the collection has.
        kb_name: the knowledge base's name for the error message (default: ``collection`` less
            a version's ``--vN``).

    Returns:
        The policy to apply (possibly empty).

    Raises:
        RedactionPolicyError: the collection holds documents built with another policy.
    """
    policy = check_policy(manifest, collection, wanted, kb_name=kb_name)
    if policy is None:
        policy = parse_policy(wanted)
        manifest.set_flag(collection, POLICY_FLAG, policy_text(policy))
    return policy


def counts_of(stats: Mapping[str, float]) -> dict[str, int]:
    """The redaction counts in a ``Document.stats`` (or a summary's summed stats), by kind."""
    return {k[len(STAT_PREFIX):]: int(v) for k, v in sorted(stats.items()) if k.startswith(STAT_PREFIX)}


@dataclass(frozen=True)
class Span:
    """One detected value: ``text[start:end]`` is of ``kind``."""

    kind: str
    start: int
    end: int
    score: float


class Redactor:
    """Replaces the values a policy names with placeholders (see the module docstring).

    The recognizers are built on first use and not pickled, so a redactor travels to Ray workers
    as its policy alone.

    Args:
        policy: the kinds to redact (:data:`KINDS`).

    Raises:
        InvalidInputError: an unknown kind.

    Example:
        >>> Redactor(["email"]).redact_text("write to ann@example.com")  # doctest: +SKIP
        ('write to <EMAIL>', Counter({'email': 1}))
    """

    def __init__(self, policy: Iterable[str]) -> None:
        self.policy = parse_policy(list(policy))
        self._recognizers: list[tuple[str, Any]] | None = None

    def __bool__(self) -> bool:
        return bool(self.policy)

    def __getstate__(self) -> dict[str, Any]:
        return {"policy": self.policy, "_recognizers": None}

    def __repr__(self) -> str:
        return f"Redactor({policy_text(self.policy)!r})"

    def find(self, text: str) -> list[Span]:
        """The values to replace in ``text``, in order; where two overlap, the surer (then longer) one wins.

        Raises:
            MissingDependencyError: presidio-analyzer is not installed.
            InvalidInputError: a recognizer failed on this text.
        """
        if not self.policy or not text:
            return []
        found: list[Span] = []
        with _translating():
            for kind, recognizer in self._built():
                for r in recognizer.analyze(text, recognizer.supported_entities, None) or []:
                    if r.end > r.start and r.score > 0 and _plausible(kind, text[r.start:r.end]):
                        found.append(Span(kind, r.start, r.end, float(r.score)))
        kept: list[Span] = []
        for span in sorted(found, key=lambda s: (-s.score, -(s.end - s.start), s.start)):
            if all(span.end <= k.start or span.start >= k.end for k in kept):
                kept.append(span)
        return sorted(kept, key=lambda s: s.start)

    def redact_text(self, text: str) -> tuple[str, Counter[str]]:
        """``text`` with each value of the policy's kinds replaced, and how many of each kind."""
        counts: Counter[str] = Counter()
        spans = self.find(text)
        if not spans:
            return text, counts
        out, pos = [], 0
        for span in spans:
            out.append(text[pos:span.start])
            out.append(KINDS[span.kind][1])
            counts[span.kind] += 1
            pos = span.end
        out.append(text[pos:])
        return "".join(out), counts

    def redact_document(self, doc: Document) -> Document:
        """``doc`` with its text blocks and string metadata scrubbed; its counts added to its ``stats``.

        Raises:
            LoadError: a recognizer failed (the document is not indexed unscrubbed).
            MissingDependencyError: presidio-analyzer is not installed.
        """
        if not self.policy:
            return doc
        counts: Counter[str] = Counter()
        images = list(doc.images)
        try:
            texts = []
            for block in doc.texts:
                text, found = self.redact_text(block.text)
                meta = self._redact_meta(block.metadata, found)
                counts.update(found)
                texts.append(block if not found else TextBlock(text=text, page=block.page, metadata=meta))
                if found and block.metadata.get("text_source") == "ocr":
                    images = [a for a in images if not _read_from(a, block, doc)]
            doc_counts: Counter[str] = Counter()
            metadata = self._redact_meta(doc.metadata, doc_counts)
            counts.update(doc_counts)
        except InvalidInputError as exc:
            raise LoadError(doc.source, f"redaction failed: {exc}") from exc
        stats = {**doc.stats, **{f"{STAT_PREFIX}{k}": float(v) for k, v in counts.items()}}
        if len(images) < len(doc.images):
            stats[IMAGES_LEFT_OUT] = float(len(doc.images) - len(images))
        return replace(doc, texts=tuple(texts), images=tuple(images), metadata=metadata, stats=stats)

    def _redact_meta(self, meta: Mapping[str, Any], counts: Counter[str]) -> dict[str, Any]:
        out = dict(meta)
        for key, value in meta.items():
            if isinstance(value, str):
                out[key], found = self.redact_text(value)
                counts.update(found)
        return out

    def _built(self) -> list[tuple[str, Any]]:
        if self._recognizers is None:
            self._recognizers = _recognizers(self.policy)
        return self._recognizers


def _plausible(kind: str, value: str) -> bool:
    return kind != "phone" or sum(c.isdigit() for c in value) >= PHONE_MIN_DIGITS


def _read_from(asset: ImageAsset, block: TextBlock, doc: Document) -> bool:
    """Whether the OCR ``block`` was read from ``asset``'s pixels (see :mod:`mmrag.loaders.ocr`).

    An embedded image's block names it (``ocr_image``); a picture's one block is its own; a
    scanned page's block was read from the rendered page, so every image on that page shows it.
    """
    named = block.metadata.get("ocr_image")
    if named is not None:
        return bool((asset.name or f"image{asset.index}") == named and asset.page == block.page)
    if doc.doc_type == "image":
        return True
    return asset.page is not None and asset.page == block.page


def _recognizers(policy: tuple[str, ...]) -> list[tuple[str, Any]]:
    """Presidio's pattern recognizers for ``policy``, each with the kind it detects."""
    try:
        import tldextract
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            EmailRecognizer,
            IbanRecognizer,
            IpRecognizer,
            PhoneRecognizer,
        )
    except ImportError as exc:
        raise MissingDependencyError(
            f"--redact needs presidio-analyzer ({exc.name or exc}); pip install 'mmrag[redact]'") from exc

    # tldextract's module-level extract() fetches the public suffix list over the network on first
    # use; this extractor reads only the snapshot in its wheel, and caches nothing on disk.
    suffixes = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)

    class OfflineEmailRecognizer(EmailRecognizer):  # type: ignore[misc]
        def validate_result(self, pattern_text: str) -> bool:
            return suffixes(pattern_text.rsplit("@", 1)[-1]).fqdn != ""

    build = {"card": CreditCardRecognizer, "email": OfflineEmailRecognizer, "iban": IbanRecognizer,
             "ip": IpRecognizer, "phone": lambda: PhoneRecognizer(leniency=PHONE_LENIENCY)}
    with _translating():
        return [(kind, build[kind]()) for kind in policy]


@contextlib.contextmanager
def _translating() -> Iterator[None]:
    """Presidio's (and its validators') exceptions as mmrag errors, at this module's edge."""
    try:
        yield
    except (MissingDependencyError, InvalidInputError):
        raise
    except Exception as exc:  # noqa: BLE001 - a recognizer's regex or validator may raise anything
        raise InvalidInputError(f"the redaction recognizers failed: {type(exc).__name__}: {exc}") from exc
