"""HaluEval QA as an answer development set: half the questions answerable, half not.

    .venv/bin/python -m eval.datasets.halueval ../shared/data/halueval_qa --out eval/reports/halueval
    .venv/bin/mmrag ingest eval/reports/halueval/corpus --profile offline --collection halueval
    .venv/bin/mmrag eval run eval/reports/halueval/dev.jsonl --collection halueval --profile offline \
        --retriever hybrid --out eval/reports/halueval-run

reads ``qa_one-turn_data.json`` (500 HotpotQA questions, each with its gold Wikipedia passages as
``knowledge`` and its ``right_answer``; see the folder's SOURCE.md) and splits the questions in two
with a seeded shuffle:

* ``OUT/corpus/corpus.jsonl``: the knowledge of the first half, one document ``hq<line>`` each
  (``_id``/``text``, which ``mmrag ingest`` reads by default);
* ``OUT/dev.jsonl``: all 500 questions. The first half's are answerable (``relevant`` is their own
  passage, ``reference`` the right answer); the other half's passages were left out of the corpus, so
  they are ``"answerable": false`` and the right reply is an abstention.

The split is a development set (issue 14): the abstention calibration in
``src/mmrag/assets/abstention.json`` is fitted on it and nothing else is.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

SOURCE = "qa_one-turn_data.json"
REQUIRED = ("knowledge", "question", "right_answer")


def read_rows(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    """The questions of ``folder``'s HaluEval QA file as (doc id ``hq<line>``, row), each field checked."""
    source = folder / SOURCE
    if not source.is_file():
        raise SystemExit(f"{source}: missing (is this the halueval_qa folder from ../shared/data?)")
    rows = []
    with source.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = [k for k in REQUIRED if not isinstance(row.get(k), str) or not row[k].strip()]
            if missing:
                raise SystemExit(f"{source}:{lineno}: missing or empty field(s) {missing}")
            rows.append((f"hq{lineno}", row))
    return rows


def convert(folder: Path, out: Path, *, seed: int = 0) -> tuple[int, int]:
    """Write the corpus and the dataset; return (answerable, unanswerable) question counts."""
    rows = read_rows(folder)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    answerable = set(order[: len(rows) // 2])
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    with (out / "corpus" / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for i in sorted(answerable):
            doc_id, row = rows[i]
            fh.write(json.dumps({"_id": doc_id, "text": row["knowledge"]}, ensure_ascii=False) + "\n")
    with (out / "dev.jsonl").open("w", encoding="utf-8") as fh:
        for i, (doc_id, row) in enumerate(rows):
            line = {"id": doc_id, "query": row["question"]}
            if i in answerable:
                line.update(relevant=[doc_id], reference=row["right_answer"])
            else:
                line.update(relevant=[], answerable=False)
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")
    return len(answerable), len(rows) - len(answerable)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the halueval_qa folder (holds qa_one-turn_data.json)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0, help="seed of the answerable/unanswerable split")
    args = parser.parse_args(argv)
    yes, no = convert(args.folder, args.out, seed=args.seed)
    print(f"wrote {yes} passages to {args.out / 'corpus' / 'corpus.jsonl'} and {yes + no} questions "
          f"({yes} answerable, {no} unanswerable) to {args.out / 'dev.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
