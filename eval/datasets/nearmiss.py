"""A near-miss answerability development set from HaluEval QA (HotpotQA Wikipedia passages).

    .venv/bin/python -m eval.datasets.nearmiss ../shared/data/halueval_qa --out eval/reports/nearmiss
    .venv/bin/mmrag ingest eval/reports/nearmiss/corpus --profile offline --collection nearmiss
    .venv/bin/mmrag eval run eval/reports/nearmiss/dev.jsonl --collection nearmiss --profile offline \
        --out eval/reports/nearmiss-run --fail-under abstention_recall=0.85 --fail-under contains_reference=0.65

The HaluEval development set (``halueval.py``) makes a question unanswerable by leaving its passage
out of the corpus. Users meet a harder case: the passage that *nearly* answers is there ("what does
parking cost on Sundays?" when the FAQ gives weekday prices). Here every question's passage is in the
corpus, and half the questions are made unanswerable the ways near misses arise:

* ``answer_removed``: the passage is ingested without the sentence(s) that hold the answer;
* ``entity_changed``: one named entity of the question that the passage holds is replaced by an entity
  from another question's passage that this passage does not hold;
* ``number_changed`` (a false premise): a year or number of the question that the passage holds is
  changed to one it does not hold.

Questions whose ``right_answer`` is not written in the passage (yes/no and comparison questions), and
unanswerable candidates that cannot be made (no entity or number to change), are left out, so every
answerable question's reference can be quoted from its passage.

Outputs: ``OUT/corpus/corpus.jsonl`` (``_id``/``text``, ids ``hq<line>`` as in ``halueval.py``),
``OUT/dev.jsonl`` (answerable: ``relevant`` and ``reference``; unanswerable: ``"answerable": false``,
``kind`` and ``near_miss``, the id of the passage that nearly answers), and ``OUT/pairs.jsonl``
(question, passage as ingested, label, kind) for scoring an answerability model directly.

Disjoint from the offline reader's training data by source: ``eval/reader/`` never reads HaluEval.
The kinds of negatives mirror the ones the reader is trained with (on other text), so figures on
this set are in-distribution in how the questions were made; the held-out checks are not.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

from eval.datasets.halueval import read_rows

SENTENCE = re.compile(r"(?<=[.!?])\s*(?=[A-Z\"“(])")
YEAR_OR_NUMBER = re.compile(r"\b\d[\d,.]*\b")
ENTITY = re.compile(r"\b[A-Z][\w'’.-]*(?:\s+(?:of\s+|the\s+|de\s+)?[A-Z][\w'’.-]*)*")
MID_ENTITY = re.compile(r"(?<=[a-z,] )(" + ENTITY.pattern[2:] + ")")
SKIP_ENTITIES = {"What", "Which", "Who", "When", "Where", "How", "The", "In", "Are", "Is", "Was", "Were", "Did",
                 "Do", "Does", "A", "An", "This", "That"}
KINDS = ("answer_removed", "entity_changed", "number_changed")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE.split(text) if s.strip()]


def _entities(text: str) -> list[str]:
    out = []
    for m in ENTITY.finditer(text):
        words = m.group(0).rstrip(".").split()
        while words and words[0] in SKIP_ENTITIES:  # "Which Sydney" -> "Sydney"
            words = words[1:]
        if words:
            out.append(" ".join(words))
    return out


def change_entity(question: str, passage: str, pool: list[str], rng: random.Random) -> str | None:
    held = [e for e in _entities(question) if e in passage and len(e) > 2]
    rng.shuffle(held)
    for old in held:
        options = [e for e in pool if e not in passage and e not in question and len(e.split()) == len(old.split())]
        if options:
            return question.replace(old, rng.choice(options), 1)
    return None


def change_number(question: str, passage: str, rng: random.Random) -> str | None:
    for m in YEAR_OR_NUMBER.finditer(question):
        old = m.group(0).rstrip(".,")
        if old not in passage or not old.replace(",", "").isdigit():
            continue
        value = int(old.replace(",", ""))
        for delta in rng.sample([-11, -6, -3, 3, 5, 8, 13], 7):
            new = str(value + delta if 1000 <= value <= 2100 else max(2, value * 2 + delta))
            if new not in passage:
                return question[:m.start()] + new + question[m.start() + len(old):]
    return None


def build(folder: Path, out: Path, *, seed: int = 0) -> dict[str, int]:
    """Write corpus, dev set and pairs; return counts per kind (``answerable`` included)."""
    # Only questions whose answer the passage states: removing it, or changing what it names, makes a near miss.
    rows = [(doc_id, row) for doc_id, row in read_rows(folder)
            if (answer := row["right_answer"].strip().lower()) not in {"yes", "no"} and answer in row["knowledge"].lower()]
    rng = random.Random(seed)
    # replacement entities come from mid-sentence, so a capitalised first word ("Just") is never one
    pool = sorted({m.group(1).rstrip(".") for _, row in rows for m in MID_ENTITY.finditer(row["knowledge"])
                   if len(m.group(1)) > 2 and m.group(1).rstrip(".") not in SKIP_ENTITIES})
    order = list(range(len(rows)))
    rng.shuffle(order)
    corpus, dev, pairs = [], [], []
    counts = {"answerable": 0, **{k: 0 for k in KINDS}}
    for n, i in enumerate(order):
        doc_id, row = rows[i]
        q, passage, answer = row["question"], row["knowledge"], row["right_answer"].strip()
        kind = "answerable" if n % 2 == 0 else KINDS[(n // 2) % 3]
        text, query = passage, q
        if kind == "answer_removed":
            kept = [s for s in split_sentences(passage) if answer.lower() not in s.lower()]
            text = " ".join(kept)
            if not kept or answer.lower() in text.lower():
                kind, text = "answerable", passage
        elif kind in {"entity_changed", "number_changed"}:
            changed = change_number(q, passage, rng) if kind == "number_changed" else None
            if changed is None:  # few questions hold a number: a changed entity is the next false premise
                changed = change_entity(q, passage, pool, rng)
                kind = "entity_changed" if changed else kind
            if changed is None:
                kind = "answerable"
            else:
                query = changed
        counts[kind] += 1
        corpus.append({"_id": doc_id, "text": text})
        line = {"id": doc_id, "query": query}
        if kind == "answerable":
            line.update(relevant=[doc_id], reference=answer)
        else:
            line.update(relevant=[], answerable=False, kind=kind, near_miss=doc_id)
        dev.append(line)
        pairs.append({"id": doc_id, "question": query, "passage": text, "label": int(kind == "answerable"),
                      "kind": kind})
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    for path, items in ((out / "corpus" / "corpus.jsonl", corpus), (out / "dev.jsonl", dev),
                        (out / "pairs.jsonl", pairs)):
        with path.open("w", encoding="utf-8") as fh:
            for item in items:
                fh.write(json.dumps(item, ensure_ascii=False) + "\n")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the halueval_qa folder (holds qa_one-turn_data.json)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    counts = build(args.folder, args.out, seed=args.seed)
    print(f"wrote {sum(counts.values())} questions to {args.out / 'dev.jsonl'} ({counts}), "
          f"their passages to {args.out / 'corpus' / 'corpus.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
