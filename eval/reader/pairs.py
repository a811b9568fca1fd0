"""Training pairs for the offline reader, derived from openly licensed text in ``../shared/data``.

Sources (see ``src/mmrag/assets/reader/README.md`` for licences):

* RAGTruth QA: the 139 web questions with their MS MARCO passages (questions and passages only; the
  hallucination labels are never read, so ``mmrag eval hallucination`` on RAGTruth stays held out);
* ingest_docs: the Wikipedia article ``norwich-city.txt`` and Project Gutenberg's *The Great Gatsby*
  (public domain), cut into passages of a few sentences; ``sample.md`` as heading -> section;
* COCO captions: the five captions of each of 79 images.

Never read here: SciFact (the rerank development set) and HaluEval (the answerability development set,
``eval/datasets/nearmiss.py``).

Everything else is self-supervised, built the way the three questions arise in use:

* relevance (groups of one positive and ``NEGS`` negatives, the hardest by TF-IDF): a sentence to the
  passage it was cut from, the sentence removed (inverse cloze); a RAGTruth question to its passages;
  a heading to its section; a caption to the image's other captions;
* answerability (0/1): a cloze question made from a passage sentence (one entity, number or date
  replaced by a wh-phrase) against the passage (1); against the passage with that sentence removed (0);
  with another entity, number or date of the question changed to one the passage does not hold (0);
  against a passage on a near topic that lacks the answer (0); against an unrelated passage (0);
* support (0/1): a passage sentence, a shortened sentence, or two sentences joined, against the passage
  (1); the sentence against the passage without it (0); the sentence with an entity, number or date
  swapped (0); a true sentence joined to one from another passage (0); COCO: a caption against the
  image's other captions (1), a caption of another image (0).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

NEGS = 3
SENT_SPLIT = re.compile(r"(?<=[.!?])[\"”']?\s+(?=[\"“(]?[A-Z0-9])")
YEAR = re.compile(r"\b(1[5-9]\d\d|20\d\d)\b")
NUMBER = re.compile(r"\b\d+(?:[.,]\d+)?\b")
ENTITY = re.compile(r"(?<!^)(?<![.!?]\s)\b([A-Z][a-z]+(?:\s+(?:of\s+|the\s+)?[A-Z][a-z]+)*)")
STOP_ENTITIES = {"The", "A", "An", "In", "On", "It", "He", "She", "They", "I", "We", "You", "His", "Her", "This",
                 "That", "There", "But", "And", "Mr", "Mrs", "Miss", "Oh", "Yes", "No", "Well"}


@dataclass(frozen=True)
class Passage:
    doc: str          # the document it was cut from: negatives never come from the same one
    text: str
    source: str


def sentences(text: str) -> list[str]:
    return [s.strip() for s in SENT_SPLIT.split(text) if len(s.split()) >= 4]


def _chunks(paragraphs: list[str], doc: str, source: str, words: int = 90) -> list[Passage]:
    out, cur = [], []
    for para in paragraphs:
        for s in sentences(para):
            cur.append(s)
            if sum(len(x.split()) for x in cur) >= words:
                out.append(Passage(doc, " ".join(cur), source))
                cur = []
    if len(cur) >= 2:
        out.append(Passage(doc, " ".join(cur), source))
    return out


def load_passages(data: Path, *, gatsby_max: int = 450) -> tuple[list[Passage], list[tuple[str, list[str], str]], list[dict]]:
    """(passages, RAGTruth (question, passage texts), COCO rows) from ``data`` (../shared/data)."""
    passages: list[Passage] = []
    questions = []
    with (data / "ragtruth_qa" / "ragtruth_qa.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            parts = [p.strip() for p in re.split(r"passage \d+:", row["source"]["passages"]) if p.strip()]
            doc = f"ragtruth:{row['source_id']}"
            passages += [Passage(doc, p, "ragtruth") for p in parts]
            questions.append((row["source"]["question"], parts, doc))
    docs = data / "ingest_docs"
    wiki = (docs / "unstructured/example-docs/norwich-city.txt").read_text(encoding="utf-8", errors="replace")
    paras = [p for p in wiki.splitlines() if len(p.split()) >= 12 and "â" not in p]
    passages += _chunks(paras, "wiki:norwich-city", "wikipedia")
    gatsby = (docs / "private-gpt/tests/components/readers/files/file_unknown.txt").read_text(
        encoding="utf-8-sig", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    body = gatsby.split("*** START OF")[1].split("*** END OF")[0]
    paras = [" ".join(p.split()) for p in body.split("\n\n") if len(p.split()) >= 12]
    passages += _chunks(paras, "gatsby", "gutenberg")[:gatsby_max]
    coco = [json.loads(line) for line in (data / "coco_mini_captions" / "captions.jsonl").open(encoding="utf-8")]
    return passages, questions, coco


def markdown_sections(path: Path) -> list[tuple[str, str]]:
    """(heading, section text) pairs of a markdown file, code blocks dropped."""
    text = re.sub(r"```.*?```", " ", path.read_text(encoding="utf-8"), flags=re.S)
    out, head, body = [], None, []
    for line in text.splitlines() + ["# end"]:
        if line.startswith("#"):
            if head and len(" ".join(body).split()) >= 6:
                out.append((head, " ".join(body)))
            head, body = line.lstrip("#").strip(), []
        elif line.strip():
            body.append(line.strip())
    return out


class Neighbours:
    """TF-IDF nearest passages from other documents: the hard negatives."""

    def __init__(self, passages: list[Passage]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.passages = passages
        self.vec = TfidfVectorizer(sublinear_tf=True, stop_words="english", min_df=1)
        self.matrix = self.vec.fit_transform([p.text for p in passages])

    def near(self, text: str, doc: str, k: int) -> list[Passage]:
        sims = (self.matrix @ self.vec.transform([text]).T).toarray().ravel()
        out = []
        for i in sims.argsort()[::-1]:
            if self.passages[i].doc != doc:
                out.append(self.passages[i])
                if len(out) == k:
                    break
        return out


def spans(text: str) -> list[tuple[str, str]]:
    """(kind, span) candidates that a question can be about: years, numbers, named entities."""
    out = [("year", m.group(0)) for m in YEAR.finditer(text)]
    years = {s for _, s in out}
    out += [("number", m.group(0)) for m in NUMBER.finditer(text) if m.group(0) not in years]
    out += [("entity", m.group(1)) for m in ENTITY.finditer(text) if m.group(1) not in STOP_ENTITIES]
    return out


WH = {"year": ("in what year", "when"), "number": ("how many", "what number"), "entity": ("who", "what", "which")}


def cloze_question(sentence: str, rng: random.Random) -> tuple[str, str, str] | None:
    """(question, answer, kind): ``sentence`` with one span replaced by a wh-phrase, as a question."""
    cands = spans(sentence)
    if not cands:
        return None
    kind, answer = rng.choice(cands)
    wh = rng.choice(WH[kind])
    at = sentence.index(answer)
    before, after = sentence[:at].split(), sentence[at + len(answer):].rstrip(" .!").split()
    # questions are shorter than encyclopedia sentences: keep a window around the wh-phrase
    words = before[-12:] + [wh] + after[:14]
    return " ".join(words) + "?", answer, kind


def swap_span(text: str, passage: str, pool: list[tuple[str, str]], rng: random.Random,
              avoid: str = "") -> str | None:
    """``text`` with one year, number or entity changed to a same-kind value ``passage`` does not hold."""
    cands = [(k, s) for k, s in spans(text) if s != avoid and s in passage]
    rng.shuffle(cands)
    for kind, span in cands:
        if kind == "year":
            new = str(int(span) + rng.choice([-7, -3, -2, 2, 4, 9]))
        elif kind == "number":
            try:
                value = float(span.replace(",", ""))
            except ValueError:
                continue
            new = str(int(value * rng.choice([2, 3]) + rng.randint(1, 9)))
        else:
            options = [s for k, s in pool if k == "entity" and s not in passage and s != span]
            if not options:
                continue
            new = rng.choice(options)
        if new not in passage:
            return text.replace(span, new, 1)
    return None


def build(data: Path, *, seed: int = 0) -> dict[str, list]:
    """All training examples: ``{"relevance": [(query, [pos, neg...])], "answerability": [(q, p, y)],
    "support": [(claim, context, y)]}``, with a ``kinds`` tally of how each negative was made."""
    rng = random.Random(seed)
    passages, questions, coco = load_passages(data)
    nb = Neighbours(passages)
    pool = [s for p in passages for s in spans(p.text)]
    rel, ans, sup = [], [], []
    kinds: dict[str, int] = {}

    def tally(name: str) -> None:
        kinds[name] = kinds.get(name, 0) + 1

    for p in passages:
        sents = sentences(p.text)
        if len(sents) < 2:
            continue
        near = nb.near(p.text, p.doc, 8)
        for s in rng.sample(sents, min(3 if p.source != "gutenberg" else 2, len(sents))):
            rest = " ".join(x for x in sents if x != s)
            # relevance: inverse cloze, the sentence usually removed so the match is topical, not verbatim
            query = s if rng.random() < 0.7 else " ".join(s.split()[: rng.randint(6, 14)])
            negs = rng.sample(near[:6], NEGS - 1) + [rng.choice(passages)]
            rel.append((query, [rest if rng.random() < 0.85 else p.text] + [n.text for n in negs]))
            tally("relevance:inverse_cloze")
            # answerability
            made = cloze_question(s, rng) if p.source != "gutenberg" else None  # dialogue: poor questions
            if made:
                q, answer, _ = made
                ans.append((q, p.text, 1)); tally("answerability:positive")
                if answer not in rest:
                    ans.append((q, rest, 0)); tally("answerability:answer_removed")
                changed = swap_span(q, p.text, pool, rng, avoid=answer)
                if changed:
                    ans.append((changed, p.text, 0)); tally("answerability:span_changed")
                lacking = [n for n in near[:4] if answer not in n.text]
                if lacking:
                    ans.append((q, lacking[0].text, 0)); tally("answerability:near_topic")
                ans.append((q, rng.choice(passages).text, 0)); tally("answerability:unrelated")
            # support
            claim = s if rng.random() < 0.6 else " ".join(s.split()[: max(5, len(s.split()) * 2 // 3)])
            sup.append((claim, p.text, 1)); tally("support:sentence")
            other = [x for x in sents if x != s]
            sup.append((s + " " + rng.choice(other), p.text, 1)); tally("support:two_sentences")
            if not all(w in rest for w in s.split()[-4:]):
                sup.append((s, rest, 0)); tally("support:sentence_removed")
            swapped = swap_span(s, p.text, pool, rng)
            if swapped:
                sup.append((swapped, p.text, 0)); tally("support:span_swapped")
            foreign = rng.choice(sentences(near[0].text) or [near[0].text])
            sup.append((s + " " + foreign, p.text, 0)); tally("support:foreign_sentence_added")
    for question, parts, doc in questions:
        doc_text = " ".join(parts)
        near = nb.near(question + " " + doc_text, doc, 12)
        near = [n for n in near if n.text not in parts]
        for part in parts:
            rel.append((question, [part] + [n.text for n in rng.sample(near[:8], NEGS)]))
            tally("relevance:ragtruth_question")
    for head, body in markdown_sections(data / "ingest_docs/haystack/test/test_files/markdown/sample.md"):
        rel.append((head, [body] + [n.text for n in rng.sample(passages, NEGS)])); tally("relevance:heading")
    texts = [" ".join(r["captions"]) for r in coco]
    for i, row in enumerate(coco):
        caps = row["captions"]
        others = [j for j in range(len(coco)) if j != i]
        for k, cap in enumerate(caps):
            context = " ".join(c for j, c in enumerate(caps) if j != k)
            negs = rng.sample(others, NEGS)
            rel.append((cap, [context] + [texts[j] for j in negs])); tally("relevance:caption")
            sup.append((cap, context, 1)); tally("support:caption")
            sup.append((rng.choice(coco[negs[0]]["captions"]), context, 0)); tally("support:other_image_caption")
    rng.shuffle(rel); rng.shuffle(ans); rng.shuffle(sup)
    return {"relevance": rel, "answerability": ans, "support": sup, "kinds": kinds,
            "passages": len(passages)}
