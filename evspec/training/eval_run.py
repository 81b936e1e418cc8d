"""An evaluation over a dataset (``evspec eval``): samples, resume, records, summary, report.

A model answers each sample's questions greedily (:func:`evspec.training.evaluate.evaluate_model`:
the row's own question, or every question of the clip with ``all_questions``), or a hand-made
answer file is judged (``answers``); each answer is scored by exact match and token F1 against the
sample's ``answer`` and ``event_visible_answer``. Files in the run folder:

    config.json     the run's identity (what a resume must match), config, environment, command
    records.jsonl   one JSON line per sample: ``id``, ``model`` (the model's name, or
                    ``answers:FILE``), ``questions`` (each judged answer: ``question_id``, ``qtype``,
                    ``prediction``, ``scores``), ``error``; flushed per line, so a killed run
                    resumes where it stopped
    summary.json    exact match and token F1 overall and per question type (``summary``), counts,
                    config, environment
    report.md       that summary as a markdown table

The run itself (identity check and ``force``, samples, ``config.json``, resume, the loop, the
files) is the run layer's one orchestrator (:func:`evspec.run.orchestrator.run_samples`), as the
bench's and the spec's are; :class:`EvalJob` is the eval's part. With no dataset a small synthetic
one is built into ``OUT/data``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from evspec.errors import EvspecError, InputError
from evspec.run.config import identity, identity_fields
from evspec.run.orchestrator import Loaded, RunPlan, SampleJob, run_samples
from evspec.run.rundir import RECORDS_NAME, REPORT_NAME, SUMMARY_NAME, dump_line, json_object
from evspec.run.shared import (
    ModelLoader,
    Reporter,
    SilentReporter,
    dataset_root,
    error_text,
    registry_loader_for,
    resolve_device,
    resolve_dtype,
)
from evspec.training.eval_config import EvalConfig as EvalConfig  # re-exported: the run's config lives there
from evspec.training.evaluate import Judged, evaluate_model, judge_answer_file, questions_of, summarize

if TYPE_CHECKING:
    from evspec.data.dataset import Sample

IDENTITY_FIELDS: tuple[str, ...] = (*identity_fields(EvalConfig), "answers_sha256")
"""The fields marked ``identity`` in :class:`~evspec.training.eval_config.EvalConfig`, and the
answer file's sha256 (a changed file is another evaluation): a rerun into the same folder must
match them."""
OUTPUTS: tuple[str, ...] = (RECORDS_NAME, SUMMARY_NAME, REPORT_NAME)
"""What ``--force`` deletes before a run of another identity (``config.json`` too)."""


def _row(value: Any) -> dict[str, Any]:
    """A line of ``records.jsonl``: a JSON object with the sample's ``id`` and ``model`` (the resume key)."""
    row = json_object(value)
    for key in ("id", "model", "questions"):
        if key not in row:
            raise ValueError(f"missing field {key!r}")
    return row


def judged_of(records: Sequence[dict[str, Any]]) -> list[Judged]:
    """The judged answers of the records without an error, in record order."""
    return [Judged(**q) for r in records if not r.get("error") for q in r["questions"]]


@dataclass
class EvalResult:
    """What a run produced: the records of this run's samples (newest per sample), the summary
    written to ``summary.json`` and the report's path."""

    out_dir: Path
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    report_path: Path

    def judged(self) -> list[Judged]:
        return judged_of(self.records)


class EvalJob(SampleJob[Any, dict[str, Any]]):
    """The eval's part of a run (:mod:`evspec.run.orchestrator`): one group (the model, or the
    answer file as ``answers:FILE``), one record per sample holding its judged questions. A sample
    that fails (its files, the model's passes) is a record with the error, run again on resume; a
    model that fails to load, or an answer file that does not fit the dataset, ends the run."""

    def __init__(self, config: EvalConfig, model_loader: ModelLoader, device: torch.device, dtype: torch.dtype,
                 root: Path) -> None:
        self.config = config
        self.group = config.model if config.model is not None else f"answers:{config.answers}"
        self.groups = (self.group,)
        self.model_loader = model_loader
        self.device, self.dtype = device, dtype
        self.root = root
        self.from_file: dict[str, list[Judged]] | None = None  # answers mode: each sample's judged answers

    def prepare(self, samples: Sequence[Sample]) -> None:
        questions = questions_of(samples, all_types=self.config.all_questions)
        if not any(q.answer or q.event_visible_answer for q in questions):
            raise InputError("the dataset has no answers to judge against ('answer' / 'event_visible_answer')",
                             self.root)
        if self.config.answers is not None:  # the whole file against every question, before any record
            self.from_file = {}
            for question, judged in zip(questions, judge_answer_file(Path(self.config.answers), questions), strict=True):
                self.from_file.setdefault(question.sample.id, []).append(judged)

    def parse(self, row: Any) -> dict[str, Any]:
        return _row(row)

    def dump(self, record: dict[str, Any]) -> str:
        return dump_line(record)

    def pair(self, record: dict[str, Any]) -> tuple[str, str]:
        return (record["id"], str(record["model"]))

    def error(self, record: dict[str, Any]) -> str | None:
        return record.get("error") or None

    def label(self, group: str) -> str:
        return group if self.config.model is not None else f"the answers in {self.config.answers}"

    def load(self, group: str) -> Loaded[Any]:
        if self.config.model is None:
            return Loaded(None, None)  # the answers were judged in prepare
        start = time.perf_counter()
        model = self.model_loader(group, self.device, self.dtype)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return Loaded(model, time.perf_counter() - start)

    def run_sample(self, loaded: Loaded[Any], group: str, sample: Sample) -> dict[str, Any]:
        head = {"id": sample.id, "model": group}
        if self.from_file is not None:
            judged = self.from_file[sample.id]
        else:
            questions = questions_of([sample], all_types=self.config.all_questions)
            try:
                judged = evaluate_model(loaded.models, questions, max_new_tokens=self.config.max_new_tokens)
            except (EvspecError, ValueError, RuntimeError, OSError) as exc:
                return {**head, "questions": [], "error": error_text(exc), "model_load_s": loaded.load_s}
        return {**head, "questions": [j.as_record() for j in judged], "error": None, "model_load_s": loaded.load_s}

    def summarize(self, records: list[dict[str, Any]], meta: dict[str, Any], model_load_s: dict[str, Any],
                  machine: dict[str, Any]) -> dict[str, Any]:
        judged = judged_of(records)
        dataset = str(Path(self.config.dataset)) if self.config.dataset is not None else str(self.root)
        return {
            "model": self.config.model, "answers": self.config.answers, "dataset": dataset, "split": self.config.split,
            "n_samples": len(records), "n_failed": sum(1 for r in records if self.error(r) is not None),
            "n_questions": len(judged), "summary": summarize(judged), **meta,
            "model_load_s": model_load_s[self.group], "machine": machine,
        }

    def report(self, out_dir: Path, summary: dict[str, Any], records: list[dict[str, Any]]) -> Path:
        path = out_dir / REPORT_NAME
        path.write_text(report_markdown(summary), encoding="utf-8")
        return path


