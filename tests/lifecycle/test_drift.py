"""Drift: the reference and score math, the ingest-time reference, the acceptance shift, /metrics."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mmrag.errors import InvalidInputError, NotFoundError
from mmrag.lifecycle import drift
from mmrag.lifecycle.drift import QueryLog, Reference, compare

THRESHOLD = drift.THRESHOLD

# -- a self-made prose corpus (no download, no ../shared) -----------------------------------------
_SUBJECTS = ["The north gallery", "The reading room", "Our garden team", "The east wing", "The cafe", "The archive",
             "The children's workshop", "The loading dock", "The main hall", "The roof terrace", "The print studio",
             "The visitor desk", "The cloakroom", "The lecture theatre", "The conservation lab"]
_VERBS = ["opens at nine on weekdays", "closes early on public holidays", "was repainted last spring",
          "hosts a guided tour every Saturday", "needs a booking for groups larger than ten",
          "is step-free from the west entrance", "keeps a lost property register", "runs a quiet hour on Tuesdays",
          "lends folding stools to visitors", "displays maps of the old harbour", "stores ceramics from the 1920s",
          "was closed for repairs after the storm", "offers audio guides in six languages",
          "serves soup and bread at noon", "is cleaned every evening after closing"]
_TAILS = ["Ask the staff if you need help.", "Tickets are checked at the door.", "Photography without flash is allowed.",
          "Please keep bags in the lockers.", "The schedule can change during exhibitions.",
          "Volunteers lead the sessions.", "Fire exits are marked in green.", "Wheelchairs can be borrowed at the desk."]


def write_corpus(folder: Path, n: int, seed: int) -> Path:
    """``n`` short Markdown notes, each one chunk, drawn from one distribution."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    for i in range(n):
        lines = [f"# Note {seed}-{i}", ""] + [f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)}. {rng.choice(_TAILS)}"
                                               for _ in range(3)]
        (folder / f"note-{seed}-{i:03d}.md").write_text("\n".join(lines) + "\n")
    return folder


def easyvqa_images(folder: Path, n: int) -> Path:
    """``n`` easy-vqa test images (64x64 coloured shapes) copied into ``folder``."""
    easy_vqa = pytest.importorskip("easy_vqa")
    folder.mkdir(parents=True)
    for path in sorted(easy_vqa.get_test_image_paths().values())[:n]:
        (folder / Path(path).name).write_bytes(Path(path).read_bytes())
    return folder


# -- the math ---------------------------------------------------------------------------------------
def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _cloud(rng: np.random.Generator, n: int, centre: np.ndarray, spread: float = 0.3) -> np.ndarray:
    return _unit(centre + spread * rng.standard_normal((n, len(centre))))


def test_same_distribution_scores_near_zero_and_a_shift_scores_high() -> None:
    rng = np.random.default_rng(0)
    a, b = _unit(rng.standard_normal((2, 64)))
    ref = Reference.of("text", _cloud(rng, 1000, a))
    same = compare(ref, _cloud(rng, 300, a))
    small = compare(ref, _cloud(rng, 40, a))
    shifted = compare(ref, _cloud(rng, 300, b))
    assert same.score is not None and same.score < 0.05
    assert small.score is not None and small.score < 0.05  # the bias corrections hold at small n
    assert shifted.score is not None and shifted.score > THRESHOLD
    assert 0 <= same.score <= shifted.score <= 1


def test_a_change_of_shape_alone_is_seen_by_the_sliced_divergence() -> None:
    rng = np.random.default_rng(1)
    centre = 5 * _unit(rng.standard_normal((1, 64)))[0]
    ref = Reference.of("clip", centre + rng.standard_normal((1000, 64)))
    wider = compare(ref, centre + 4 * rng.standard_normal((500, 64)))  # same mean, four times the spread
    assert wider.js is not None and wider.js > THRESHOLD and wider.score == wider.js


def test_reference_round_trips_through_json_and_stays_compact() -> None:
    rng = np.random.default_rng(2)
    ref = Reference.of("clip-image", _unit(rng.standard_normal((500, 128))))
    text = ref.to_json()
    back = Reference.from_json(text)
    assert back.count == 500 and back.dim == 128 and back.hist.shape == (drift.DIRECTIONS, drift.BINS)
    assert np.allclose(back.edges, ref.edges, atol=1e-6) and abs(back.spread - ref.spread) < 1e-5
    assert len(text) < 40_000  # a few thousand floats, not the sample
    probe = _unit(rng.standard_normal((100, 128)))
    assert compare(back, probe).score == compare(ref, probe).score


