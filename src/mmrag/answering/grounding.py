"""The grounding check: every specific thing a question names must be in the context its answer stands on.

Most near-miss questions change one entity, number or date of a question that the knowledge base
could answer, or assume a false premise ("what does parking cost on Sundays?" when the FAQ gives
weekday prices). The passage that nearly answers is retrieved, on topic, with high cosines, so the
calibrated gate (:mod:`mmrag.answering.guard`) lets it through; but the changed thing is absent from it.
So, as lexical checks for unanswerable questions do, a question naming something its context never
mentions is refused, and the refusal names it ("the context never mentions 'X'").

Measured (``eval/gate_nearmiss.py``): with the gate, it raises the near misses refused from 0.24 to
0.86 on the HaluEval near-miss set, and costs answerable questions that name a bridging entity their
passage leaves out (about a third of HaluEval's: ``gate_nearmiss terms``).

The question's *specific terms* (:func:`question_terms`):

* named entities: runs of capitalised words not at the start of a sentence ("the Sydney Harbour
  Bridge"), joined by "of", "de", "von", ... and acronyms anywhere ("HIV", "U.S.", "mRNA");
* numbers and years, as digits ("1,000", "1990", "3.5");
* quoted strings.

A term is *found* in a text leniently (:class:`ContextIndex`): case, accents and inflection are ignored
(Snowball stems, shared with :mod:`mmrag.textanalysis`); a multi-word entity is found when each of its
words is; an acronym matches the initials of a capitalised run ("U.S." and "United States"), and a
run its acronym; numbers match with or without thousands separators ("1,000" and "1000") and as the
words "one" to "twenty" or ordinals. Honorifics ("President", "Dr") are not required.

The check is deterministic and cheap (a few milliseconds), so it runs after the calibrated gate has
said "answer" (:class:`mmrag.answering.Answerer`), over the scope the gate's calibration names:
``context`` (every text block the answer could cite) or ``cited`` (the blocks the extractive answer
stands on); ``eval/gate_nearmiss.py`` measures both.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from mmrag.textanalysis import STOPWORDS, stem

__all__ = ["SCOPES", "ContextIndex", "Grounding", "Term", "check_grounding", "question_terms"]

#: Where the terms are looked for: every text block of the context, or the blocks the answer cites.
SCOPES = ("context", "cited")

#: A word, a number with its separators, or a code of letters and digits ("KRT17", "G94P", "3rd").
_WORD = re.compile(r"[^\W_]+(?:[.,]\d+)*")
_ORDINAL = re.compile(r"^(\d+)(?:st|nd|rd|th|s)$")
_SENTENCE_END = re.compile(r"[.!?;:]\s+")
_QUOTED = re.compile(r"\"([^\"]{2,80})\"|“([^”]{2,80})”|‘([^’]{2,80})’|(?<![\w])'([^']{2,80})'(?![\w])")
_DOTTED = re.compile(r"^(?:[A-Za-z]\.){2,}$")
#: Words that join the capitalised words of one name ("Bank of America", "Leonardo da Vinci").
#: Not "and": "Chris Carter and Theo van Gogh" are two names, and a refusal should name the missing one.
_JOINERS = frozenset("of the de da di del della der den van von la le du &".split())
#: Words a name may carry that its passage need not repeat.
_HONORIFICS = frozenset("mr mrs ms dr prof sir dame lord lady saint st president king queen prince princess "
                        "general captain senator governor mayor pope".split())
#: Capitalised words that start a question or a clause, and so are no name.
_NOT_NAMES = STOPWORDS | frozenset("i is are was were did does do has have had can could will would should "
                                   "name list tell give find".split())
_NUMBER_WORDS = {w: str(n) for n, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_NUMBER_WORDS.update({w: str(n) for n, w in enumerate(
    "_ first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth".split()) if n})
_NUMBER_WORDS.update({"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70",
                      "eighty": "80", "ninety": "90", "hundred": "100", "thousand": "1000"})


def _fold(text: str) -> str:
    """Lower case without accents: "Zürich" and "zurich" are one word."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).casefold()


def _number(token: str) -> str:
    """A number's canonical digits: thousands separators and trailing decimal zeros dropped."""
    digits = token.replace(",", "")
    if "." in digits:
        digits = digits.rstrip("0").rstrip(".")
    return digits


def _is_number(token: str) -> bool:
    return token.replace(",", "").replace(".", "").isdigit() or bool(_ORDINAL.match(token))


def _key(token: str) -> str:
    """What a word, number or code is compared by: a stem, canonical digits, or the folded code."""
    if _is_number(token):
        ordinal = _ORDINAL.match(token)
        return ordinal.group(1) if ordinal else _number(token)
    folded = _fold(token)
    return stem(folded) if folded.isalpha() else folded