def score_rows(summary: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """The score table's rows (reference, question type, n, exact match, token F1) of a ``summarize``
    result: each reference overall ("all"), then per question type."""
    rows = []
    for field, values in summary.items():
        rows.append((field, "all", str(values["n"]), f"{values['exact_match']:.3f}", f"{values['f1']:.3f}"))
        for qtype, v in values["by_type"].items():
            rows.append(("", qtype, str(v["n"]), f"{v['exact_match']:.3f}", f"{v['f1']:.3f}"))
    return rows


def who_answered(summary: dict[str, Any]) -> str:
    """The table's subject: ``MODEL (greedy)``, or the answer file."""
    return f"{summary['model']} (greedy)" if summary.get("model") is not None else str(summary.get("answers"))


def report_markdown(summary: dict[str, Any]) -> str:
    """``report.md``: who answered, on what, and exact match and token F1 per reference and question type."""
    def cell(text: str) -> str:  # question types and paths come from the user: a | would split the row
        return text.replace("|", "\\|")

    split = f" (split {summary['split']})" if summary.get("split") else ""
    lines = [
        f"# evspec eval: {who_answered(summary)} on {summary['n_questions']} questions", "",
        f"- dataset: `{summary['dataset']}`{split}",
        f"- samples: {summary['n_samples']}, failed: {summary['n_failed']} (their errors are in {RECORDS_NAME})",
        f"- command: `{summary.get('command')}`", "",
        "| reference | question type | n | exact match | token F1 |", "|---|---|--:|--:|--:|",
    ]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in score_rows(summary["summary"])]
    if not summary["summary"]:
        lines.append("| - | - | 0 | - | - |")
    return "\n".join(lines) + "\n"


def _answers_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as error:
        raise InputError(f"cannot read the answers ({error})", path) from error


def run_eval(
    config: EvalConfig,
    out_dir: str | Path,
    *,
    force: bool = False,
    model_loader: ModelLoader | None = None,
    reporter: Reporter | None = None,
    command: str | None = None,
) -> EvalResult:
    """Run (or resume) ``config`` into ``out_dir``; see the module docstring for the files.

    Resume: samples with a record without error are skipped; failed ones are run again and the
    newest record of a sample wins. A folder made with another identity (``IDENTITY_FIELDS``) is
    refused unless ``force``, which deletes the old results first. ``model_loader``: how the
    model loads (default: the registry); ``command``: the recorded command line (default
    ``sys.argv``). The loop itself is the run layer's (:func:`evspec.run.orchestrator.run_samples`)."""
    out_dir = Path(out_dir)
    answers_sha256 = None if config.answers is None else _answers_sha256(Path(config.answers))
    if model_loader is None:
        if config.model is not None:
            from evspec.models.registry import check_model_name

            check_model_name(config.model)  # before any work: a typo should not cost a dataset build
        model_loader = registry_loader_for(None, config.event_canvas)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    root = dataset_root(config.dataset, out_dir)
    plan = RunPlan(
        out_dir=out_dir,
        identity=identity(
            config, dataset=str(root.resolve()), device=str(device), dtype=str(dtype).removeprefix("torch."),
            answers=None if config.answers is None else str(Path(config.answers).resolve()),
            answers_sha256=answers_sha256),
        config=asdict(config), outputs=OUTPUTS, device=device, dtype=dtype, dataset=config.dataset,
        split=config.split, max_samples=config.max_samples, allow_outside_root=config.allow_outside_root, warmup=0,
        seed=0, force=force, command=command,
    )
    job = EvalJob(config, model_loader, device, dtype, root)
    outcome = run_samples(plan, job, reporter or SilentReporter())
    assert outcome.report_path is not None  # the eval always writes its report
    return EvalResult(out_dir, outcome.records, outcome.summary, outcome.report_path)
