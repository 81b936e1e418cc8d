"""The runner with a stand-in model: fields, resume, failures, config identity, the DecodeStrategy seam."""

from __future__ import annotations

import gc
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from evspec.bench.records import read_records
from evspec.bench.runner import BenchConfig, DecodeOutcome, TargetOnlyStrategy, run_bench
from evspec.errors import ConfigError, InputError
from tests.bench.conftest import make_dataset

RECORD_FIELDS = {
    "id", "model", "read_s", "preprocess_s", "encode_s", "prefill_s", "decode_s", "total_s", "ttft_s", "tpot_s",
    "n_prompt_tokens", "n_visual_tokens", "n_new_tokens", "token_ids", "text", "token_latencies_s",
    "peak_memory_bytes", "model_load_s", "error",
}
STAT_FIELDS = {"count", "mean", "p50", "p90", "p95", "p99", "stdev"}


def _config(dataset: Path, **kw: Any) -> BenchConfig:
    values: dict[str, Any] = dict(models=("a", "b"), dataset=str(dataset), max_new_tokens=6, min_new_tokens=6,
                                  warmup=1, device="cpu")
    values.update(kw)
    return BenchConfig(**values)


def test_records_summary_and_report_hold_every_field(tmp_path: Path, dataset: Path, loader: Any) -> None:
    out = tmp_path / "run"
    result = run_bench(_config(dataset), out, model_loader=loader)
    lines = (out / "records.jsonl").read_text().splitlines()
    assert len(lines) == 6
    for line in lines:
        row = json.loads(line)
        assert RECORD_FIELDS <= row.keys()
        assert row["error"] is None
        assert row["n_new_tokens"] == 6 == len(row["token_ids"]) == len(row["token_latencies_s"])
        assert row["n_visual_tokens"] == 2 and row["n_prompt_tokens"] > row["n_visual_tokens"]
        stages = [row[f"{s}_s"] for s in ("read", "preprocess", "encode", "prefill", "decode")]
        assert all(s > 0 for s in stages) and row["total_s"] == pytest.approx(sum(stages))
        assert row["ttft_s"] == pytest.approx(sum(stages[:4]) + row["token_latencies_s"][0])
        assert set(row["peak_memory_bytes"]) == {"read", "preprocess", "encode", "prefill", "decode"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary == result.summary
    for key in ("config", "environment", "device", "dtype", "seed", "models", "command"):
        assert key in summary
    for key in ("evspec", "torch", "transformers", "python", "cuda", "gpu", "driver"):
        assert key in summary["environment"]
    assert summary["device"] == "cpu" and summary["dtype"] == "float32" and summary["seed"] == 0
    assert summary["config"]["max_new_tokens"] == 6
    for model in ("a", "b"):
        block = summary["models"][model]
        assert block["n_ok"] == 3
        for name in ("read_s", "preprocess_s", "encode_s", "prefill_s", "decode_s", "total_s", "ttft_s", "tpot_s"):
            assert STAT_FIELDS <= block["latency_s"][name].keys()
            assert block["latency_s"][name]["count"] == 3
        assert block["samples_per_s"] > 0 and block["tokens_per_s"] > 0 and "peak_memory_bytes" in block
        # model loading is timed once per model, apart from the samples' file reading
        assert block["model_load_s"] is not None and block["model_load_s"] >= 0
        assert {r.model_load_s for r in result.records if r.model == model} == {block["model_load_s"]}
    report = (out / "report.md").read_text()
    for png in ("stages.png", "latency.png", "per_token_cdf.png"):
        assert (out / png).stat().st_size > 1000 and f"({png})" in report
    assert "| a |" in report and "| b |" in report


def test_warmup_runs_are_discarded(tmp_path: Path, dataset: Path, loader: Any, calls: Counter) -> None:
    run_bench(_config(dataset, models=("a",), warmup=2), tmp_path / "run", model_loader=loader)
    assert calls[("load", "a", "clip0")] == 2 and calls[("load", "a", "clip1")] == 2
    assert calls[("load", "a", "clip2")] == 1
    assert len(read_records(tmp_path / "run" / "records.jsonl")) == 3


def test_garbage_collector_is_paused_inside_samples_only(tmp_path: Path, dataset: Path, loader: Any, calls: Counter) -> None:
    assert gc.isenabled()
    run_bench(_config(dataset, models=("a",)), tmp_path / "run", model_loader=loader)
    assert calls[("gc enabled in a sample", False)] == 4 and calls[("gc enabled in a sample", True)] == 0
    assert gc.isenabled() and not gc.get_freeze_count()


def test_resume_skips_recorded_pairs(tmp_path: Path, dataset: Path, loader: Any, calls: Counter) -> None:
    out = tmp_path / "run"
    run_bench(_config(dataset, max_samples=2, warmup=0), out, model_loader=loader)
    assert sum(v for k, v in calls.items() if k[0] == "load") == 4
    calls.clear()
    result = run_bench(_config(dataset, warmup=0), out, model_loader=loader)  # one more sample
    assert {k[2] for k, v in calls.items() if k[0] == "load"} == {"clip2"}
    assert len((out / "records.jsonl").read_text().splitlines()) == 6
    assert len(result.records) == 6
    calls.clear()
    run_bench(_config(dataset, warmup=0), out, model_loader=loader)
    assert not calls  # everything recorded: no model is even loaded


def test_resume_after_a_torn_last_line(tmp_path: Path, dataset: Path, loader: Any, calls: Counter) -> None:
    out = tmp_path / "run"
    run_bench(_config(dataset, models=("a",), warmup=0), out, model_loader=loader)
    path = out / "records.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # killed while writing clip2
    calls.clear()
    result = run_bench(_config(dataset, models=("a",), warmup=0), out, model_loader=loader)
    assert [k[2] for k in calls if k[0] == "load"] == ["clip2"]
    assert [r.id for r in read_records(path)] == ["clip0", "clip1", "clip2"]
    assert result.summary["models"]["a"]["n_ok"] == 3


def test_failing_sample_is_recorded_and_the_run_goes_on(tmp_path: Path, loader: Any, calls: Counter) -> None:
    dataset = make_dataset(tmp_path / "data", n=3, missing=(1,))
    warnings: list[str] = []

    class Collect:
        def start(self, total: int, done: int) -> None: ...
        def status(self, message: str) -> None: ...
        def warn(self, message: str) -> None:
            warnings.append(message)
        def advance(self, record: Any) -> None: ...

    result = run_bench(_config(dataset, models=("a",)), tmp_path / "run", model_loader=loader, reporter=Collect())
    by_id = {r.id: r for r in result.records}
    assert by_id["clip1"].error is not None and "missing" in by_id["clip1"].error
    assert by_id["clip1"].total_s is None and by_id["clip1"].token_ids == []
    assert by_id["clip0"].error is None and by_id["clip2"].error is None
    assert any("clip1" in w for w in warnings)
    assert result.summary["models"]["a"]["n_errors"] == 1
    # a rerun retries only the failed pair
    calls.clear()
    run_bench(_config(dataset, models=("a",), warmup=0), tmp_path / "run", model_loader=loader)
    assert [k[2] for k in calls if k[0] == "load"] == ["clip1"]


def test_model_that_fails_to_load_is_recorded_per_sample(tmp_path: Path, dataset: Path, loader: Any) -> None:
    result = run_bench(_config(dataset, models=("bad-name", "a")), tmp_path / "run", model_loader=loader)
    assert result.n_ok("bad-name") == 0 and result.n_ok("a") == 3
    errors = [r.error for r in result.records if r.model == "bad-name"]
    assert len(errors) == 3 and all("unknown model 'bad-name'" in (e or "") for e in errors)


def test_other_config_in_the_same_folder_is_refused_unless_forced(tmp_path: Path, dataset: Path, loader: Any) -> None:
    out = tmp_path / "run"
    run_bench(_config(dataset, models=("a",)), out, model_loader=loader)
    with pytest.raises(ConfigError, match="max_new_tokens: was 6, now 5"):
        run_bench(_config(dataset, models=("a",), max_new_tokens=5, min_new_tokens=5), out, model_loader=loader)
    result = run_bench(_config(dataset, models=("a",), max_new_tokens=5, min_new_tokens=5), out,
                       model_loader=loader, force=True)
    assert {r.n_new_tokens for r in read_records(out / "records.jsonl")} == {5}
    assert result.summary["config"]["max_new_tokens"] == 5


def test_missing_dataset_and_bad_options_are_clear_errors(tmp_path: Path, loader: Any) -> None:
    with pytest.raises(InputError, match="dataset JSON not found"):
        run_bench(_config(tmp_path / "nowhere"), tmp_path / "run", model_loader=loader)
    with pytest.raises(ConfigError, match="min_new_tokens must be between 0 and max_new_tokens"):
        BenchConfig(max_new_tokens=4, min_new_tokens=5)
    with pytest.raises(ConfigError, match="dtype"):
        BenchConfig(dtype="int3")


class DraftingStrategy(TargetOnlyStrategy):
    """A decode strategy in the shape of a speculative one: an extra stage and its own metrics."""

    name = "spec:toy"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "gamma": 3}

    def run(self, model: Any, prepared: Any, features: Any, sample: Any, timer: Any, settings: Any) -> DecodeOutcome:
        with timer.stage("draft_encode"):
            model.encode(prepared)
        outcome = super().run(model, prepared, features, sample, timer, settings)
        outcome.metrics = {"acceptance_rate": 0.25, "drafted": 12}
        return outcome


