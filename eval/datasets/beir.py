"""Convert a BEIR folder into mmrag's inputs: a corpus to ingest and a retrieval dataset.

    .venv/bin/python -m eval.datasets.beir ../shared/data/scifact --split train --out eval/datasets/scifact

writes ``OUT/corpus/corpus.jsonl`` (every ``corpus*.jsonl`` part, concatenated; BEIR's fields
``_id``/``title``/``text``, which ``mmrag ingest`` reads by default) and ``OUT/<split>.jsonl`` with one
``{"id", "query", "relevant"}`` line per query that has judgements. Then::

    mmrag ingest OUT/corpus --collection scifact
    mmrag eval retrieval OUT/train.jsonl --collection scifact --retriever text
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


def convert(beir: Path, split: str, out: Path) -> tuple[int, int]:
    """Write the corpus and the dataset; return (documents, queries)."""
    parts = sorted(beir.glob("corpus*.jsonl"))
    if not parts:
        raise SystemExit(f"{beir}: no corpus*.jsonl files (is this a BEIR folder?)")
    qrels_path = beir / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise SystemExit(f"{qrels_path}: missing; available: {[p.stem for p in (beir / 'qrels').glob('*.tsv')]}")
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    n_docs = 0
    with (out / "corpus" / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for part in parts:
            for line in part.open(encoding="utf-8"):
                if line.strip():
                    fh.write(line.rstrip("\n") + "\n")
                    n_docs += 1
    relevant: dict[str, list[str]] = {}
    with qrels_path.open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if int(row.get("score", 1)) > 0:
                relevant.setdefault(row["query-id"], []).append(row["corpus-id"])
    queries_file = next((p for p in (beir / f"queries.{split}.jsonl", beir / "queries.jsonl") if p.is_file()), None)
    if queries_file is None:
        raise SystemExit(f"{beir}: no queries.{split}.jsonl or queries.jsonl")
    n_queries = 0
    with (out / f"{split}.jsonl").open("w", encoding="utf-8") as fh:
        for line in queries_file.open(encoding="utf-8"):
            if not line.strip():
                continue
            q = json.loads(line)
            if q["_id"] in relevant:
                fh.write(json.dumps({"id": q["_id"], "query": q["text"], "relevant": relevant[q["_id"]]}) + "\n")
                n_queries += 1
    return n_docs, n_queries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("beir", type=Path, help="BEIR folder (corpus*.jsonl, queries*.jsonl, qrels/)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    docs, queries = convert(args.beir, args.split, args.out)
    print(f"wrote {docs} documents to {args.out / 'corpus'} and {queries} queries to {args.out / (args.split + '.jsonl')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
