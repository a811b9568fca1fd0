"""One text analysis (mmrag.textanalysis) for the guard, the gate, the detector and the keyword index."""

from __future__ import annotations

from mmrag.answering import Answerer
from mmrag.keyword import analyze
from mmrag.llms.echo import EchoChatModel
from mmrag.textanalysis import content_tokens, content_words, stem
from mmrag.types import Hit
from mmrag.answering.verification import HallucinationDetector

CONTEXT = "Curie isolating radium required refining and crushing tonnes of pitchblende."
QUESTION = "What did Curie isolate?"
# Every content word of the answer is a context word in another inflection.
ANSWER = "Curie isolated radium from refined, crushed pitchblende [1]."


def test_numbers_keep_their_digits_and_words_are_snowball_stems() -> None:
    assert content_tokens("The towers were 1,000 metres tall in 3.5 days") == ["tower", "1000", "metr", "tall", "3.5",
                                                                                 "day"]
    assert content_words("Therefore, it typically helps safety") == {"safeti"}
    assert "help" in content_words("Therefore, it typically helps safety", drop_discourse=False)


def test_the_guard_and_the_detector_agree_on_an_inflected_paraphrase() -> None:
    model = EchoChatModel()
    model.enqueue(ANSWER)
    hit = Hit(id="h1", doc_id="curie.txt", source="/data/curie.txt", modality="text", score=0.9, text=CONTEXT)
    answer = Answerer(model).answer(QUESTION, [hit])
    verdict = HallucinationDetector(None).verify(CONTEXT, ANSWER.replace(" [1]", ""), QUESTION)
    # The guard used to stem by dropping a final "s" only, so it found 2 of 5 words and refused what
    # the detector (Snowball) accepts.
    assert not verdict.hallucinated
    assert answer.guard == "supported" and not answer.abstained


def test_the_keyword_index_stems_as_the_answer_checks_do() -> None:
    assert analyze("dividing cells") == [stem("dividing"), stem("cells")]