@dataclass(frozen=True)
class Term:
    """One specific thing a question names.

    Attributes:
        text: the term as the question writes it (what a refusal quotes).
        kind: ``entity``, ``number`` or ``quoted``.
        keys: what must be found: word stems and numbers (every one of them).
        acronym: the initials of a multi-word name, or an acronym's letters ("us" for both "U.S." and
            "United States"): the term is also found when the context holds its other form.
    """

    text: str
    kind: str
    keys: tuple[str, ...]
    acronym: str = ""


class ContextIndex:
    """The words, numbers and acronyms of a text, for finding a question's terms in it (module docstring)."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.words: set[str] = set()
        self.acronyms: set[str] = set()
        initials: list[str] = []
        for text in texts:
            tokens = _WORD.findall(text)
            for token in tokens:
                folded = _fold(token)
                key = _key(token)
                self.words.add(key)
                if folded in _NUMBER_WORDS:
                    self.words.add(_NUMBER_WORDS[folded])
                if _is_number(token) and "." in key:  # "85.3%" states "85%" to a question's precision
                    self.words.update({key.split(".")[0], str(round(float(key)))})
                if token.isupper() and len(token) > 1:  # "US", "NASA"
                    self.acronyms.add(folded)
            words = [_fold(t) for t in tokens if t[0].isalpha()]
            initials += ["".join(w[0] for w in words), "".join(w[0] for w in words if w not in STOPWORDS)]
            for word in text.split():
                if _DOTTED.match(word.strip(",;:()\"'")):
                    self.acronyms.add(_fold(word.replace(".", "")).strip(",;:()\"'"))
            for run in _capitalised_runs(text, keep_first=True):
                spelled = _initials(run)
                if len(spelled) > 1:
                    self.acronyms.add(spelled)
        #: The first letters of consecutive words: "reactive oxygen species" spells "ros".
        self.initials = " ".join(initials)

    def holds(self, term: Term) -> bool:
        """Whether ``term`` is found (every key, or its acronym form)."""
        if term.keys and all(k in self.words for k in term.keys):
            return True
        if not term.acronym:
            return False
        if term.acronym in self.acronyms or term.acronym in self.words:
            return True
        # An acronym the question writes ("ROS") may be spelled out in the context. Two letters spell
        # too many word pairs by chance, and a name of several words is not read as initials at all.
        spelled = not term.keys or term.keys == (term.acronym,)
        return spelled and len(term.acronym) > 2 and term.acronym in self.initials


@dataclass(frozen=True)
class Grounding:
    """The verdict: the question's terms and those its context never mentions."""

    terms: tuple[Term, ...]
    missing: tuple[Term, ...]
    scope: str = "context"

    @property
    def grounded(self) -> bool:
        """True when the context mentions every term of the question."""
        return not self.missing

    @property
    def reason(self) -> str:
        """Why the question was refused (empty when it is grounded)."""
        if not self.missing:
            return ""
        names = " or ".join(f"'{t.text}'" for t in self.missing[:3])
        where = "the context" if self.scope == "context" else "the document the answer would cite"
        return f"{where} never mentions {names}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the reason, the missing terms, every term, the scope."""
        return {"reason": self.reason, "missing": [t.text for t in self.missing],
                "terms": [t.text for t in self.terms], "scope": self.scope}


def question_terms(question: str) -> list[Term]:
    """The specific terms of ``question``: names, acronyms, numbers and quoted strings (module docstring).

    Example:
        >>> [t.text for t in question_terms("Which river flows through Paris in 1,200 km?")]
        ['Paris', '1,200']
    """
    terms: list[Term] = []
    seen: set[tuple[str, ...]] = set()

    def add(text: str, kind: str, words: Sequence[str], acronym: str = "") -> None:
        keys = tuple(dict.fromkeys(_key(w) for w in words))
        if (keys or acronym) and keys not in seen:
            seen.add(keys)
            terms.append(Term(text, kind, keys, acronym))

    quoted_spans = []
    for m in _QUOTED.finditer(question):
        inner = next(g for g in m.groups() if g is not None)
        words = [w for w in _WORD.findall(inner) if _fold(w) not in STOPWORDS and (len(w) > 1 or w.isdigit())]
        add(inner, "quoted", words)
        quoted_spans.append(m.span())
    rest = question
    for start, end in reversed(quoted_spans):  # a quoted title's words are its own term, not names
        rest = rest[:start] + " " * (end - start) + rest[end:]
    named: set[str] = set()
    for run in _capitalised_runs(rest, keep_first=False):
        words = [w for w in run if _fold(w).strip(".") not in _JOINERS | _HONORIFICS]
        keys = [t for w in words for t in _name_parts(w)]
        named.update(_key(k) for k in keys)
        acronym = _initials(run) if len(run) > 1 else _acronym(run[0])
        add(" ".join(run), "entity", keys, acronym)
    for token in _WORD.findall(rest):
        if _is_number(token) and _key(token) not in named:  # "DENV-1" is a name, not the number 1
            add(token, "number", [token])
    return terms


