"""`evspec bench` end to end: the no-argument default path, exit codes, one-line errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import evspec.bench.runner as runner
import evspec.run.shared as run_shared
from evspec.cli import main
from tests.bench.conftest import StandInModel, make_dataset


@pytest.fixture
def stand_in_registry(monkeypatch: pytest.MonkeyPatch, calls: Counter) -> Counter:
    """Route registry look-ups to the stand-in (names starting with 'bad' are unknown)."""

    def load(name: str, device: Any, dtype: Any) -> StandInModel:
        from evspec.errors import ModelError

        if name.startswith("bad"):
            raise ModelError(f"unknown model {name!r}")
        return StandInModel(name, device, dtype, calls)

    monkeypatch.setattr(run_shared, "registry_loader", load)
    monkeypatch.setattr(runner, "check_model_name", lambda name: None)  # stand-in names pass; load decides
    monkeypatch.setattr(runner, "check_token_budget", lambda name, max_new, min_new: None)  # no config to read
    return calls


def test_default_command_builds_data_and_benchmarks_the_default_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """The default models (the shipped demo pair and tiny-llava), through the real registry."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_shared, "DEFAULT_SYNTH", {**run_shared.DEFAULT_SYNTH, "clips": 2})  # keep the test small
    assert main(["bench", "--max-new-tokens", "4"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("bench-")
    assert (run / "data" / "dataset.json").is_file()
    rows = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    assert {r["model"] for r in rows} == set(runner.DEFAULT_MODELS) and len(rows) == 6
    assert all(r["error"] is None for r in rows)
    assert all(r["n_visual_tokens"] > 0 and 1 <= r["n_new_tokens"] <= 4 for r in rows)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["command"].startswith("evspec bench --model demo-eventgpt,demo-videollava,tiny-llava")
    assert (run / "report.md").is_file()
    printed = capsys.readouterr().out
    assert "demo-videollava" in printed and f"{run.relative_to(tmp_path)}/records.jsonl" in printed
    # piped: one tab-separated line per sample as it finished, then the table as plain rows
    sample_lines = [line.split("\t") for line in printed.splitlines() if line.startswith("sample=")]
    assert sorted((f[0], f[1]) for f in sample_lines) == sorted((f"sample={r['id']}", f"model={r['model']}") for r in rows)
    assert all(f[2].startswith("read_ms=") and f[-1].startswith("new_tokens=") for f in sample_lines)
    table = [line.split("\t") for line in printed.splitlines() if line.startswith(("tiny-", "demo-"))]
    assert [row[0] for row in table] == list(runner.DEFAULT_MODELS) and all(len(row) == 8 for row in table)
    assert all(float(row[-1]) >= 0 for row in table)  # model load seconds


def test_zero_successes_exit_non_zero(tmp_path: Path, stand_in_registry: Counter, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = make_dataset(tmp_path / "data", n=2, missing=(0, 1))
    code = main(["bench", "--model", "a", "--dataset", str(dataset), "--out", str(tmp_path / "run"),
                 "--max-new-tokens", "2", "--warmup", "0"])
    assert code == 1
    err = capsys.readouterr().err
    assert "warning:" in err and "0 of 2 samples succeeded" in err


def test_unknown_model_fails_that_model_only(tmp_path: Path, stand_in_registry: Counter, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = make_dataset(tmp_path / "data", n=1)
    code = main(["bench", "--model", "a,bad-model", "--dataset", str(dataset), "--out", str(tmp_path / "run"),
                 "--max-new-tokens", "2"])
    assert code == 1
    err = capsys.readouterr().err
    assert "unknown model 'bad-model'" in err and "model bad-model: 0 of 1" in err
    rows = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    assert [(r["model"], r["error"] is None) for r in rows] == [("a", True), ("bad-model", False)]


def test_missing_dataset_is_one_red_line(tmp_path: Path, stand_in_registry: Counter, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "run")])
    assert code == 1
    err = capsys.readouterr().err
    assert "error:" in err and "nope" in err and "Traceback" not in err
