"""`evspec spec` end to end on the tiny families: files, lossless flag, resume, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import evspec.run.shared as run_shared
from evspec.cli import main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-clip synthetic set built once by the run layer's helper (what `evspec spec` uses by default)."""
    root = tmp_path_factory.mktemp("spec-data")
    patch = pytest.MonkeyPatch()
    patch.setattr(run_shared, "DEFAULT_SYNTH", {**run_shared.DEFAULT_SYNTH, "clips": 2})
    try:
        return run_shared.build_default_dataset(root, run_shared.SilentReporter())
    finally:
        patch.undo()


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]


def test_spec_writes_records_summary_and_report(tmp_path: Path, dataset: Path, capsys) -> None:
    out = tmp_path / "run"
    args = ["spec", "--target", "tiny-videollava", "--draft", "tiny-eventgpt", "--dataset", str(dataset),
            "--gamma", "3", "--max-new-tokens", "8", "--max-samples", "2", "--warmup", "0", "--parallel-prefill",
            "--draft-confidence", "0.5", "--out", str(out)]
    assert main(args) == 0
    rows = _rows(out)
    assert len(rows) == 2 and all(r["error"] is None for r in rows)
    for r in rows:
        assert r["lossless"] is True and r["spec"]["token_ids"] == r["baseline"]["token_ids"]
        assert r["generate_matches_baseline"] is True and r["speedup"] > 0
        assert r["counts"]["emitted_tokens"] == len(r["baseline"]["token_ids"])
        assert r["independent_position_match_note"].endswith("NOT an acceptance rate")
        assert r["spec"]["timings"]["draft_prefill_s"] > 0 and r["spec"]["timings"]["prefill_overlap"] is not None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lossless"] is True and summary["n_samples"] == 2 and summary["synthetic"] is False
    assert summary["config"]["seed"] == 0 and summary["environment"]["torch"]
    assert summary["command"].startswith("evspec spec --target tiny-videollava --draft tiny-eventgpt")
    report = (out / "report.md").read_text()
    assert "acceptance rate" in report and "NOT an acceptance rate" in report
    assert "gamma 3, draft confidence 0.5," in report
    # bootstrap intervals over samples beside the pooled figures, and what they are
    low, high = summary["intervals"]["mean_acceptance_length"]
    assert low <= summary["counts"]["mean_acceptance_length"] <= high  # two samples: the pooled run is a draw
    assert f"| {summary['counts']['mean_acceptance_length']:.3f} ({low:.3f}-{high:.3f}) |" in report
    assert "95% bootstrap intervals over samples (2000 resamples, seed 0)" in report
    # the draft beside an eager target steps on a static cache (draft_cache auto); the target stays eager
    assert summary["draft_model_cache"] == "static" and "cache eager, draft cache static." in report
    # where drafts fail: the top tokens' count out of every rejection, not the top's sum as a total
    rejections = sum(len(r["spec"]["rejected_tokens"]) for r in rows)
    assert rejections > 0 and summary["rejections"] == rejections
    shown = sum(n for _, n in summary["rejected_tokens_top"])
    assert f"{shown} of {rejections} rejections" in report
    for png in ("acceptance_by_position.png", "speedup_per_sample.png", "time_split.png"):
        assert (out / png).stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "lossless exact (2/2 exact)" in printed
    speed_low, speed_high = summary["intervals"]["speedup_median"]
    assert f"median speedup {summary['speedup_median']:.2f}x (95% interval {speed_low:.2f}-{speed_high:.2f}x)" in printed
    # piped: one line per sample, printed as it finished, before the summary line
    sample_lines = [line for line in printed.splitlines() if line.startswith("sample=")]
    assert [line.split("\t")[0] for line in sample_lines] == [f"sample={r['id']}" for r in rows]
    assert all("speedup=" in line and "lossless=True" in line for line in sample_lines)
    assert printed.index(sample_lines[-1]) < printed.index("lossless exact (2/2 exact)")
    # model loading is timed once per model, apart from the samples
    assert summary["model_load_s"]["target"] > 0 and summary["model_load_s"]["draft"] > 0
    assert all(r["model_load_s"] == summary["model_load_s"] for r in rows)

    # resume: nothing left to do, no new lines; another config in the same folder is refused
    assert main(args) == 0
    assert len(_rows(out)) == 2
    capsys.readouterr()
    changed = [a if a != "3" else "5" for a in args]
    assert main(changed) == 1
    err = capsys.readouterr().err
    assert "another config" in err and "use another folder or --force to discard it" in err


