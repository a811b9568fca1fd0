"""The grounding check (issue 25): a question naming what its context never mentions is refused, and says what."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmrag.answering import ABSTAIN_TEXT, Answerer
from mmrag.errors import InvalidInputError
from mmrag.answering.extractive import Extractor
from mmrag.answering.guard import DEFAULT_CALIBRATION, FEATURES, AbstentionGate
from mmrag.answering.grounding import check_grounding, question_terms
from mmrag.types import Hit
from tests.helpers.text_models import BagOfWords


#: A gate that answers whatever the cosines say (every signal here is positive): only the check refuses.
OPEN = {"features": list(FEATURES[:3]), "coef": [1.0, 1.0, 1.0], "intercept": 0.0, "mean": [0.0, 0.0, 0.0],
        "scale": [1.0, 1.0, 1.0], "threshold": 0.5, "fitted_on": "unit test", "text_model": "bag-of-words"}

LOUVRE = ("The Louvre in Paris opened to the public in 1793. About 1,200 works were shown at first. "
          "The U.S. lent three paintings in 2011.")


def _terms(question: str) -> list[str]:
    return [t.text for t in question_terms(question)]


def test_names_numbers_and_quotes_are_the_terms_and_the_first_word_is_not() -> None:
    assert _terms("Which museum in Paris opened in 1793?") == ["Paris", "1793"]
    assert _terms("Barack Obama was born in which state?") == ["Obama"]  # "Barack" starts the sentence
    assert _terms('Who painted "The Raft of the Medusa" for the Louvre?') == ["The Raft of the Medusa", "Louvre"]
    assert _terms("HIV outcomes improve with a main partner.") == ["HIV"]  # an acronym counts anywhere
    assert _terms("how much does a ticket cost") == []


def test_a_changed_year_is_refused_and_named() -> None:
    verdict = check_grounding("What opened in Paris in 1795?", [LOUVRE])
    assert not verdict.grounded and [t.text for t in verdict.missing] == ["1795"]
    assert verdict.reason == "the context never mentions '1795'"
    assert check_grounding("What opened in Paris in 1793?", [LOUVRE]).grounded


def test_a_changed_entity_is_refused_and_an_entity_in_the_context_is_answered() -> None:
    assert check_grounding("When did the Louvre in Berlin open?", [LOUVRE]).reason == \
        "the context never mentions 'Berlin'"
    assert check_grounding("When did the Louvre in Paris open?", [LOUVRE]).grounded


def test_case_accents_and_plurals_are_lenient() -> None:
    assert check_grounding("Is the LOUVRE open on Sundays?", ["The Louvre is open every Sunday."]).grounded
    assert check_grounding("Which river flows through Zürich?", ["The Limmat flows through Zurich."]).grounded
    assert not check_grounding("Is the Louvre open on Mondays?", ["The Louvre is open every Sunday."]).grounded


def test_numbers_match_with_or_without_thousands_separators_and_as_words() -> None:
    assert check_grounding("Were 1200 works shown?", [LOUVRE]).grounded
    assert check_grounding("Were 1,200 works shown?", ["About 1200 works were shown."]).grounded
    assert check_grounding("Did the U.S. lend 3 paintings?", [LOUVRE]).grounded  # "three"
    assert not check_grounding("Were 1,300 works shown?", [LOUVRE]).grounded
    assert not check_grounding("Were 12 works shown?", ["About 1,200 works were shown."]).grounded


def test_acronyms_match_their_long_form_both_ways() -> None:
    assert check_grounding("What did the United States lend in 2011?", [LOUVRE]).grounded
    assert check_grounding("What did the U.S. lend?", ["The United States lent three paintings."]).grounded
    assert check_grounding("What did the US lend?", ["The United States lent three paintings."]).grounded
    assert not check_grounding("What did the U.K. lend?", ["The United States lent three paintings."]).grounded
    # an acronym of three letters or more may be spelled out in lower case; a name is never read as initials
    assert check_grounding("Does ROS kill neurons?", ["Reactive oxygen species kill neurons."]).grounded
    assert not check_grounding("When did the Sydney Harbour Bridge open?", ["She has been there."]).grounded


def test_a_multi_word_name_is_found_by_its_words_and_honorifics_are_not_needed() -> None:
    assert check_grounding("Where was President Obama born?", ["Barack Obama was born in Honolulu."]).grounded
    assert check_grounding("Who founded the Bank of America?", ["Amadeo Giannini founded the bank, later "
                                                                 "renamed Bank of America."]).grounded
    verdict = check_grounding("Who founded the Bank of Italy?", ["Bank of America was founded in 1904."])
    assert [t.text for t in verdict.missing] == ["Bank of Italy"]
    verdict = check_grounding("Are Chris Carter and Theo van Gogh both Dutch?", ["Theo van Gogh was Dutch."])
    assert verdict.reason == "the context never mentions 'Chris Carter'"  # two names, the missing one named


def _hit(doc_id: str, text: str) -> Hit:
    return Hit(id=f"{doc_id}#0", doc_id=doc_id, source=doc_id, modality="text", score=0.9, text=text)


MUSEUM = _hit("museum.md", "The Louvre in Paris opened to the public in 1793. It shows the Mona Lisa in the Salle des "
                           "Etats.")
PARK = _hit("park.md", "The city park opens at seven in the morning. Dogs must be kept on a lead.")


def test_the_answerer_refuses_an_ungrounded_question_with_the_term_and_answers_the_grounded_one() -> None:
    gate = AbstentionGate.from_dict({**OPEN, "grounding": "context"})
    answerer = Answerer(None, mode="extractive", extractor=Extractor(BagOfWords()), gate=gate)
    refused = answerer.answer("When did the Louvre in Berlin open to the public?", [MUSEUM, PARK])
    assert refused.abstained and refused.text == ABSTAIN_TEXT and refused.guard == "abstained:ungrounded"
    assert refused.abstention is not None and refused.abstention["answer"] is False
    assert refused.abstention["reason"] == "the context never mentions 'Berlin'"
    assert refused.abstention["missing"] == ["Berlin"] and "p_answerable" in refused.abstention
    answered = answerer.answer("When did the Louvre in Paris open to the public?", [MUSEUM, PARK])
    assert not answered.abstained and "1793" in answered.text
    # without the check the same gate answers the near miss: the check is what refuses it
    ungated = Answerer(None, mode="extractive", extractor=Extractor(BagOfWords()), gate=AbstentionGate.from_dict(OPEN))
    assert not ungated.answer("When did the Louvre in Berlin open to the public?", [MUSEUM, PARK]).abstained


def test_the_cited_scope_looks_only_in_the_blocks_the_answer_stands_on() -> None:
    def answerer(scope: str) -> Answerer:
        return Answerer(None, mode="extractive", extractor=Extractor(BagOfWords(), hops=1),
                        gate=AbstentionGate.from_dict({**OPEN, "grounding": scope}))

    question = "When did the Louvre open to the public, before the Lead rule?"  # "Lead" is only in the park's block
    context = answerer("context").answer(question, [MUSEUM, PARK])
    assert not context.abstained and context.citations[0].doc_id == "museum.md"
    cited = answerer("cited").answer(question, [MUSEUM, PARK])
    assert cited.abstained and cited.abstention is not None and cited.abstention["scope"] == "cited"
    assert cited.abstention["reason"] == "the document the answer would cite never mentions 'Lead'"


def test_a_calibration_names_a_known_scope(tmp_path: Path) -> None:
    bad = tmp_path / "gate.json"
    bad.write_text(json.dumps({**OPEN, "grounding": "everywhere"}))
    with pytest.raises(InvalidInputError, match="grounding must be one of context, cited"):
        AbstentionGate.load(bad)
    shipped = json.loads(DEFAULT_CALIBRATION.read_text(encoding="utf-8"))
    assert AbstentionGate.load().grounding == shipped.get("grounding")
    # A setting overrides the file's choice either way.
    assert AbstentionGate.load(grounding="cited").grounding == "cited"
    assert AbstentionGate.from_dict({**shipped, "grounding": "cited"}, grounding="off").grounding is None
