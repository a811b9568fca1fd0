"""Which sentences of a retrieved block can be an answer, and the clauses of a long one.

The extractive answerer (:mod:`mmrag.answering.extractive`) quotes the context; a quote must state something.
Headings and questions state nothing: the demo's FAQ page once answered "Visitor FAQ When is the
building open?" (issue 25), because a block's text reaches the answerer with its line breaks
folded. So these helpers read the hit's own lines, where a heading is still a line of its own.
"""

from __future__ import annotations

import re

from mmrag.answering.context import ContextBlock
from mmrag.textanalysis import split_sentences

# Two passages glued without a space ("...19th century.First for Women is ...") are common in
# scraped corpora: a lower-case word, a full stop and a capitalised word start a new sentence.
_GLUED = re.compile(r"(?<=[a-z]{2}[.!?])(?=[A-Z][a-z])")
_LIST_ITEM = re.compile(r"^(?:[-*\u2022+|>]|\d{1,3}[.)])\s*")
_CLOSERS = "\"')]*_\u201d\u2019 "
# A line that ends in one of these words, or a comma, goes on in the next line (a wrapped line).
_RUNS_ON = frozenset("a an the and or but of to in on at by for with from as is are was were that which".split())
# Clause boundaries for a long sentence: a semicolon, a colon or a dash, or a comma before a
# clause word (", which", ", and", ", while"): a comma in a list of names is no boundary.
_CLAUSE = re.compile(r"(?<=[;:])\s+|\s+[\u2014\u2013-]\s+|,\s+(?=(?:and|but|while|whereas|which|who|where|when|"
                     r"although|though|so|yet)\b)")


def split_passage(text: str) -> list[str]:
    """The sentences of a passage (the detector's splitter, plus glued passages split apart)."""
    out = []
    for part in _GLUED.split(text):
        out += [s for s in (part[a:b].strip() for a, b in split_sentences(part)) if s]
    return out


def is_question(sentence: str) -> bool:
    """True for a sentence that asks rather than states (it ends with '?')."""
    return sentence.rstrip(_CLOSERS).endswith("?")


def is_heading(line: str, next_line: str = "") -> bool:
    """True for a line that titles text rather than states something.

    A Markdown heading (``#``), or a short line (at most 10 words) that does not end a sentence and
    does not run on into ``next_line`` (a wrapped line ends in a comma or a word like "the", or the
    next line starts in lower case). List items and table rows are not headings.
    """
    line = line.strip()
    if line.startswith("#"):
        return True
    if not line or _LIST_ITEM.match(line) or len(line.split()) > 10:
        return False
    end = line.rstrip(_CLOSERS)
    if not end or end[-1] in ".!?,;" or end.split()[-1].lower() in _RUNS_ON:
        return False
    return not next_line.strip()[:1].islower()


def answer_sentences(block: ContextBlock) -> list[str]:
    """The sentences of a block that may answer: headings and questions are left out.

    The lines come from the hit's own text (the block's content has its line breaks folded), cut
    where the block was cut; a paragraph's wrapped lines are joined again before splitting.
    """
    lines = _block_lines(block)
    paragraphs: list[str] = []
    current: list[str] = []

    def flush() -> None:
        if current:
            paragraphs.append(" ".join(current))
            current.clear()

    for i, line in enumerate(lines):
        if not line or is_heading(line, lines[i + 1] if i + 1 < len(lines) else ""):
            flush()
            continue
        if _LIST_ITEM.match(line):
            flush()
        current.append(line)
    flush()
    return [s for p in paragraphs for s in split_passage(p) if not is_question(s)]


def _block_lines(block: ContextBlock) -> list[str]:
    content = block.content
    body = content[:-1].rstrip() if content.endswith("\u2026") else content
    lines: list[str] = []
    pos = 0
    for raw in (block.hit.text or content).splitlines():
        line = " ".join(raw.split())
        if not line:
            lines.append("")
            continue
        at = body.find(line, pos)
        if at < 0:
            rest = body[pos:].strip()
            if rest and line.startswith(rest):  # the block was cut inside this line
                lines.append(rest)
            break
        lines.append(line)
        pos = at + len(line)
    return lines if any(lines) else [body]


def clauses(sentence: str, min_words: int = 4) -> list[str]:
    """The clauses of a sentence (see ``_CLAUSE``); a piece under ``min_words`` joins its neighbour."""
    pieces = [p.strip() for p in _CLAUSE.split(sentence) if p and p.strip()]
    out: list[str] = []
    for piece in pieces:
        if out and (len(piece.split()) < min_words or len(out[-1].split()) < min_words):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out