def test_oracle_runs_are_labelled_synthetic(tmp_path: Path, dataset: Path) -> None:
    out = tmp_path / "oracle"
    assert main(["spec", "--draft", "oracle:0.7", "--dataset", str(dataset), "--max-new-tokens", "10",
                 "--max-samples", "1", "--warmup", "0", "--adaptive-gamma", "--out", str(out)]) == 0
    (row,) = _rows(out)
    assert row["synthetic"] is True and row["lossless"] is True
    summary = json.loads((out / "summary.json").read_text())
    assert summary["synthetic"] is True
    assert "synthetic" in (out / "report.md").read_text().splitlines()[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--gamma", "0"], "--gamma must be >= 1"),
        (["--draft", "oracle:1.2"], "alpha must be in [0, 1]"),
        (["--draft", "oracle:-0.5"], "alpha must be in [0, 1]"),
        (["--draft", "oracle:0.5", "--temperature", "0.8"], "greedy only (it proposes the target's greedy tokens): use --temperature 0"),
        (["--draft", "nosuch"], "unknown model 'nosuch'"),
        (["--draft", "tiny-eventgpt", "--bridge", "sideways"], "unknown --bridge"),
        (["--draft-confidence", "1.0"], "--draft-confidence must be in [0, 1)"),
        (["--draft", "ngram", "--draft-confidence", "0.5"], "--draft-confidence needs a draft model's own probabilities"),
        (["--draft-cache", "paged"], "unknown --draft-cache 'paged'"),
        (["--draft", "ngram", "--draft-cache", "static"], "--draft-cache is the draft model's cache; 'ngram' has no draft model"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path: Path, dataset: Path, capsys, extra, message) -> None:
    code = main(["spec", "--dataset", str(dataset), "--max-samples", "1", "--warmup", "0",
                 "--out", str(tmp_path / "bad"), *extra])
    err = capsys.readouterr().err
    assert code == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0]


def test_bench_draft_plugs_the_engine_into_the_bench(tmp_path: Path, dataset: Path) -> None:
    """`evspec bench --draft`: the runner's DecodeStrategy seam drives the speculative engine."""
    out = tmp_path / "bench"
    assert main(["bench", "--model", "tiny-videollava", "--draft", "oracle:0.9", "--gamma", "3", "--dataset", str(dataset),
                 "--max-samples", "1", "--max-new-tokens", "8", "--warmup", "0", "--out", str(out)]) == 0
    (row,) = _rows(out)
    assert row["error"] is None and row["decoder"] == "spec:oracle:0.9"
    assert row["n_new_tokens"] == len(row["token_ids"]) == len(row["token_latencies_s"])
    assert "draft_prefill" in row["extra_stages_s"] and row["prefill_s"] > 0 and row["decode_s"] > 0
    metrics = row["metrics"]
    assert metrics["synthetic"] is True and metrics["lossless"] is True and metrics["drafts"] >= 1
    assert metrics["lossless_verdict"] == "exact"
    assert 0 <= metrics["acceptance_rate"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["identity"]["decoder"]["name"] == "spec:oracle:0.9"
    assert "--draft oracle:0.9" in summary["command"]


@pytest.mark.parametrize(("cache", "draft_cache", "expected"), [
    ("eager", "auto", "static"), ("static", "auto", "static"), ("compiled", "auto", "compiled"),
    ("eager", "eager", "eager"), ("static", "eager", "eager"),
])
def test_the_draft_cache_defaults_to_static_beside_an_eager_target(cache: str, draft_cache: str, expected: str) -> None:
    from evspec.spec.config import SpecRunConfig

    config = SpecRunConfig(cache=cache, draft_cache=draft_cache)
    assert config.draft_model_cache == expected
