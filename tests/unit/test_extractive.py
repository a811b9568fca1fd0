"""Extractive answers, the calibrated abstention gate, and the answer modes (issue 14)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from mmrag.answering import ABSTAIN_TEXT, Answerer
from mmrag.config import Settings
from mmrag.errors import InvalidInputError
from mmrag.extractive import DEFAULT_CALIBRATION, FEATURES, AbstentionGate, Extractor, split_passage
from mmrag.llms.echo import EchoChatModel
from mmrag.registry import answer_mode, answer_options
from mmrag.types import Hit


class BagOfWords:
    """A fake text model whose cosine grows with shared words (so the extractor has something to rank)."""

    name = "bag-of-words"

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), 256), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                out[i, hash(word) % 256] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def _hit(n: int, text: str, doc: str) -> Hit:
    return Hit(id=f"h{n}", doc_id=doc, source=f"/data/{doc}", modality="text", score=0.5, page=None, text=text,
               metadata={})


TOWER = _hit(1, "Paris has many bridges. The Eiffel Tower is 330 metres tall. It was completed in 1889.", "eiffel.txt")
RIVER = _hit(2, "The Seine flows through Paris.The river is 777 km long.", "seine.txt")
OPEN = {"features": list(FEATURES), "coef": [1.0, 1.0, 1.0], "intercept": 0.0, "mean": [0.0, 0.0, 0.0],
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
    assert set(answer.signals or {}) == set(FEATURES)
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
    assert set(answer.abstention["features"]) == set(FEATURES) and answer.abstention["calibration"] == "unit test"
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
    for name in FEATURES:
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
    assert "gate" in answer_options(s, BagOfWords(), "extractive")
    assert "gate" not in answer_options(s, BagOfWords(), "generate")
    assert "gate" in answer_options(Settings(answer={"gate": True}), BagOfWords(), "generate")
