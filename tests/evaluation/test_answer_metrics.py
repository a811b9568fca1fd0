"""Answer metrics: SQuAD EM/F1, contains-the-reference, cites-gold and abstention precision/recall."""

from mmrag.evaluation.answers import answer_scores, contains_reference, exact_match, token_f1


def test_squad_normalisation_and_scores() -> None:
    assert exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert exact_match("Eiffel", "Eiffel Tower") == 0.0
    assert abs(token_f1("Eiffel", "Eiffel Tower") - 2 / 3) < 1e-9
    assert token_f1("Paris", "London") == 0.0
    assert contains_reference("It is 330 metres tall [1].", "330 metres") == 1.0
    assert contains_reference("It is 3300 metres tall.", "330 metres") == 0.0  # whole words only


def test_answer_scores_by_case() -> None:
    answered = {"text": "It is 330 metres tall.", "abstained": False, "citations": ["eiffel.txt"]}
    refused = {"text": "I don't know", "abstained": True, "citations": []}
    gold = frozenset({"eiffel.txt"})
    got = answer_scores(answered, reference="330 metres", relevant=gold, answerable=True)
    assert got["contains_reference"] == 1.0 and got["cites_gold"] == 1.0 and "abstention_recall" not in got
    got = answer_scores(refused, reference="330 metres", relevant=gold, answerable=True)
    assert got["contains_reference"] == 0.0 and got["abstention_precision"] == 0.0 and "cites_gold" not in got
    got = answer_scores(refused, reference=None, relevant=frozenset(), answerable=False)
    assert got == {"abstention_recall": 1.0, "abstention_precision": 1.0}
    got = answer_scores(answered, reference=None, relevant=frozenset(), answerable=False)
    assert got == {"abstention_recall": 0.0}
    assert answer_scores(None, reference="x", relevant=gold, answerable=True) == {}
