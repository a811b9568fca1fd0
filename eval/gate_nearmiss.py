"""Measure the abstention gate and the grounding check on a near-miss set, each rule alone and combined.

    .venv/bin/python -m eval.gate_nearmiss collect eval/reports/nearmiss-sf --collection nearmiss_sf \
        --rows eval/reports/nearmiss-sf/rows.json
    .venv/bin/python -m eval.gate_nearmiss report eval/reports/nearmiss-sf/rows.json
    .venv/bin/python -m eval.gate_nearmiss terms eval/reports/halueval     # the check on gold passages alone

``collect`` ingests ``DIR/corpus`` with the offline profile (a rerun reuses the ingest), answers every
question of ``DIR/dev.jsonl`` extractively with the gate *off* and the offline reader on (hybrid
retrieval, the top 5 documents: what ``mmrag eval run`` does), and keeps per question the gate's
signals, the scores (contains the reference, cites the gold passage), the context blocks and the
blocks the extractive answer cites. ``report`` then applies each rule to the same answers, so the rules
are compared on identical retrieval: the shipped calibrated gate, the grounding check
(:mod:`mmrag.answering.grounding`) over the whole context or over the cited blocks, the reader's floor, and
their conjunctions. The figures are the issue's: unanswerable refused, answerable whose answer
contains the reference (a refusal contains nothing), answered that cite the gold passage.

The rule that ships is chosen on the SciFact near-miss set (``eval/datasets/nearmiss_scifact.py``)
and reported, held out, on the HaluEval one (``eval/datasets/nearmiss.py``); ``mmrag eval run`` with
the shipped gate reproduces the chosen line end to end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from mmrag import (AbstentionGate, Answerer, EvalConfig, Indexer, KnowledgeBase, OfflineReader, Searcher, Settings,
                   answer_options, load_dataset, resolve_models, run_evaluation)

READER_FLOOR = 0.5  # the reader's own decision point (extractive.ANSWERS): nothing fitted


class Recorder:
    """Wraps an answerer so each Answer (blocks and citations included) is kept, by question, beside the run."""

    def __init__(self, answerer: Answerer) -> None:
        self.answerer, self.answers = answerer, {}  # type: ignore[var-annotated]

    def answer(self, question: str, hits: Any = None) -> Any:
        result = self.answerer.answer(question, hits)
        self.answers[result.question] = result
        return result


def answer_ungated(corpus: Path, dev: Path, collection: str, workdir: Path) -> tuple[Any, list[Any], Any, Recorder]:
    """Ingest ``corpus`` (offline profile; a rerun reuses it) and answer every question of ``dev`` extractively
    with the gate off, through ``run_evaluation`` (hybrid, the top 5 documents as context: what ``mmrag eval
    run`` does). Returns the knowledge base, the questions, the run and the recorded answers."""
    settings = Settings(profile="offline", data_dir=workdir / "data")
    kb = KnowledgeBase(settings.data_dir, collection, resolve_models(settings))
    summary = Indexer(kb).ingest([corpus])
    print(f"ingest: {summary.indexed} indexed, {summary.skipped} unchanged", file=sys.stderr)
    searcher = Searcher(kb)
    # the extractor with the offline reader, so every signal a rule or a fit may read is there
    opts = answer_options(settings, kb.text, "extractive", reader=OfflineReader.load())
    opts.pop("gate", None)  # every question is answered: the gate (or the rule) is applied afterwards
    recorder = Recorder(Answerer(None, searcher, **opts))
    queries = load_dataset(dev)
    run = run_evaluation(searcher, queries, EvalConfig(retriever="hybrid", answer_k=5), answerer=recorder)
    return kb, queries, run, recorder


def collect(folder: Path, collection: str, workdir: Path) -> list[dict[str, Any]]:
    """Ingest ``folder/corpus`` and answer ``folder/dev.jsonl`` with the gate off; one row per question."""
    _, queries, run, recorder = answer_ungated(folder / "corpus", folder / "dev.jsonl", collection, workdir)
    kinds = {json.loads(line)["id"]: json.loads(line).get("kind", "answerable")
             for line in (folder / "dev.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()}
    rows = []
    for q, row in zip(queries, run.rows):
        answer = recorder.answers.get((q.text or "").strip())
        if answer is None or answer.signals is None:
            raise SystemExit(f"{q.id}: no extractive answer ({row['errors']})")
        rows.append({"id": q.id, "query": q.text, "answerable": q.answerable, "kind": kinds.get(q.id, ""),
                     "signals": answer.signals, "contains": row["scores"].get("contains_reference", 0.0),
                     "cites_gold": row["scores"].get("cites_gold", 0.0),
                     "contexts": [[b.hit.doc_id, b.content] for b in answer.blocks if b.hit.modality == "text"],
                     "cited": sorted({c.doc_id for c in answer.citations})})
    return rows


def figures(rows: list[dict[str, Any]], answered: list[bool]) -> dict[str, float]:
    """Unanswerable refused, answerable answered / containing the reference, answered citing gold."""
    yes = [r for r, a in zip(rows, answered) if r["answerable"]]
    yes_answered = [r for r, a in zip(rows, answered) if r["answerable"] and a]
    no = [a for r, a in zip(rows, answered) if not r["answerable"]]
    per_kind: dict[str, list[bool]] = {}
    for r, a in zip(rows, answered):
        if not r["answerable"]:
            per_kind.setdefault(r["kind"], []).append(not a)
    return {"unanswerable_refused": round(sum(not a for a in no) / max(len(no), 1), 3),
            "answerable_answered": round(len(yes_answered) / max(len(yes), 1), 3),
            "answerable_contains_reference": round(sum(r["contains"] for r in yes_answered) / max(len(yes), 1), 3),
            "answered_cite_gold": round(sum(r["cites_gold"] for r in yes_answered) / max(len(yes_answered), 1), 3),
            **{f"refused[{k}]": round(sum(v) / len(v), 3) for k, v in sorted(per_kind.items())}}


def rules(gate: AbstentionGate) -> dict[str, Callable[[dict[str, Any]], bool]]:
    """Each rule: True where it lets the question be answered."""
    from mmrag import check_grounding

    def calibrated(r: dict[str, Any]) -> bool:
        return gate.probability(r["signals"]) >= gate.threshold

    def reader(r: dict[str, Any]) -> bool:
        return r["signals"].get("answerability", 1.0) >= READER_FLOOR

    def grounded(scope: str, kinds: tuple[str, ...] = ("entity", "number", "quoted")
                 ) -> Callable[[dict[str, Any]], bool]:
        # "cited": every block of the documents the answer cites (what the answerer checks)
        def rule(r: dict[str, Any]) -> bool:
            verdict = check_grounding(r["query"], [text for doc, text in r["contexts"]
                                                   if scope == "context" or doc in r["cited"]])
            return not any(t.kind in kinds for t in verdict.missing)
        return rule

    out: dict[str, Callable[[dict[str, Any]], bool]] = {"none": lambda r: True, "calibrated": calibrated,
                                                        "reader": reader}
    for scope in ("context", "cited"):
        out[f"grounded[{scope}]"] = grounded(scope)
        out[f"calibrated+grounded[{scope}]"] = (lambda g: lambda r: calibrated(r) and g(r))(grounded(scope))
        out[f"calibrated+reader+grounded[{scope}]"] = (lambda g: lambda r: calibrated(r) and reader(r) and g(r))(
            grounded(scope))
    out["calibrated+reader"] = lambda r: calibrated(r) and reader(r)
    # the reader as the arbiter of an ungrounded question: refused only when it also finds no answer
    cited = grounded("cited")
    out["calibrated+(grounded[cited]|reader)"] = lambda r: calibrated(r) and (cited(r) or reader(r))
    # only numbers and quoted strings (a false premise): names left to the gate
    numbers = grounded("cited", ("number", "quoted"))
    out["calibrated+grounded[cited,numbers]"] = lambda r: calibrated(r) and numbers(r)
    return out


def gold_terms(folder: Path, show: int = 0) -> tuple[int, int]:
    """Answerable questions of ``folder`` that name a term their own gold passage never mentions.

    No retrieval, no model: how often the grounding check would refuse an answerable question even
    when the answer stands on the right passage (HaluEval's passages are the supporting sentences of a
    multi-hop question, so the bridging entity is often not in them).
    """
    from mmrag import check_grounding

    corpus = {}
    for line in (folder / "corpus" / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            doc = json.loads(line)
            corpus[str(doc["_id"])] = f"{doc.get('title', '')} {doc['text']}"
    missing = total = 0
    for line in (folder / "dev.jsonl").read_text(encoding="utf-8").splitlines():
        q = json.loads(line) if line.strip() else {}
        if not q.get("relevant") or q.get("answerable") is False:
            continue
        total += 1
        verdict = check_grounding(q["query"], [corpus[d] for d in q["relevant"] if d in corpus])
        if not verdict.grounded:
            missing += 1
            if missing <= show:
                print(f"{[t.text for t in verdict.missing]} | {q['query']}")
    return missing, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="ingest and answer with the gate off; write the rows")
    c.add_argument("folder", type=Path, help="a near-miss set: corpus/ and dev.jsonl")
    c.add_argument("--collection", required=True)
    c.add_argument("--workdir", type=Path, help="where the index lives (default: the set's folder)")
    c.add_argument("--rows", type=Path, required=True)
    t = sub.add_parser("terms", help="answerable questions naming a term their gold passage never mentions")
    t.add_argument("folder", type=Path)
    t.add_argument("--show", type=int, default=10, help="examples to print")
    r = sub.add_parser("report", help="the figures of every rule on collected rows")
    r.add_argument("rows", type=Path)
    r.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.command == "collect":
        rows = collect(args.folder, args.collection, args.workdir or args.folder)
        args.rows.write_text(json.dumps(rows), encoding="utf-8")
        print(f"wrote {len(rows)} rows to {args.rows}", file=sys.stderr)
        return 0
    if args.command == "terms":
        missing, total = gold_terms(args.folder, args.show)
        print(f"{missing} of {total} answerable questions name a term their gold passage never mentions "
              f"({missing / max(total, 1):.3f})")
        return 0
    rows = json.loads(args.rows.read_text(encoding="utf-8"))
    gate = AbstentionGate.load()
    out = {name: figures(rows, [rule(row) for row in rows]) for name, rule in rules(gate).items()}
    for name, figs in out.items():
        print(f"{name:40s} " + "  ".join(f"{k}={v}" for k, v in figs.items()))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
