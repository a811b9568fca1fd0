"""A second near-miss answerability set, built another way: SciFact claims over their abstracts.

    .venv/bin/python -m eval.datasets.nearmiss_scifact ../shared/data/scifact --out eval/reports/nearmiss-sf
    .venv/bin/python -m eval.gate_nearmiss collect eval/reports/nearmiss-sf --collection nearmiss_sf \
        --rows eval/reports/nearmiss-sf/rows.json

The HaluEval near-miss set (``nearmiss.py``) asks crowd-written Wikipedia questions. Choosing the
abstention rule on it and reporting on it would be tuning on the test, so the rule is chosen here, on
text of another domain and another register: SciFact's training claims (statements written by
annotators from citing sentences, not questions), each asked against the corpus of scientific
abstracts. Nothing trains on this set; SciFact is the reranker's development set and never training
data, which a development set for choosing a rule does not change.

Half the claims (seeded) are answerable: their gold abstract is ingested, and an answer should cite it.
The other half are made unanswerable the ways near misses arise:

* ``entity_changed``: a named entity of the claim (a gene, a country, an acronym) that the gold
  abstract holds is replaced by one, from another chosen abstract, that the gold abstract does not hold;
* ``number_changed`` (a false premise): a number or year of the claim that the abstract holds is changed
  to one it does not hold (a claim with none gets its entity changed instead);
* ``passage_removed``: the gold abstract is left out of the corpus while the abstracts around it stay
  (in a corpus of one field, the nearest ones are on topic and do not answer).

A claim that cannot be changed stays answerable. The corpus holds the chosen claims' gold abstracts
(but not the removed ones) and ``--distractors`` other abstracts of the SciFact corpus.

There is no reference answer (a claim is verified, not answered with a span), so this set gives
"unanswerable refused", "answerable answered" and "answered cite gold", not "contains the reference".

Outputs: ``OUT/corpus/corpus.jsonl`` (BEIR ``_id``/``title``/``text``), ``OUT/dev.jsonl``
(answerable: ``relevant``; unanswerable: ``"answerable": false``, ``kind``, ``near_miss``).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path

from eval.datasets.nearmiss import MID_ENTITY, SKIP_ENTITIES, change_entity, change_number

KINDS = ("entity_changed", "number_changed", "passage_removed")


def read(folder: Path) -> tuple[dict[str, dict[str, str]], list[tuple[str, str, list[str]]]]:
    """The corpus by id, and (claim id, claim, gold abstract ids) for every judged training claim."""
    corpus: dict[str, dict[str, str]] = {}
    for part in sorted(folder.glob("corpus*.jsonl")):
        for line in part.open(encoding="utf-8"):
            if line.strip():
                doc = json.loads(line)
                corpus[str(doc["_id"])] = doc
    if not corpus:
        raise SystemExit(f"{folder}: no corpus*.jsonl (the SciFact BEIR folder of ../shared/data)")
    gold: dict[str, list[str]] = {}
    with (folder / "qrels" / "train.tsv").open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if int(row.get("score", 1)) > 0 and row["corpus-id"] in corpus:
                gold.setdefault(row["query-id"], []).append(row["corpus-id"])
    claims = []
    for line in (folder / "queries.train.jsonl").open(encoding="utf-8"):
        if line.strip():
            q = json.loads(line)
            if q["_id"] in gold:
                claims.append((str(q["_id"]), q["text"], gold[q["_id"]]))
    return corpus, claims


def _text(doc: dict[str, str]) -> str:
    return f"{doc.get('title', '')} {doc['text']}"


def build(folder: Path, out: Path, *, seed: int = 0, size: int = 240, distractors: int = 400) -> dict[str, int]:
    """Write corpus and dev set; return counts per kind (``answerable`` included)."""
    corpus, claims = read(folder)
    rng = random.Random(seed)
    # One gold abstract each: "the passage that nearly answers" is then one document.
    claims = [c for c in claims if len(c[2]) == 1]
    rng.shuffle(claims)
    chosen = claims[:size]
    pool = sorted({m.group(1).rstrip(".") for _, _, ids in chosen for m in MID_ENTITY.finditer(corpus[ids[0]]["text"])
                   if len(m.group(1)) > 2 and m.group(1).rstrip(".") not in SKIP_ENTITIES})
    counts = {"answerable": 0, **{k: 0 for k in KINDS}}
    dev, kept, removed = [], set(), set()
    for n, (qid, claim, ids) in enumerate(chosen):
        doc_id = ids[0]
        passage = _text(corpus[doc_id])
        kind = "answerable" if n % 2 == 0 else KINDS[(n // 2) % 3]
        query = claim
        if kind in {"entity_changed", "number_changed"}:
            changed = change_number(claim, passage, rng) if kind == "number_changed" else None
            if changed is None:
                changed = change_entity(claim, passage, pool, rng)
                kind = "entity_changed" if changed else "answerable"
            query = changed or claim
        if kind == "passage_removed":
            removed.add(doc_id)
        else:
            kept.add(doc_id)
        counts[kind] += 1
        line = {"id": f"sf{qid}", "query": query}
        if kind == "answerable":
            line.update(relevant=[doc_id])
        else:
            line.update(relevant=[], answerable=False, kind=kind, near_miss=doc_id)
        dev.append(line)
    # A removed abstract stays out even when another claim cites it: its claim must have no answer.
    kept -= removed
    others = sorted(set(corpus) - kept - removed)
    docs = sorted(kept) + sorted(rng.sample(others, min(distractors, len(others))))
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    with (out / "corpus" / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for doc_id in docs:
            doc = corpus[doc_id]
            fh.write(json.dumps({"_id": doc_id, "title": doc.get("title", ""), "text": doc["text"]},
                                ensure_ascii=False) + "\n")
    # An answerable claim whose abstract another claim removed has no answer either: drop it.
    dev = [d for d in dev if not set(d["relevant"]) & removed]
    with (out / "dev.jsonl").open("w", encoding="utf-8") as fh:
        for line in dev:
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")
    return {k: sum(1 for d in dev if d.get("kind", "answerable") == k) for k in counts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the scifact folder of ../shared/data (BEIR layout)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=240, help="claims to draw (default %(default)s)")
    parser.add_argument("--distractors", type=int, default=400, help="other abstracts in the corpus")
    args = parser.parse_args(argv)
    counts = build(args.folder, args.out, seed=args.seed, size=args.size, distractors=args.distractors)
    print(f"wrote {sum(counts.values())} claims to {args.out / 'dev.jsonl'} ({counts}), "
          f"their corpus to {args.out / 'corpus' / 'corpus.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
