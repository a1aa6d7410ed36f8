"""SQuAD v1.1 exact match and F1, with the official semantics (our own implementation).

An answer is normalized by lowercasing, dropping punctuation, dropping the articles a/an/the
and collapsing whitespace. EM is 1 when the normalized strings are equal; F1 is the harmonic
mean of token precision and recall (tokens counted with multiplicity). Each question takes
the best score over its gold answers; the dataset scores are means, in percent.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Mapping[str, str], golds: Mapping[str, Sequence[str]]) -> dict:
    """``exact_match`` and ``f1`` in percent over every question in ``golds``; a question
    without a prediction scores 0."""
    em = f = 0.0
    for qid, answers in golds.items():
        pred = predictions.get(qid, "")
        em += max(exact_match(pred, a) for a in answers)
        f += max(f1(pred, a) for a in answers)
    n = max(len(golds), 1)
    return {"exact_match": 100 * em / n, "f1": 100 * f / n}
