"""Judging answers: a model's greedy answer against the sample's ``answer`` and
``event_visible_answer``, by exact match and token-level F1, overall and per question type.

Normalisation (both metrics): lower case, punctuation dropped, whitespace collapsed. Articles are
kept: "a"/"an" are part of what the synthetic answers get right or wrong. Token F1 is SQuAD's:
the harmonic mean of precision and recall of the answer's word multiset.

``evspec eval`` (a run of :mod:`evspec.training.eval_run`) and the evaluation inside ``evspec
train`` both call :func:`evaluate_model`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evspec.data.dataset import Sample
from evspec.errors import InputError
from evspec.models.base import VisionLanguageModel

REFERENCES = ("answer", "event_visible_answer")
_PUNCTUATION = re.compile(r"[^\w\s]")


def normalize(text: str) -> list[str]:
    return _PUNCTUATION.sub(" ", text.lower()).split()


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction), normalize(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class Question:
    """One question about one sample, with the references it is judged against."""

    sample: Sample
    qtype: str
    query: str
    answer: str | None
    event_visible_answer: str | None

    @property
    def id(self) -> str:
        return f"{self.sample.id}/{self.qtype}"

    def reference(self, field: str) -> str | None:
        return self.answer if field == "answer" else self.event_visible_answer


def questions_of(samples: Iterable[Sample], all_types: bool = False) -> list[Question]:
    """The row's own question of each sample; with ``all_types``, every question the synthetic
    builder wrote for the sample's scene (``scene["qa"]``), where there is one."""
    out = []
    for s in samples:
        qa = (s.scene or {}).get("qa") if all_types else None
        if isinstance(qa, dict) and qa:
            for qtype, entry in qa.items():
                out.append(Question(s, qtype, entry["question"], entry.get("answer"), entry.get("event_visible_answer")))
        else:
            out.append(Question(s, s.question_type or "other", s.query, s.answer, s.event_visible_answer))
    return out


@dataclass(frozen=True)
class Judged:
    question_id: str
    qtype: str
    prediction: str
    scores: dict[str, dict[str, float]]  # reference field -> {"exact_match", "f1"}; absent reference: absent

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def judge(question: Question, prediction: str) -> Judged:
    scores = {}
    for field in REFERENCES:
        reference = question.reference(field)
        if reference is not None:
            scores[field] = {"exact_match": exact_match(prediction, reference), "f1": token_f1(prediction, reference)}
    return Judged(question.id, question.qtype, prediction, scores)


def summarize(judged: Sequence[Judged]) -> dict[str, Any]:
    """``{field: {"exact_match", "f1", "n", "by_type": {qtype: {...}}}}`` over the judged answers."""
    summary: dict[str, Any] = {}
    for field in REFERENCES:
        rows = [j for j in judged if field in j.scores]
        if not rows:
            continue
        summary[field] = {**_means(rows, field), "by_type": {
            qtype: _means([j for j in rows if j.qtype == qtype], field) for qtype in sorted({j.qtype for j in rows})
        }}
    return summary


def _means(rows: Sequence[Judged], field: str) -> dict[str, float]:
    n = len(rows)
    return {"exact_match": sum(j.scores[field]["exact_match"] for j in rows) / n,
            "f1": sum(j.scores[field]["f1"] for j in rows) / n, "n": n}


def judge_answer_file(path: Path, questions: Sequence[Question]) -> list[Judged]:
    """Judge answers someone else produced: a JSON-lines file of ``{"id": ..., "prediction": ...}``
    rows, ``id`` being a question's id (``SAMPLE`` for the row's own question, ``SAMPLE/TYPE`` for
    one of ``--all-questions``). Every question must have exactly one answer."""
    by_id = {q.id: q for q in questions}
    by_id.update({q.sample.id: q for q in questions if q.qtype == (q.sample.question_type or "other")})
    judged: dict[str, Judged] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the answers ({error})", path) from error
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as error:
            raise InputError(f"line {number} is not JSON ({error})", path) from error
        if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not isinstance(row.get("prediction"), str):
            raise InputError(f'line {number}: expected {{"id": str, "prediction": str}}', path)
        question = by_id.get(row["id"])
        if question is None:
            raise InputError(f"line {number}: no question {row['id']!r} in the dataset", path)
        if question.id in judged:
            raise InputError(f"line {number}: a second answer to {row['id']!r}", path)
        judged[question.id] = judge(question, row["prediction"])
    missing = [q.id for q in questions if q.id not in judged]
    if missing:
        raise InputError(f"{len(missing)} question(s) without an answer, e.g. {missing[0]!r}", path)
    return [judged[q.id] for q in questions]


def evaluate_model(model: VisionLanguageModel, questions: Sequence[Question], *, max_new_tokens: int = 64,
                   on_answer: Callable[[Judged], None] | None = None) -> list[Judged]:
    """Greedy answers (the decoupled path, as ``evspec spec``'s target alone) for each question,
    judged. The sample's visual input is read and preprocessed once for all its questions."""
    judged: list[Judged] = []
    visual_cache: dict[str, Any] = {}
    for question in questions:
        sid = question.sample.id
        if sid not in visual_cache:
            visual_cache.clear()  # one sample's frames at a time: questions come grouped by sample
            visual_cache[sid] = model.load(question.sample)
        prepared = model.preprocess(visual_cache[sid], question.query)
        ids = model.generate(prepared, max_new_tokens=max_new_tokens).token_ids
        result = judge(question, model.decode_text(ids))
        judged.append(result)
        if on_answer is not None:
            on_answer(result)
    return judged
