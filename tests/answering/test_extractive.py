"""Extractive answers, the calibrated abstention gate, and the answer modes (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pytest

from mmrag.answering import ABSTAIN_TEXT, Answerer
from mmrag.config import Settings
from mmrag.errors import InvalidInputError
from mmrag.answering.extractive import Extractor
from mmrag.answering.guard import DEFAULT_CALIBRATION, FEATURES, AbstentionGate
from mmrag.answering.sentences import answer_sentences, clauses, is_heading, is_question, split_passage
from mmrag.llms.echo import EchoChatModel
from mmrag.registry import answer_mode, answer_options
from mmrag.types import Hit
from tests.helpers.text_models import BagOfWords


class PhraseReader:
    """A fake reader: a passage answers (0.9) when it holds one of the phrases it was given, else 0.1."""

    def __init__(self, *phrases: str) -> None:
        self.phrases, self.calls = phrases, []  # type: ignore[var-annotated]

    def answerability(self, question: str, passages: Sequence[str]) -> list[float]:
        self.calls.append((question, list(passages)))
        return [0.9 if any(p in passage for p in self.phrases) else 0.1 for passage in passages]


def _hit(n: int, text: str, doc: str) -> Hit:
    return Hit(id=f"h{n}", doc_id=doc, source=f"/data/{doc}", modality="text", score=0.5, page=None, text=text,
               metadata={})


TOWER = _hit(1, "Paris has many bridges. The Eiffel Tower is 330 metres tall. It was completed in 1889.", "eiffel.txt")
RIVER = _hit(2, "The Seine flows through Paris.The river is 777 km long.", "seine.txt")
OPEN = {"features": list(FEATURES[:3]), "coef": [1.0, 1.0, 1.0], "intercept": 0.0, "mean": [0.0, 0.0, 0.0],
        "scale": [1.0, 1.0, 1.0], "threshold": 0.5, "fitted_on": "unit test", "text_model": "bag-of-words"}


def test_passages_glued_without_a_space_are_split() -> None:
    assert split_passage("The Seine flows through Paris.The river is long. U.S. law applies.") == [
        "The Seine flows through Paris.", "The river is long.", "U.S. law applies."]


def test_the_extractor_ranks_the_sentence_that_answers() -> None:
    blocks = Answerer(EchoChatModel()).pack([TOWER, RIVER])
    got = Extractor(BagOfWords()).extract("How tall is the Eiffel Tower?", blocks)
    assert got is not None and got.best.text == "The Eiffel Tower is 330 metres tall." and got.best.block == 1
    assert 0 < got.best.score <= 1 and 0 < got.block_cos <= 1
    assert got.coverage == 1.0  # tall, eiffel, tower: all in block 1
    assert Extractor(BagOfWords()).extract("anything?", []) is None


def test_an_extractive_answer_needs_no_model_cites_its_block_and_streams() -> None:
    answerer = Answerer(None, mode="extractive", extractor=Extractor(BagOfWords(), hops=1))
    answer = answerer.answer("How long is the river Seine?", [TOWER, RIVER])
    assert answer.text == "The river is 777 km long. [2]" and not answer.abstained
    assert [c.doc_id for c in answer.citations] == ["seine.txt"] and answer.mode == "extractive"
    assert answer.guard == "extractive" and answer.model.startswith("mmrag-extractive/")
    assert set(answer.signals or {}) == set(FEATURES) - {"answerability"}  # no reader, no answerability
    deltas, holder = answerer.stream("How long is the river Seine?", [TOWER, RIVER])
    pieces = list(deltas)
    assert len(pieces) > 1 and "".join(pieces) == holder.answer.text == answer.text  # type: ignore[union-attr]


def test_the_second_hop_adds_the_sentence_closest_to_the_question_and_the_first() -> None:
    wife = _hit(1, "Ewan MacColl was married to Peggy Seeger. He sang many songs.", "maccoll.txt")
    peggy = _hit(2, "Peggy Seeger is an American folk singer. Folk music is old.", "seeger.txt")
    blocks = Answerer(EchoChatModel()).pack([wife, peggy])
    one = Extractor(BagOfWords(), hops=1).extract("What nationality was the wife of Ewan MacColl?", blocks)
    two = Extractor(BagOfWords(), hops=2).extract("What nationality was the wife of Ewan MacColl?", blocks)
    assert one is not None and two is not None and [x.text for x in one.chosen] == [one.best.text]
    assert [x.text for x in two.chosen] == ["Ewan MacColl was married to Peggy Seeger.",
                                            "Peggy Seeger is an American folk singer."]
    answer = Answerer(None, mode="extractive", extractor=Extractor(BagOfWords())).answer(
        "What nationality was the wife of Ewan MacColl?", [wife, peggy])
    assert answer.text.endswith("American folk singer. [2]") and [c.n for c in answer.citations] == [1, 2]
    with pytest.raises(InvalidInputError, match="hops"):
        Extractor(BagOfWords(), hops=3)


def test_the_gate_refuses_below_its_threshold_and_says_why() -> None:
    refusing = AbstentionGate.from_dict({**OPEN, "intercept": -50.0})
    answerer = Answerer(None, mode="extractive", extractor=Extractor(BagOfWords()), gate=refusing)
    answer = answerer.answer("How long is the river Seine?", [TOWER, RIVER])
    assert answer.abstained and answer.text == ABSTAIN_TEXT and answer.guard == "abstained:calibrated"
    assert answer.abstention is not None and answer.abstention["p_answerable"] < 0.5
    assert set(answer.abstention["features"]) == set(FEATURES) - {"answerability"}
    assert answer.abstention["calibration"] == "unit test"
    opened = Answerer(None, mode="extractive", extractor=Extractor(BagOfWords()), gate=AbstentionGate.from_dict(OPEN))
    answer = opened.answer("How long is the river Seine?", [TOWER, RIVER])
    assert not answer.abstained and answer.abstention is not None and answer.abstention["answer"] is True
    # The gate runs before the model: a refusal makes no LLM call in generate mode either.
    model = EchoChatModel()
    gated = Answerer(model, mode="generate", extractor=Extractor(BagOfWords()), gate=refusing)
    assert gated.answer("How long is the river Seine?", [TOWER, RIVER]).guard == "abstained:calibrated"
    assert model.calls == []


def test_the_gate_probability_rises_with_each_signal() -> None:
    gate = AbstentionGate.from_dict(OPEN)
    low = gate.probability(dict.fromkeys(FEATURES, 0.1))
    for name in FEATURES[:3]:
        assert gate.probability({**dict.fromkeys(FEATURES, 0.1), name: 0.9}) > low


def test_auto_mode_replaces_a_reply_that_fails_its_checks_and_believes_a_refusal() -> None:
    model = EchoChatModel()
    model.enqueue("The river was named by Julius Caesar in 52 BC [2].", "I don't know.")
    answerer = Answerer(model, mode="auto", extractor=Extractor(BagOfWords(), hops=1))
    answer = answerer.answer("How long is the river Seine?", [TOWER, RIVER])
    assert answer.guard.startswith("extractive_fallback:") and answer.text == "The river is 777 km long. [2]"
    assert "Caesar" in answer.raw_text and answer.mode == "extractive"
    refused = answerer.answer("How long is the river Seine?", [TOWER, RIVER])
    assert refused.abstained and refused.guard == "abstained:model"


def test_bad_mode_combinations_and_calibrations_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="needs a chat model"):
        Answerer(None, mode="generate")
    with pytest.raises(InvalidInputError, match="needs an extractor"):
        Answerer(EchoChatModel(), mode="extractive")
    with pytest.raises(InvalidInputError, match="answer mode must be one of"):
        Answerer(EchoChatModel(), mode="guess")
    bad = tmp_path / "gate.json"
    bad.write_text(json.dumps({**OPEN, "features": ["block_cos"]}))
    with pytest.raises(InvalidInputError, match="gate.json"):
        AbstentionGate.load(bad)
    bad.write_text(json.dumps({**OPEN, "features": ["block_cos", "coverage", "vibes"]}))
    with pytest.raises(InvalidInputError, match="unknown abstention features.*vibes"):
        AbstentionGate.load(bad)
    bad.write_text("{not json")
    with pytest.raises(InvalidInputError, match="cannot read the abstention calibration"):
        AbstentionGate.load(bad)
    with pytest.raises(InvalidInputError, match="threshold"):
        AbstentionGate.from_dict({**OPEN, "threshold": 1.5})


def test_the_shipped_calibration_loads_and_names_what_it_was_fitted_on() -> None:
    data = json.loads(DEFAULT_CALIBRATION.read_text())
    gate = AbstentionGate.load()
    assert gate.threshold == data["threshold"] and "HaluEval" in gate.calibration and gate.text_model
    assert AbstentionGate.load(threshold=0.8).threshold == 0.8


def test_the_default_answer_mode_follows_the_model() -> None:
    s = Settings()
    assert answer_mode(s, "mmrag-local/smollm2-135m") == "extractive"
    assert answer_mode(s, "openai/gpt-4o-mini") == "generate"
    assert answer_mode(s, "openai/gpt-4o-mini", "auto") == "auto"
    assert answer_mode(Settings(answer={"mode": "auto"}), "mmrag-local/smollm2-135m") == "auto"
    reader = PhraseReader()
    assert "gate" in answer_options(s, BagOfWords(), "extractive", reader=reader)
    assert "gate" not in answer_options(s, BagOfWords(), "generate", reader=reader)
    assert "gate" in answer_options(Settings(answer={"gate": True}), BagOfWords(), "generate", reader=reader)
    assert answer_options(s, BagOfWords(), "extractive", reader=reader)["extractor"].reader is reader


# -- issue 25: headings and questions are never answers; one sentence, or the clause that answers ----------
FAQ = _hit(1, "Library guide\n\nWhen does the reading room open?\n\nThe reading room opens at 9:00 and closes at "
              "17:30 on weekdays. Bags must be left in the lockers.", "library.html")
LENDING = _hit(2, "# Lending\n\nBooks may be borrowed for three weeks. Reference works stay on their shelves.",
               "lending.md")


def test_headings_and_questions_are_never_answers_nor_appended_by_the_second_hop() -> None:
    answerer = Answerer(None, mode="extractive", extractor=Extractor(BagOfWords()))
    answer = answerer.answer("When does the reading room close on weekdays?", [FAQ, LENDING])
    assert answer.text.startswith("The reading room opens at 9:00 and closes at 17:30 on weekdays. [1]")
    assert "Library guide" not in answer.text and "?" not in answer.text and "Lending" not in answer.text
    blocks = Answerer(EchoChatModel()).pack([FAQ, LENDING])
    assert answer_sentences(blocks[0]) == ["The reading room opens at 9:00 and closes at 17:30 on weekdays.",
                                           "Bags must be left in the lockers."]
    assert answer_sentences(blocks[1]) == ["Books may be borrowed for three weeks.",
                                           "Reference works stay on their shelves."]


def test_what_counts_as_a_heading_or_a_question() -> None:
    assert is_heading("# Opening hours") and is_heading("Opening Hours") and is_heading("Maintenance log, third floor")
    assert is_heading("Visitor FAQ", "When is the building open?")
    assert not is_heading("The shuttle leaves from the east gate and", "stops at the station.")  # a wrapped line
    assert not is_heading("The shuttle leaves from the east gate", "every hour on the hour.")
    assert not is_heading("- Parking is free for members") and not is_heading("| Sunday | closed |")
    assert not is_heading("Closed on Sundays.") and not is_heading("Opening hours are long on weekdays for everyone "
                                                                    "who works in the building complex")
    assert is_question("When is the building open?") and is_question('He asked "is it open?"')
    assert not is_question("The building is open.")


def test_a_wrapped_paragraph_is_one_sentence_and_a_cut_block_keeps_only_what_it_shows() -> None:
    wrapped = _hit(1, "Shuttle service\n\nThe shuttle leaves from the east gate and\nstops at the station every hour. "
                      "It is free.", "shuttle.pdf")
    (block,) = Answerer(EchoChatModel()).pack([wrapped])
    assert answer_sentences(block) == ["The shuttle leaves from the east gate and stops at the station every hour.",
                                       "It is free."]
    (cut,) = Answerer(EchoChatModel(), max_block_chars=70).pack([wrapped])
    assert cut.content.endswith("\u2026")
    assert answer_sentences(cut) == ["The shuttle leaves from the east gate and stops at\u2026"[:-1].rstrip()]


def test_with_the_reader_one_sentence_answers_when_it_answers_on_its_own() -> None:
    question = "When does the reading room close on weekdays?"
    one = Extractor(BagOfWords(), reader=PhraseReader("17:30"), shorten=True).extract(question, Answerer(EchoChatModel()).pack([FAQ, LENDING]))
    assert one is not None and [x.text for x in one.chosen] == [
        "The reading room opens at 9:00 and closes at 17:30 on weekdays."]
    assert one.block_answerability == (0.9, 0.1) and one.features()["answerability"] == 0.9
    # Of the closest sentences, the one the reader finds answers on its own is the answer, alone.
    picked = Extractor(BagOfWords(), reader=PhraseReader("borrowed"), shorten=True).extract(question, Answerer(EchoChatModel()).pack([FAQ, LENDING]))
    assert picked is not None and [x.text for x in picked.chosen] == ["Books may be borrowed for three weeks."]
    assert picked.best.text.startswith("The reading room")  # the cosine ranking is unchanged
    # When no sentence answers by itself (the block does), the second hop still adds one.
    two = Extractor(BagOfWords(), reader=PhraseReader("weekdays. Bags"), shorten=True).extract(question, Answerer(EchoChatModel()).pack([FAQ, LENDING]))
    assert two is not None and len(two.chosen) == 2 and two.answerability == 0.9
    assert two.chosen[0].text.startswith("The reading room opens")


def test_a_long_sentence_is_cut_to_the_clause_the_reader_says_answers() -> None:
    long = _hit(1, "The museum, which was built in 1902 by the city council after a long public debate about its cost, "
                   "reopened in 2019 after a renovation that took four years; its east wing now holds the maritime "
                   "collection and a small cafe.", "museum.txt")
    question = "When did the museum reopen?"
    reader = PhraseReader("reopened in 2019")
    answer = Answerer(None, mode="extractive", extractor=Extractor(BagOfWords(), reader=reader, shorten=True)).answer(question, [long])
    assert answer.text.startswith("reopened in 2019") or "reopened in 2019" in answer.text
    assert len(answer.text) < len(long.text or "") and "maritime" not in answer.text and answer.text.endswith("[1]")
    extraction = Extractor(BagOfWords(), reader=reader, shorten=True).extract(question, Answerer(EchoChatModel()).pack([long]))
    assert extraction is not None and extraction.chosen[0].sentence == long.text  # the span keeps its sentence
    # No clause answers on its own: the whole sentence stands.
    whole = Extractor(BagOfWords(), reader=PhraseReader("no such phrase"), shorten=True).extract(question, Answerer(EchoChatModel()).pack([long]))
    assert whole is not None and whole.chosen[0].text == long.text and whole.chosen[0].sentence == ""
    assert len(clauses(long.text or "")) >= 2
    # By default the reader only informs the gate: the answer is the closest sentence, not a clause.
    default = Extractor(BagOfWords(), reader=reader).extract(question, Answerer(EchoChatModel()).pack([long]))
    assert default is not None and default.chosen[0].text == long.text and default.answerability == 0.9


READER_GATE = {**OPEN, "features": list(FEATURES), "coef": [1.0, 1.0, 1.0, 1.0], "mean": [0.0] * 4,
               "scale": [1.0] * 4, "min_answerability": 0.5}


def test_the_gate_refuses_a_near_miss_that_the_reader_says_no_passage_answers() -> None:
    gate = AbstentionGate.from_dict(READER_GATE)
    near_miss = "When does the reading room close on Sundays?"  # on topic, every signal high, not answered
    refused = Answerer(None, mode="extractive", extractor=Extractor(BagOfWords(), reader=PhraseReader("Sunday")),
                       gate=gate).answer(near_miss, [FAQ, LENDING])
    assert refused.abstained and refused.guard == "abstained:calibrated"
    assert refused.abstention is not None and refused.abstention["p_answerable"] >= 0.5  # the floor refused it
    assert refused.abstention["features"]["answerability"] == 0.1 and refused.abstention["min_answerability"] == 0.5
    answered = Answerer(None, mode="extractive", extractor=Extractor(BagOfWords(), reader=PhraseReader("17:30")),
                        gate=gate).answer("When does the reading room close on weekdays?", [FAQ, LENDING])
    assert not answered.abstained and "17:30" in answered.text
    with pytest.raises(InvalidInputError, match="reader"):
        Answerer(None, mode="extractive", extractor=Extractor(BagOfWords()), gate=gate).answer(near_miss, [FAQ])


def test_with_a_hosted_model_the_gate_runs_before_the_call(tmp_path: Path) -> None:
    calibration = tmp_path / "gate.json"
    calibration.write_text(json.dumps(READER_GATE))
    settings = Settings(answer={"gate": True, "calibration": str(calibration)})
    model = EchoChatModel()
    gated = Answerer(model, **answer_options(settings, BagOfWords(), "generate", reader=PhraseReader("Sunday")))
    answer = gated.answer("When does the reading room close on Sundays?", [FAQ, LENDING])
    assert answer.abstained and answer.guard == "abstained:calibrated" and model.calls == []
    model.enqueue("It closes at 17:30 [1].")
    open_ = Answerer(model, **answer_options(settings, BagOfWords(), "generate", reader=PhraseReader("17:30")))
    answer = open_.answer("When does the reading room close on weekdays?", [FAQ, LENDING])
    assert len(model.calls) == 1 and not answer.abstained and "17:30" in answer.text
