"""Context blocks: retrieved hits numbered, cut to a budget and delimited for a prompt.

What the answerer, the extractor and the sentence splitter share about the context a question is
answered from. Kept apart from :mod:`mmrag.answering` so that those modules import the block type
without importing the answerer (which imports them).

Each block sits in ``<context id="n" ...>...</context>``; a ``<context``/``</context`` inside
retrieved text is defanged so a document cannot close its own block. Image hits become a one-line
description built from their metadata, because the default model reads text only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from mmrag.types import Hit

if TYPE_CHECKING:
    from mmrag.images import ImageCache

__all__ = ["ContextBlock", "defang", "from_ocr", "hit_content", "image_uri", "pack", "render_block"]

_TAG = re.compile(r"<(/?)(\s*context)", re.IGNORECASE)
_IMAGE_KEYS = ("caption", "alt", "title", "description", "label")


@dataclass(frozen=True)
class ContextBlock:
    """One numbered block of the prompt: the hit it came from and the text the model saw."""

    n: int
    hit: Hit
    content: str


def pack(hits: Sequence[Hit], budget_chars: int, max_block_chars: int) -> list[ContextBlock]:
    """Number hits into context blocks within a character budget.

    Args:
        hits: retrieved hits, best first.
        budget_chars: characters all blocks may hold together.
        max_block_chars: characters one block may hold; a longer excerpt is cut at a word boundary.

    Returns:
        Blocks numbered from 1 in rank order; a hit whose content repeats an earlier one is dropped.
    """
    blocks: list[ContextBlock] = []
    left = budget_chars
    seen: set[str] = set()
    for hit in hits:
        content = hit_content(hit)
        if not content or content in seen:
            continue
        content = _cut(content, min(max_block_chars, left))
        if not content:
            break
        seen.add(content)
        blocks.append(ContextBlock(len(blocks) + 1, hit, content))
        left -= len(content)
        if left < 50:
            break
    return blocks


def hit_content(hit: Hit) -> str:
    """The text a block shows for ``hit``: its text, whitespace collapsed, or an image's description."""
    if hit.modality == "text":
        return " ".join((hit.text or "").split())
    meta: Mapping[str, Any] = hit.metadata or {}
    name = meta.get("image_name") or PurePath(hit.source).name or hit.doc_id
    words = [f"Image {name} from document {hit.doc_id}"]
    if hit.page is not None:
        words.append(f"page {hit.page}")
    desc = [f"{k}: {meta[k]}" for k in _IMAGE_KEYS if isinstance(meta.get(k), str) and meta[k]]
    return ", ".join(words) + (". " + "; ".join(desc) if desc else ".")


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    if limit < 20:
        return ""
    head = text[: limit - 1]
    space = head.rfind(" ")
    return (head[:space] if space > limit // 2 else head).rstrip() + "…"


def defang(text: str) -> str:
    """``text`` with any ``<context``/``</context`` tag broken (a look-alike bracket)."""
    # "<context" / "</context" in retrieved text would let a document close its block and speak
    # outside it; a look-alike bracket keeps the words readable but breaks the tag.
    return _TAG.sub(lambda m: "‹" + m.group(1) + m.group(2), text)


def _attr(value: object) -> str:
    return defang(str(value)).replace('"', "'").replace("\n", " ")


def from_ocr(hit: Hit) -> bool:
    """Whether ``hit``'s text was read from pixels (OCR), so its words may be misread."""
    return (hit.metadata or {}).get("text_source") == "ocr"


def render_block(block: ContextBlock, note: str = "") -> str:
    """``block`` delimited for the prompt, with its doc, page, modality and (for OCR) a warning."""
    hit = block.hit
    page = f' page="{hit.page}"' if hit.page is not None else ""
    # The model is told the text was read from a scan, so it can say so and allow for misreadings.
    source = ' source="ocr (text read from a scanned image; may contain recognition errors)"' if from_ocr(hit) else ""
    return (f'<context id="{block.n}" doc="{_attr(hit.doc_id)}"{page} modality="{hit.modality}"{source}>\n'
            f"{defang(block.content)}{note}\n</context>")


def image_uri(hit: Hit, cache: ImageCache | None = None) -> str | None:
    """A ``data:`` URI of an image hit's pixels (through the owner's ``cache``), or None when its source is gone."""
    from mmrag.errors import MmragError
    from mmrag.images import data_uri, hit_image

    try:
        return data_uri(hit_image(hit, cache))
    except MmragError:  # the source moved since ingestion: the description still stands in
        return None