def test_empty_small_and_mismatched_inputs() -> None:
    rng = np.random.default_rng(3)
    empty = Reference.of("clip-image", np.zeros((0, 0)))
    assert empty.count == 0
    got = compare(empty, _unit(rng.standard_normal((50, 8))))
    assert got.score is None and "no reference" in got.note
    ref = Reference.of("text", _unit(rng.standard_normal((200, 8))))
    assert compare(ref, _unit(rng.standard_normal((5, 8)))).score is None
    with pytest.raises(InvalidInputError):
        compare(ref, _unit(rng.standard_normal((50, 9))))


def test_query_log_keeps_the_last_vectors_in_order_and_persists_them(tmp_path: Path) -> None:
    log = QueryLog(tmp_path, capacity=4, persist_seconds=0.0)
    for i in range(6):
        log.record("kb", "text", [float(i), 1.0])
    assert log.recent("kb", "text")[:, 0].tolist() == [2.0, 3.0, 4.0, 5.0]
    other = QueryLog(tmp_path)  # another process reads what the first wrote
    assert other.recent("kb", "text")[:, 0].tolist() == [2.0, 3.0, 4.0, 5.0]
    log.record("kb", "clip-text", [1.0, 0.0])
    log.record("kb", "clip-image", [0.0, 1.0])
    assert len(log.recent("kb", "clip")) == 2 and len(log.recent("kb", "nothing")) == 0


@pytest.mark.parametrize("backend", ["chroma", "memory", "split-chroma"])
def test_stores_read_bounded_vector_samples_alike(backend: str, tmp_path: Path) -> None:
    """The vector reads drift adds to the stores agree between Chroma, the fake and the split store."""
    from mmrag.stores.chroma import ChromaStore, open_client
    from mmrag.stores.memory import InMemoryStore
    from mmrag.stores.split import ModalitySplitStore
    from mmrag.types import Record

    def open_store(name: str) -> object:
        return InMemoryStore(name) if backend == "memory" else ChromaStore(open_client(tmp_path), name, None)

    store: object = ModalitySplitStore(open_store("s-t"), open_store("s-i")) if backend == "split-chroma" \
        else open_store("s-one")
    vectors = np.eye(6, dtype=np.float32)
    store.upsert([Record(f"d{i // 2}#{'i' if i == 5 else 't'}{i}", vectors[i].tolist(),  # type: ignore[attr-defined]
                         {"doc_id": f"d{i // 2}", "modality": "image" if i == 5 else "text"}, "x")
                  for i in range(6)])
    assert store.embeddings(10).shape == (6, 6)  # type: ignore[attr-defined]
    assert len(store.embeddings(2, 1)) == 2 and len(store.embeddings(10, 5)) == 1  # type: ignore[attr-defined]
    assert store.embeddings(0).size == 0  # type: ignore[attr-defined]
    got = store.embeddings_of(["d0", "d2"], 10)  # type: ignore[attr-defined]
    assert sorted(map(int, got.argmax(axis=1))) == [0, 1, 4, 5]
    assert len(store.embeddings_of(["d0", "d2"], 3)) == 3  # type: ignore[attr-defined]
    assert store.embeddings_of(["nothing"], 10).size == 0  # type: ignore[attr-defined]


