"""The offline hallucination detector: sentence checks, marking, CV threshold, CLI and the ragas metric."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
from click.testing import CliRunner

from mmrag.embedders.hashing import HashingEmbedder
from mmrag.errors import InvalidInputError
from mmrag.evaluation.hallucination import cross_validate_threshold, load_answers
from mmrag.answering.verification import HallucinationDetector, Verdict, mark_unsupported
from mmrag.textanalysis import split_sentences

CONTEXT = ("The Eiffel Tower is 330 metres tall. It was completed in 1889 for the World's Fair in Paris. "
           "About seven million people visit it every year.")


class CountingEmbedder(HashingEmbedder):
    """The hashing fake, recording how many texts each call embeds."""

    def __init__(self) -> None:
        super().__init__(16)
        self.calls: list[int] = []

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return super().embed_texts(texts)


@pytest.fixture(params=["lexical", "hashing"])
def detector(request: pytest.FixtureRequest) -> HallucinationDetector:
    return HallucinationDetector(None if request.param == "lexical" else HashingEmbedder(16))


def test_copied_sentence_is_supported(detector: HallucinationDetector) -> None:
    verdict = detector.verify(CONTEXT, "The Eiffel Tower is 330 metres tall.", "How tall is the Eiffel Tower?")
    assert not verdict.hallucinated
    assert verdict.score < 0.1
    assert [s.supported for s in verdict.sentences] == [True]


def test_number_absent_from_context_is_flagged(detector: HallucinationDetector) -> None:
    verdict = detector.verify(CONTEXT, "The Eiffel Tower is 330 metres tall. It was completed in 1887 by 4500 workers.")
    first, second = verdict.sentences
    assert first.supported and not second.supported
    assert any("1887" in r and "numbers" in r for r in second.reasons)
    assert verdict.hallucinated


def test_one_wrong_number_is_enough(detector: HallucinationDetector) -> None:
    verdict = detector.verify("The tower is 330 metres tall.", "The tower is 450 metres tall.")
    assert verdict.hallucinated and not verdict.sentences[0].supported


def test_invented_names_are_flagged() -> None:
    verdict = HallucinationDetector(None).verify(CONTEXT, "It was designed by Gustave Eiffel and Maurice Koechlin.")
    assert verdict.hallucinated
    assert any(r.startswith("names not in the context") for r in verdict.sentences[0].reasons)


def test_refusal_is_supported(detector: HallucinationDetector) -> None:
    answer = ("Unable to answer based on given passages. The passages do not contain information about the "
              "tower's colour or its lifts.")
    verdict = detector.verify(CONTEXT, answer, "What colour is the Eiffel Tower?")
    assert not verdict.hallucinated
    assert verdict.score == 0.0
    assert all(s.supported and s.reasons == ("refusal: claims nothing",) for s in verdict.sentences)


def test_admitted_outside_knowledge_is_unsupported() -> None:
    answer = "It is painted brown, although this is not mentioned in the passages."
    verdict = HallucinationDetector(None).verify(CONTEXT, answer)
    assert verdict.hallucinated
    assert "says its content is not in the passages" in verdict.sentences[0].reasons


def test_question_words_and_passage_lists_count_as_context() -> None:
    detector = HallucinationDetector(None)
    verdict = detector.verify(["The tower is 330 metres tall.", "It opened in 1889."],
                              "The Eiffel Tower opened in 1889.", "When did the Eiffel Tower open?")
    assert not verdict.hallucinated


def test_sentence_offsets_index_the_answer() -> None:
    answer = "Steps:\n1. Boil water. 2. Add the eggs.\n\nDone after 12 minutes! Serve."
    spans = split_sentences(answer)
    texts = [answer[s:e] for s, e in spans]
    assert texts == ["Steps:", "1. Boil water.", "2. Add the eggs.", "Done after 12 minutes!", "Serve."]
    verdict = HallucinationDetector(None).verify("Boil water, add the eggs, wait 12 minutes, serve.", answer)
    assert all(answer[s.start:s.end] == s.text for s in verdict.sentences)


def test_verify_many_embeds_each_distinct_text_once() -> None:
    embedder = CountingEmbedder()
    detector = HallucinationDetector(embedder)
    items = [(CONTEXT, "The tower is 330 metres tall.", None)] * 3
    verdicts = detector.verify_many(items)
    assert len(embedder.calls) == 1
    # 3 context sentences + 1 answer sentence, however many items share them.
    assert embedder.calls[0] == 4
    assert verdicts[0] == verdicts[2] == detector.verify(*items[0])


def test_bad_inputs_raise() -> None:
    with pytest.raises(InvalidInputError):
        HallucinationDetector(None, threshold=1.5)
    with pytest.raises(InvalidInputError):
        HallucinationDetector(None).verify(42, "text")  # type: ignore[arg-type]


def test_mark_and_drop_unsupported_sentences() -> None:
    answer = "The Eiffel Tower is 330 metres tall. It was completed in 1887 by 4500 workers. It is in Paris."
    verdict = HallucinationDetector(None).verify(CONTEXT, answer)
    assert [s.supported for s in verdict.sentences] == [True, False, True]
    assert mark_unsupported(answer, verdict) == (
        "The Eiffel Tower is 330 metres tall. It was completed in 1887 by 4500 workers. [unsupported] It is in Paris.")
    assert mark_unsupported(answer, verdict, mode="drop") == "The Eiffel Tower is 330 metres tall. It is in Paris."
    assert mark_unsupported("Other text entirely.", Verdict(0.0, False, ())) == "Other text entirely."
    with pytest.raises(InvalidInputError):
        mark_unsupported(answer, verdict, mode="hide")
    with pytest.raises(InvalidInputError):
        mark_unsupported("A different answer, of another length entirely here.", verdict)


def test_cross_validation_on_separable_and_noisy_scores() -> None:
    rng = np.random.default_rng(1)
    labels = np.array([0] * 60 + [1] * 40)
    result = cross_validate_threshold(labels * 0.6 + rng.uniform(0, 0.3, 100), labels, folds=5)
    assert result.balanced_accuracy == 1.0 and result.f1 == 1.0
    assert (result.tn, result.fp, result.fn, result.tp) == (60, 0, 0, 40)
    assert len(result.thresholds) == 5 and all(0.3 <= t <= 0.6 for t in result.thresholds)
    noisy = cross_validate_threshold(labels * 0.3 + rng.uniform(0, 0.6, 100), labels, folds=4, seed=3)
    assert 0.6 < noisy.balanced_accuracy < 1.0
    assert noisy.tn + noisy.fp + noisy.fn + noisy.tp == 100
    scores = rng.uniform(0, 1, 100)
    assert cross_validate_threshold(scores, labels, seed=7) == cross_validate_threshold(scores, labels, seed=7)
    with pytest.raises(InvalidInputError):
        cross_validate_threshold([0.1, 0.2], [0, 1], folds=5)


def test_load_answers_names_line_and_field(tmp_path: Path) -> None:
    good = {"context": CONTEXT, "answer": "It is 330 metres tall.", "label": 0}
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({"context": CONTEXT}) + "\n")
    with pytest.raises(InvalidInputError, match=r"line 2: missing field 'answer'"):
        load_answers(path)
    path.write_text(json.dumps(good) + "\n\n{not json\n")
    with pytest.raises(InvalidInputError, match=r"line 3: not valid JSON"):
        load_answers(path)
    path.write_text(json.dumps({**good, "label": 2}) + "\n")
    with pytest.raises(InvalidInputError, match=r"line 1: field 'label'"):
        load_answers(path)


def _labelled_file(tmp_path: Path) -> Path:
    rows = []
    for i in range(6):
        rows.append({"id": f"ok{i}", "context": CONTEXT, "answer": "The Eiffel Tower is 330 metres tall.", "label": 0})
        rows.append({"id": f"bad{i}", "context": CONTEXT, "label": 1,
                     "answer": f"It was built in {1700 + i} by Gustave Eiffel and {100 + i} Scottish masons."})
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_reports_cv_and_default_threshold(tmp_path: Path) -> None:
    from mmrag.cli import main

    path = _labelled_file(tmp_path)
    result = CliRunner().invoke(main, ["eval", "hallucination", str(path), "--lexical", "--json", "--folds", "3"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["labelled"] == 12 and report["positives"] == 6
    assert report["default"]["balanced_accuracy"] == 1.0
    assert report["cv"]["balanced_accuracy"] == 1.0 and len(report["cv"]["thresholds"]) == 3
    assert report["cv"]["confusion"] == {"tn": 6, "fp": 0, "fn": 0, "tp": 6}
    text = CliRunner().invoke(main, ["eval", "hallucination", str(path), "--lexical", "--folds", "3"])
    assert text.exit_code == 0 and "3-fold CV threshold" in text.output and "bal. acc" in text.output


def test_cli_without_enough_labels_skips_cv(tmp_path: Path) -> None:
    from mmrag.cli import main

    path = tmp_path / "few.jsonl"
    path.write_text("".join(json.dumps(json.loads(line)) + "\n" for line in _labelled_file(tmp_path).read_text().splitlines()[:4]))
    result = CliRunner().invoke(main, ["eval", "hallucination", str(path), "--lexical"])
    assert result.exit_code == 0, result.output
    assert "no cross-validation" in result.output and "threshold 0.50" in result.output


def test_cli_error_names_line(tmp_path: Path) -> None:
    from mmrag.cli import main

    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps({"answer": "x"}) + "\n")
    result = CliRunner().invoke(main, ["eval", "hallucination", str(path), "--lexical"])
    assert result.exit_code == 1
    assert "line 1: missing field 'context'" in result.output


def test_ragas_metric_scores_through_ragas() -> None:
    pytest.importorskip("ragas")
    from ragas.metrics.result import MetricResult

    from mmrag.faithfulness import OfflineFaithfulness

    metric = OfflineFaithfulness(HallucinationDetector(HashingEmbedder(16)))
    good = metric.score(user_input="How tall is it?", response="The Eiffel Tower is 330 metres tall.",
                        retrieved_contexts=[CONTEXT])
    assert isinstance(good, MetricResult) and good.value == pytest.approx(1.0, abs=0.05)
    bad = asyncio.run(metric.ascore(response="It was built in 1700 by 90 Scottish masons.",
                                    retrieved_contexts=[CONTEXT], user_input="Who built it?"))
    assert bad.value < 0.5 and "unsupported" in bad.reason
    batch = metric.batch_score([{"response": "The Eiffel Tower is 330 metres tall.", "retrieved_contexts": [CONTEXT]},
                                {"response": "It was built in 1700 by 90 Scottish masons.", "retrieved_contexts": [CONTEXT],
                                 "user_input": "Who built it?"}])
    assert [r.value for r in batch] == [pytest.approx(good.value), pytest.approx(bad.value)]
    binary = OfflineFaithfulness(binary=True)
    assert binary.score(response="It was built in 1700 by 90 Scottish masons.", retrieved_contexts=[CONTEXT]).value == 0.0
    with pytest.raises(InvalidInputError):
        metric.score(response="x", retrieved_contexts=[])


def test_the_ragas_metric_neither_sets_the_environment_nor_phones_home(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ragas")
    import importlib
    import os

    import ragas._analytics as analytics

    import mmrag.faithfulness

    monkeypatch.delenv("RAGAS_DO_NOT_TRACK", raising=False)
    importlib.reload(mmrag.faithfulness)
    assert "RAGAS_DO_NOT_TRACK" not in os.environ  # importing it used to set it
    sent: list[object] = []
    monkeypatch.setattr(analytics, "track", sent.append)
    monkeypatch.setattr(analytics._analytics_batcher, "add_evaluation", sent.append)
    metric = mmrag.faithfulness.OfflineFaithfulness()
    metric.score(response="The Eiffel Tower is 330 metres tall.", retrieved_contexts=[CONTEXT])
    asyncio.run(metric.ascore(response="It was built in 1700.", retrieved_contexts=[CONTEXT]))
    assert sent == []


def test_load_answers_on_a_missing_file_is_not_found(tmp_path: Path) -> None:
    from mmrag.errors import NotFoundError

    with pytest.raises(NotFoundError, match="no such file"):
        load_answers(tmp_path / "absent.jsonl")


# -- issue 25: the offline reader's support is one more signal ----------------------------------------
class ClaimReader:
    """A fake reader: a claim is supported (0.95) unless it holds one of the given phrases (0.05)."""

    def __init__(self, *false_phrases: str) -> None:
        self.false_phrases, self.calls = false_phrases, []  # type: ignore[var-annotated]

    def support(self, claims: Sequence[str], context: str) -> list[float]:
        self.calls.append((list(claims), context))
        return [0.05 if any(p in c for p in self.false_phrases) else 0.95 for c in claims]


def test_the_reader_flags_a_wrong_statement_made_of_the_contexts_own_words() -> None:
    # Every word of the second sentence is in the context, so the lexical checks cannot see the error.
    answer = "The Eiffel Tower is 330 metres tall. About seven million people completed it in 1889."
    lexical = HallucinationDetector(None).verify(CONTEXT, answer)
    assert not lexical.hallucinated
    reader = ClaimReader("seven million people completed")
    verdict = HallucinationDetector(None, reader=reader).verify(CONTEXT, answer)
    first, second = verdict.sentences
    assert verdict.hallucinated and first.supported and not second.supported
    assert any("reader support 0.05" in r for r in second.reasons)
    assert second.support == pytest.approx(0.05 * lexical.sentences[1].support)  # support x the reader's P
    assert reader.calls == [(["The Eiffel Tower is 330 metres tall.",
                              "About seven million people completed it in 1889."], CONTEXT)]
    # A supported answer stays supported.
    assert not HallucinationDetector(None, reader=ClaimReader()).verify(CONTEXT, answer).hallucinated
