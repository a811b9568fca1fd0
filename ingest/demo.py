"""`make demo`: ingest the sample corpus, run a few searches, then answer a question with citations.

Uses the default models when they can be loaded (a machine that has them cached or can download
them). When they cannot, it says so and switches to the offline profile, with a banner naming the
models it used: it never switches silently. Set MMRAG_PROFILE to choose explicitly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mmrag import (Answerer, ImageAsset, Indexer, KnowledgeBase, MissingDependencyError, ModelUnavailableError, MmragError,
                   Query, Searcher, Settings, answer_stop, build_chat_model, configure_logging, resolve_models)

ROOT = Path(__file__).resolve().parent
CORPUS = ROOT / "sample_corpus"


def open_kb(settings: Settings) -> KnowledgeBase:
    """Open the demo's knowledge base, falling back to the offline profile loudly."""
    explicit = "MMRAG_PROFILE" in os.environ
    kb = KnowledgeBase(settings.data_dir, settings.collection, resolve_models(settings))
    if settings.profile == "default" and not explicit:
        print(f"loading the default models ({kb.models.describe()}); a machine that cannot download "
              "them falls back to the offline profile once the download fails (up to a minute)", file=sys.stderr)
    try:
        kb.clip, kb.text  # noqa: B018 - load both models now, so a failure shows here
    except (ModelUnavailableError, MissingDependencyError) as exc:
        if explicit or settings.profile == "offline":
            raise
        print(f"!! default models unavailable: {exc}\n!! switching to the offline profile", file=sys.stderr)
        settings = settings.model_copy(update={"profile": "offline", "collection": "demo-offline"})
        kb = KnowledgeBase(settings.data_dir, settings.collection, resolve_models(settings))
    print("=" * 78)
    print(f"mmrag demo | {kb.models.describe()}")
    print(f"data dir {kb.data_dir} | collection {kb.collection}")
    print("=" * 78)
    return kb


def show(title: str, hits: list) -> None:
    """Print one search's hits."""
    print(f"\n>> {title}")
    for rank, h in enumerate(hits, 1):
        page = f" p.{h.page}" if h.page is not None else ""
        text = (" | " + " ".join((h.text or "").split())[:70]) if h.text else ""
        print(f"  {rank}. {h.score:6.3f} [{h.modality:5}] {h.doc_id}{page}{text}")


def main() -> int:
    configure_logging()
    settings = Settings(data_dir=Path(os.environ.get("MMRAG_DATA_DIR", ".demo")), collection="demo")
    kb = open_kb(settings)
    summary = Indexer(kb).ingest([CORPUS])
    print(f"ingested {CORPUS.relative_to(ROOT.parent)}: indexed {summary.indexed}, unchanged {summary.unchanged}, "
          f"failed {len(summary.failed)}; embeddings computed: clip {summary.clip_embeddings}, "
          f"text {summary.text_embeddings}")
    searcher = Searcher(kb)
    show('text -> image: "a red circle"', searcher.search(Query(text="a red circle"), 3, modality="image"))
    show('text -> text (MiniLM): "when does the building close?"',
         searcher.search(Query(text="when does the building close?"), 3, retriever="text"))
    show('keyword (BM25): "first-aid kit"', searcher.search(Query(text="first-aid kit"), 3, retriever="bm25"))
    show('hybrid: "how much does the exit sign cost?"',
         searcher.search(Query(text="how much does the exit sign cost?"), 3, retriever="hybrid"))
    image = CORPUS / "images" / "yellow-triangle.png"
    show(f"image -> all: {image.name}", searcher.search(Query(image=ImageAsset(path=str(image))), 3))
    answered = ask(settings, searcher)
    return 1 if summary.failed or not answered else 0


def ask(settings: Settings, searcher: Searcher) -> bool:
    """Answer one question the corpus holds and one it does not, printing citations."""
    try:
        chat = build_chat_model(settings)
    except MmragError as exc:
        print(f"\n!! no chat model: {exc}", file=sys.stderr)
        return False
    answerer = Answerer(chat, searcher, k=5, retriever="hybrid", stop=answer_stop(chat.name))
    print(f"\n>> answers ({chat.name}; a tiny offline model, so short and sometimes wrong: "
          "the grounding check abstains rather than guess)")
    for question in ("When does the building close on weekdays?", "Who won the 1998 football world cup?"):
        try:
            answer = answerer.answer(question)
        except MmragError as exc:
            print(f"  Q: {question}\n  !! {type(exc).__name__}: {exc}")
            return False
        print(f"  Q: {question}\n  A: {answer.text}")
        for c in answer.citations:
            page = f" p.{c.page}" if c.page is not None else ""
            print(f"     [{c.n}] {c.doc_id}{page} ({c.modality})")
    return True


if __name__ == "__main__":
    sys.exit(main())