def test_a_custom_decode_strategy_plugs_into_records_and_summary(tmp_path: Path, dataset: Path, loader: Any) -> None:
    out = tmp_path / "run"
    result = run_bench(_config(dataset, models=("a",)), out, model_loader=loader, strategy=DraftingStrategy())
    record = result.records[0]
    assert record.decoder == "spec:toy" and record.metrics["acceptance_rate"] == 0.25
    assert record.extra_stages_s["draft_encode"] > 0
    stages = [record.read_s, record.preprocess_s, record.encode_s, record.extra_stages_s["draft_encode"], record.prefill_s]
    assert record.ttft_s == pytest.approx(sum(stages) + record.token_latencies_s[0])  # type: ignore[arg-type]
    block = result.summary["models"]["a"]
    assert block["metrics"]["acceptance_rate"]["mean"] == 0.25
    assert block["extra_stages_s"]["draft_encode"]["count"] == 3
    assert "draft_encode" in (out / "report.md").read_text()
    # the strategy's settings (identity field "decoder") are part of the run's identity
    with pytest.raises(ConfigError, match="decoder"):
        run_bench(_config(dataset, models=("a",)), out, model_loader=loader)


def test_static_cache_gives_the_eager_tokens_and_is_freed_with_the_model(tmp_path: Path, dataset: Path, loader: Any) -> None:
    eager = run_bench(_config(dataset, models=("a",), warmup=0), tmp_path / "eager", model_loader=loader)
    strategy = TargetOnlyStrategy("static")
    static = run_bench(_config(dataset, models=("a",), warmup=0, cache="static"), tmp_path / "static",
                       model_loader=loader, strategy=strategy)
    assert [r.token_ids for r in static.records] == [r.token_ids for r in eager.records]
    assert static.summary["identity"]["cache"] == "static"
    gc.collect()
    assert len(strategy._static) == 0  # the static cache went with the model
