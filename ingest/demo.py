"""`make demo`: ingest the sample corpus, run a few searches, then answer a question with citations.

Uses the default models when they can be loaded (a machine that has them cached or can download
them). When they cannot, it says so and switches to the offline profile, with a banner naming the
models it used: it never switches silently. Set MMRAG_PROFILE to choose explicitly.

Before loading, it asks the model hub (``HF_ENDPOINT``, default huggingface.co) for one response,
waiting at most a few seconds. A machine that gets none is offline: the hub's client is put in
offline mode (``HF_HUB_OFFLINE=1``) so it does not retry each file for a minute, models already
in the local cache still load, and otherwise one line says the demo uses the offline profile.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

from mmrag import (Answerer, ImageAsset, Indexer, KnowledgeBase, MissingDependencyError, ModelUnavailableError, MmragError,
                   Query, Searcher, Settings, answer_mode, answer_options, answer_stop, build_chat_model,
                   configure_logging, resolve_models)

ROOT = Path(__file__).resolve().parent
CORPUS = ROOT / "sample_corpus"


#: Seconds to wait for the model hub's first response before calling the machine offline.
HUB_PROBE_SECONDS = 4.0


def hub_unreachable(seconds: float = HUB_PROBE_SECONDS) -> str | None:
    """Why the model hub cannot be reached (None when it answers at all, even with an error status)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint + "/", method="HEAD"), timeout=seconds)
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # it answered: the network is there
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            outcome.append(f"{endpoint}: {reason}")

    # A thread bounds the DNS lookup too, which urlopen's timeout does not cover.
    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(seconds)
    return outcome[0] if outcome else f"{endpoint}: no answer within {seconds:.0f} s"


def in_hub_cache(repo_id: str) -> bool:
    """Whether the hub's local cache holds a snapshot of ``repo_id`` (a local folder counts as held)."""
    if Path(repo_id).exists():
        return True
    from huggingface_hub.constants import HF_HUB_CACHE  # light: it does not import torch

    snapshots = Path(HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def open_kb(settings: Settings) -> KnowledgeBase:
    """Open the demo's knowledge base, falling back to the offline profile loudly."""
    explicit = "MMRAG_PROFILE" in os.environ
    offline_hub = None
    if settings.profile == "default" and not explicit and os.environ.get("HF_HUB_OFFLINE", "") in ("", "0"):
        offline_hub = hub_unreachable()
        if offline_hub:
            # Set before huggingface_hub is first imported (loading the models imports it).
            os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    kb = KnowledgeBase(settings.data_dir, settings.collection, resolve_models(settings))
    unreachable = (f"!! model hub unreachable ({offline_hub}) and the default models are not cached: "
                   "switching to the offline profile")
    if offline_hub and not in_hub_cache(kb.models.text_model):
        # Nothing to try: say so now, before torch is even imported.
        print(unreachable, file=sys.stderr)
        return banner(offline(settings))
    if settings.profile == "default" and not explicit and not offline_hub:
        print(f"loading the default models ({kb.models.describe()}); a machine that cannot download "
              "them falls back to the offline profile once the download fails", file=sys.stderr)
    # Offline, the cache lookups fail by design: open_clip would log each failure at ERROR before
    # the one line below says what happened and what the demo does instead.
    if offline_hub:
        logging.disable(logging.ERROR)
    try:
        kb.clip, kb.text  # noqa: B018 - load both models now, so a failure shows here
    except (ModelUnavailableError, MissingDependencyError) as exc:
        if explicit or settings.profile == "offline":
            raise
        print(unreachable if offline_hub else f"!! default models unavailable: {exc}\n!! switching to the offline "
              "profile", file=sys.stderr)
        kb = offline(settings)
    finally:
        logging.disable(logging.NOTSET)
    return banner(kb)


def offline(settings: Settings) -> KnowledgeBase:
    """The demo's knowledge base on the offline profile (a collection of its own: other models)."""
    settings = settings.model_copy(update={"profile": "offline", "collection": "demo-offline"})
    return KnowledgeBase(settings.data_dir, settings.collection, resolve_models(settings))


def banner(kb: KnowledgeBase) -> KnowledgeBase:
    """Print which models and data the demo runs on."""
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
    mode = answer_mode(settings, None)
    try:
        chat = build_chat_model(settings) if mode != "extractive" else None
        answerer = Answerer(chat, searcher, k=5, retriever="hybrid", stop=answer_stop(chat.name) if chat else None,
                            **answer_options(settings, searcher.kb.text, mode))
    except MmragError as exc:
        print(f"\n!! no answer model: {exc}", file=sys.stderr)
        return False
    how = ("the context sentence closest to the question, no LLM" if mode == "extractive"
           else "a chat model, checked against the context")
    print(f"\n>> answers ({answerer.model_name}; {mode}: {how}; a calibrated check says \"I don't know\" "
          "when the knowledge base does not hold the answer)")
    for question in ("When does the building close on weekdays?", "Who won the 1998 football world cup?"):
        try:
            answer = answerer.answer(question)
        except MmragError as exc:
            print(f"  Q: {question}\n  !! {type(exc).__name__}: {exc}")
            return False
        print(f"  Q: {question}\n  A: {answer.text}")
        if answer.abstained and answer.abstention:
            print(f"     (chance the context holds the answer: {answer.abstention['p_answerable']:.2f}, "
                  f"below {answer.abstention['threshold']:.2f})")
        for c in answer.citations:
            page = f" p.{c.page}" if c.page is not None else ""
            print(f"     [{c.n}] {c.doc_id}{page} ({c.modality})")
    return True


if __name__ == "__main__":
    sys.exit(main())