def check_grounding(question: str, contexts: Sequence[str], *, scope: str = "context") -> Grounding:
    """Which of ``question``'s specific terms ``contexts`` never mention.

    Args:
        question: the user's question.
        contexts: the texts the answer stands on (every block, or the cited ones: ``scope``).
        scope: ``context`` or ``cited`` (for the refusal's wording).

    Returns:
        The terms, and the ones not found; :attr:`Grounding.grounded` is True when none is missing.

    Example:
        >>> check_grounding("When did Apple open in Berlin?", ["Apple opened its Munich store in 2010."]).reason
        "the context never mentions 'Berlin'"
    """
    terms = question_terms(question)
    index = ContextIndex(contexts)
    return Grounding(tuple(terms), tuple(t for t in terms if not index.holds(t)), scope)


def refuse_ungrounded(scope: str, question: str, blocks: Sequence[Any], cited: Iterable[int]) -> dict[str, Any] | None:
    """The grounding refusal for an answer over ``blocks`` (None: every term is mentioned).

    Args:
        scope: ``context`` (every text block) or ``cited`` (the blocks of the documents the answer
            cites: a document's title may sit in another chunk than the cited sentence).
        question: the question.
        blocks: the answer's :class:`~mmrag.context.ContextBlock` list.
        cited: the numbers of the blocks the answer stands on.
    """
    wanted = set(cited)
    docs = {b.hit.doc_id for b in blocks if b.n in wanted}
    texts = [b.content for b in blocks if b.hit.modality == "text" and (scope == "context" or b.hit.doc_id in docs)]
    verdict = check_grounding(question, texts, scope=scope)
    return None if verdict.grounded else verdict.to_dict()


def _capitalised_runs(text: str, *, keep_first: bool) -> list[list[str]]:
    """Runs of capitalised words (with joiners inside), each sentence's first word dropped unless ``keep_first``."""
    runs: list[list[str]] = []
    for sentence in _SENTENCE_END.split(text):
        run: list[str] = []
        pending: list[str] = []  # joiners seen after a capitalised word, kept if another follows
        for i, raw in enumerate(sentence.split()):
            if raw.startswith(("(", "[")) and run:  # "Apolipoprotein E4 (APOE4)": two names
                runs.append(run)
                run, pending = [], []
            word = raw.strip("\"'“”‘’()[]{},;:?!").removesuffix("'s").removesuffix("’s")
            word = word if _DOTTED.match(word) else word.rstrip(".").strip("\"'“”‘’()[]{},;:?!")
            if not word:
                continue
            lower = _fold(word)
            named = _is_name(word) and lower not in _NOT_NAMES
            if named and i == 0 and not keep_first and not _acronym(word) and not any(c.isdigit() for c in word):
                named = False  # capitalised because it starts the sentence ("Nfs1p" or "HIV" would be a name)
            if named:
                run += pending + [word]
                pending = []
            elif run and lower in _JOINERS:
                pending.append(word)
            else:
                if run:
                    runs.append(run)
                run, pending = [], []
            if (raw.rstrip("\"'”’)").endswith((",", ";")) or raw.rstrip(".,;:").endswith((")", "]"))) and run:
                # "Paris, France": two names
                runs.append(run)
                run, pending = [], []
        if run:
            runs.append(run)
    return runs


def _name_parts(word: str) -> list[str]:
    """The parts of a name's word that must be found: "RAS-driven" needs "RAS", not "driven"."""
    parts = [t for t in _WORD.findall(word) if len(t) > 1 or t.isdigit()]
    marked = [t for t in parts if not (t.isalpha() and t.islower())]
    return marked or parts


def _is_name(word: str) -> bool:
    letters = [c for c in word if c.isalpha()]
    return bool(letters) and any(c.isupper() for c in letters)


def _acronym(word: str) -> str:
    """The letters of an acronym ("U.S." -> "us", "NASA" -> "nasa"); empty for an ordinary word."""
    if _DOTTED.match(word):
        return _fold(word.replace(".", ""))
    letters = [c for c in word if c.isalpha()]
    if len(letters) > 1 and sum(c.isupper() for c in letters) > 1:
        return _fold("".join(letters))
    return ""


def _initials(run: Sequence[str]) -> str:
    return "".join(_fold(w)[0] for w in run if w and _fold(w) not in _JOINERS and w[0].isalpha())