# -- the reference is built at index time, once -------------------------------------------------------
def test_reference_is_built_at_the_first_ingest_only(hashing_kb, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from mmrag.indexing import Indexer

    with pytest.raises(NotFoundError):
        drift.score(hashing_kb)
    Indexer(hashing_kb).ingest([write_corpus(tmp_path / "a", 30, seed=1)])
    first = drift.load(hashing_kb.manifest, hashing_kb.collection)
    assert set(first) == set(drift.MODALITIES) and first["text"].count == 30 and first["clip-image"].count == 0
    Indexer(hashing_kb).ingest([write_corpus(tmp_path / "b", 30, seed=2)])
    again = drift.load(hashing_kb.manifest, hashing_kb.collection)
    assert again["text"].count == 30 and again["text"].created_at == first["text"].created_at
    report = drift.score(hashing_kb, recent=30)
    assert report.recent_documents == 30 and report.documents["text"].n_recent == 30


def test_a_failing_reference_never_fails_the_ingest(  # type: ignore[no-untyped-def]
        hashing_kb, tmp_path: Path, monkeypatch, caplog) -> None:
    from mmrag.indexing import Indexer

    def broken(kb: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(drift, "build_reference", broken)
    summary = Indexer(hashing_kb).ingest([write_corpus(tmp_path / "a", 5, seed=1)])
    assert summary.indexed == 5
    assert "drift reference" in caplog.text and not drift.load(hashing_kb.manifest, hashing_kb.collection)


# -- acceptance: shapes arriving in a text knowledge base ------------------------------------------------
def test_score_rises_when_shapes_are_ingested_into_a_text_kb(offline_kb, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from mmrag.cli import main
    from mmrag.indexing import Indexer

    indexer = Indexer(offline_kb)
    indexer.ingest([write_corpus(tmp_path / "first", 120, seed=1)])
    indexer.ingest([write_corpus(tmp_path / "second", 80, seed=2)])
    same = drift.score(offline_kb, recent=80)
    print("same distribution:", {m: s.to_dict() for m, s in same.documents.items()})
    assert not same.drifted
    for modality in ("text", "clip", "clip-text"):
        assert same.documents[modality].score is not None and same.documents[modality].score < THRESHOLD / 2

    indexer.ingest([easyvqa_images(tmp_path / "shapes", 100)])
    shifted = drift.score(offline_kb, recent=100)
    print("shapes:", {m: s.to_dict() for m, s in shifted.documents.items()})
    # The whole CLIP space shows it: its reference never held an image. The image half had no
    # reference at all, and the text spaces got no new records.
    assert shifted.drifted
    assert shifted.documents["clip"].score is not None and shifted.documents["clip"].score > THRESHOLD
    assert shifted.documents["clip-image"].score is None and shifted.documents["text"].n_recent == 0

    # The CLI says the same, and --fail turns it into exit status 4.
    data_dir = offline_kb.data_dir
    result = CliRunner().invoke(main, ["drift", "test", "--recent", "100", "--data-dir", str(data_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["documents"]["clip"]["score"] > THRESHOLD
    result = CliRunner().invoke(main, ["drift", "test", "--recent", "100", "--fail", "--data-dir", str(data_dir)])
    assert result.exit_code == 4, result.output
    assert "DRIFTED" in result.output
    # Accepting the new distribution: --rebuild makes the current content (text and shapes) the reference.
    result = CliRunner().invoke(main, ["drift", "test", "--recent", "300", "--rebuild", "--fail", "--json",
                                       "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["documents"]["clip-image"]["n_reference"] == 100


# -- /metrics from a running server --------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.long  # 24 s: a real server started to export one gauge; the drift computation is tested in-process above
def test_running_server_exports_drift_scores(tmp_path: Path) -> None:
    from mmrag.cli import main
    from mmrag.kb import release_embedded_store
    from tests.conftest import free_port, wait_http

    data_dir = tmp_path / "data"
    for folder in (write_corpus(tmp_path / "notes", 60, seed=3), easyvqa_images(tmp_path / "shapes", 40)):
        result = CliRunner().invoke(main, ["ingest", str(folder), "--profile", "offline", "--data-dir", str(data_dir),
                                           "--collection", "kb"])
        assert result.exit_code == 0, result.output
    release_embedded_store(data_dir)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_")} | {"MMRAG_API__AUTH": "false"}
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "mmrag", "serve", "--profile", "offline", "--data-dir",
                             str(data_dir), "--collection", "kb", "--port", str(port)],
                            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/readyz", 180, proc)
        deadline, text = time.monotonic() + 60, ""
        while time.monotonic() < deadline:  # the first scrape starts the background refresh
            text = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
            if 'mmrag_drift_score{collection="kb",modality="clip",version="kb@1"}' in text:
                break
            time.sleep(0.5)
        lines = [line for line in text.splitlines() if line.startswith("mmrag_drift_score{")]
        print("\n".join(lines))
        assert any('modality="clip"' in line and 'version="kb@1"' in line for line in lines), text[-3000:]
        assert "mmrag_drift_threshold 0.2" in text
        # The route scores on demand; a search's query vectors join the recent queries.
        body = json.dumps({"collection": "kb", "query": "a red circle", "k": 3}).encode()
        request = urllib.request.Request(f"{url}/v1/search", body, {"Content-Type": "application/json"})
        assert urllib.request.urlopen(request, timeout=60).status == 200
        with urllib.request.urlopen(f"{url}/v1/collections/kb/drift?recent=40", timeout=60) as reply:
            report = json.loads(reply.read())
        assert report["version"] == "kb@1" and report["documents"]["clip"]["score"] > THRESHOLD
        assert report["queries"]["clip-text"]["n_recent"] == 1
    except BaseException:
        print(log.read_text()[-5000:])
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
