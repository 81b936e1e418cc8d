"""evspec eval on the run layer's orchestrator: one record per sample, resume after a kill, failed
samples retried, identity, the answer-file mode through the CLI, the report."""

from __future__ import annotations

import json
import os
import shlex
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from evspec.cli import main
from evspec.data.synth.builder import SynthConfig, build_dataset
from evspec.errors import ConfigError
from evspec.training import eval_run
from evspec.training.eval_config import EvalConfig
from evspec.training.eval_run import run_eval
from tests.bench.conftest import StandInModel

N_CLIPS = 5


class Killed(Exception):
    """What a kill looks like to the loop: an exception out of a sample (not one the eval records)."""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval-data")
    build_dataset(out, SynthConfig(clips=N_CLIPS, size=(64, 48), seed=5, test_fraction=0.4))
    return out


@pytest.fixture
def loader() -> Callable[[str, torch.device, torch.dtype], StandInModel]:
    calls: Counter = Counter()
    return lambda name, device, dtype: StandInModel(name, device, dtype, calls)


def _config(dataset: Path, **kw: Any) -> EvalConfig:
    return EvalConfig(**{**dict(model="standin", dataset=str(dataset), all_questions=True, max_new_tokens=3,
                                device="cpu"), **kw})


def _lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def test_a_killed_eval_resumes_and_gives_the_uninterrupted_summary(dataset: Path, tmp_path: Path, loader: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    whole = run_eval(_config(dataset), tmp_path / "whole", model_loader=loader)
    assert [r["id"] for r in whole.records] == [r["id"] for r in _lines(tmp_path / "whole")]
    assert len(whole.records) == N_CLIPS and whole.summary["n_failed"] == 0
    assert whole.summary["n_questions"] == 4 * N_CLIPS  # --all-questions: every question of each clip

    answered = eval_run.evaluate_model
    calls: list[str] = []

    def killed_after(k: int) -> Callable[..., Any]:
        def answer(model: Any, questions: Any, **kw: Any) -> Any:
            if len(calls) == k:
                raise Killed
            calls.append(questions[0].sample.id)
            return answered(model, questions, **kw)
        return answer

    out = tmp_path / "killed"
    monkeypatch.setattr(eval_run, "evaluate_model", killed_after(2))
    with pytest.raises(Killed):
        run_eval(_config(dataset), out, model_loader=loader)
    assert [r["id"] for r in _lines(out)] == calls  # the two finished samples were written

    calls.clear()
    monkeypatch.setattr(eval_run, "evaluate_model", killed_after(N_CLIPS))
    resumed = run_eval(_config(dataset), out, model_loader=loader)
    assert len(calls) == N_CLIPS - 2  # only the samples without a record ran
    ids = [r["id"] for r in _lines(out)]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == N_CLIPS  # every sample once
    def answers(records: list[dict[str, Any]]) -> list[tuple[str, Any]]:  # model_load_s is a timing
        return [(r["id"], r["questions"]) for r in records]

    assert answers(resumed.records) == answers(whole.records)
    assert resumed.summary["summary"] == whole.summary["summary"]
    assert resumed.summary["n_questions"] == whole.summary["n_questions"]
    assert resumed.summary["model_load_s"] is not None
    # nothing left: a third run loads no model
    done = run_eval(_config(dataset), out, model_loader=loader)
    assert done.summary["model_load_s"] is None and done.summary["summary"] == whole.summary["summary"]


def test_a_failed_sample_is_recorded_left_out_of_the_scores_and_retried(tmp_path: Path, loader: Any) -> None:
    data = tmp_path / "data"
    build_dataset(data, SynthConfig(clips=3, size=(64, 48), seed=2))
    first = json.loads((data / "dataset.json").read_text())[0]
    image = data / first["event_image"][0]
    saved = image.read_bytes()
    image.unlink()
    out = tmp_path / "run"
    result = run_eval(_config(data, all_questions=False), out, model_loader=loader)
    failed = [r for r in result.records if r["error"]]
    assert [r["id"] for r in failed] == [first["id"]] and "missing" in failed[0]["error"]
    assert result.summary["n_failed"] == 1 and result.summary["n_questions"] == 2
    assert "failed: 1" in result.report_path.read_text()
    image.write_bytes(saved)
    again = run_eval(_config(data, all_questions=False), out, model_loader=loader)
    assert again.summary["n_failed"] == 0 and again.summary["n_questions"] == 3
    assert len(_lines(out)) == 4  # the failed sample's newer record wins


def test_a_resumed_eval_refuses_another_identity(dataset: Path, tmp_path: Path, loader: Any) -> None:
    out = tmp_path / "run"
    config = _config(dataset, max_samples=1)
    run_eval(config, out, model_loader=loader)
    with pytest.raises(ConfigError, match="max_new_tokens: was 3, now 4"):
        run_eval(replace(config, max_new_tokens=4), out, model_loader=loader)
    with pytest.raises(ConfigError, match="all_questions: was True"):
        run_eval(replace(config, all_questions=False), out, model_loader=loader)
    more = run_eval(replace(config, max_samples=2), out, model_loader=loader)  # max_samples is not identity
    assert len(more.records) == 2 and len(_lines(out)) == 2
    forced = run_eval(replace(config, max_new_tokens=4), out, model_loader=loader, force=True)
    assert len(forced.records) == 1 and len(_lines(out)) == 1


def test_eval_config_refuses_bad_options() -> None:
    with pytest.raises(ConfigError, match="either model"):
        EvalConfig()
    with pytest.raises(ConfigError, match="either model"):
        EvalConfig(model="tiny-llava", answers="a.jsonl")
    with pytest.raises(ConfigError, match="max_new_tokens"):
        EvalConfig(model="tiny-llava", max_new_tokens=0)
    with pytest.raises(ConfigError, match="dtype"):
        EvalConfig(model="tiny-llava", dtype="float8")


def _answer_file(dataset: Path, path: Path) -> Path:
    from evspec.data.dataset import load_dataset

    rows = [{"id": s.id, "prediction": s.answer if i % 2 == 0 else "nothing"} for i, s in enumerate(load_dataset(dataset))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_of_an_answer_file_writes_a_run_folder_whose_command_reruns_it(
        dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    answers = _answer_file(dataset, tmp_path / "answers.jsonl")
    out = tmp_path / "run"
    args = ["eval", "--answers", str(answers), "-d", str(dataset), "--max-new-tokens", "5", "--out", str(out)]
    assert main([*args, "--records", str(tmp_path / "flat.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert f"{answers} on {N_CLIPS} questions" in printed and "wrote" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary"]["answer"]["exact_match"] == pytest.approx(3 / N_CLIPS)  # clips 0, 2, 4
    assert summary["n_samples"] == N_CLIPS and summary["model"] is None and summary["answers"] == str(answers)
    report = (out / "report.md").read_text()
    assert "| answer | all | 5 | 0.600 |" in report
    flat = [json.loads(line) for line in (tmp_path / "flat.jsonl").read_text().splitlines()]
    assert [j["prediction"] for j in flat[:2]] == [json.loads(line)["prediction"] for line in answers.read_text().splitlines()[:2]]
    records = _lines(out)
    assert [r["model"] for r in records] == [f"answers:{answers}"] * N_CLIPS

    # the recorded command line is the config (and the folder) back; rerun, it resumes and agrees
    recorded = json.loads((out / "config.json").read_text())
    line = recorded["command"]
    assert shlex.split(line)[:2] == ["evspec", "eval"]
    assert main([*shlex.split(line)[1:], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"] == summary["summary"]
    assert len(_lines(out)) == N_CLIPS  # nothing ran again

    # the same folder with a changed answer file is another evaluation
    answers.write_text(answers.read_text().replace("nothing", "something"))
    assert main(args) == 1
    assert "answers_sha256" in capsys.readouterr().err


def test_eval_of_a_registry_model_through_the_cli(dataset: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = ["eval", "-m", "tiny-videollava", "-d", str(dataset), "-n", "2", "--max-new-tokens", "3", "--device", "cpu",
            "--out", str(out), "--json"]
    assert main(args) == 0
    document = json.loads(capsys.readouterr().out)  # stdout is the one document, as before
    assert set(document) == {"model", "answers", "dataset", "split", "n_questions", "summary"}
    assert document["model"] == "tiny-videollava" and document["n_questions"] == 2
    assert [len(r["questions"]) for r in _lines(out)] == [1, 1]  # the row's own question per sample
    assert main([*args[:-1], "-n", "3"]) == 0  # more samples into the same run: one more record
    assert "tiny-videollava (greedy) on 3 questions" in capsys.readouterr().out
    assert len(_lines(out)) == 3
