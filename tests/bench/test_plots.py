"""Plots say what they show: sample count, device and dtype in titles; short model labels; a
log-axis per-token CDF; acceptance visible at zero and alpha^k for oracle runs; samples by id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from evspec.bench.records import Record
from evspec.bench.report import model_labels, plot_stages, plot_token_cdf
from evspec.bench.stats import build_summary
from evspec.spec.report import expected_oracle_rates, plot_acceptance, plot_speedup


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every figure a plot function closes, kept for inspection."""
    kept: list[Any] = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    return kept


MODELS = ("eventgpt:/ckpt/long/path/to/EventGPT-7b", "videollava:/ckpt/other/Video-LLaVA-7B-hf")


def _records() -> list[Record]:
    return [
        Record(id=f"clip{i}", model=m, read_s=0.01, preprocess_s=0.01, encode_s=0.02, prefill_s=0.05, decode_s=0.2,
               total_s=0.29, ttft_s=0.1, tpot_s=0.01, n_new_tokens=4, token_latencies_s=[0.01, 0.0005, 0.0008, 0.02])
        for m in MODELS for i in range(3)
    ]


def _summary() -> dict[str, Any]:
    meta = {"identity": {"device": "cpu", "dtype": "float32"}, "environment": {"gpu": None}, "config": {}}
    return build_summary(_records(), meta=meta, models=MODELS)


def test_model_labels_are_folder_names_unless_they_clash() -> None:
    assert model_labels(MODELS) == {MODELS[0]: "EventGPT-7b", MODELS[1]: "Video-LLaVA-7B-hf"}
    clash = ("eventgpt:/a/ckpt", "llava:/b/ckpt", "tiny-llava")
    assert model_labels(clash) == {"eventgpt:/a/ckpt": "eventgpt:/a/ckpt", "llava:/b/ckpt": "llava:/b/ckpt",
                                   "tiny-llava": "tiny-llava"}


def test_bench_plots_carry_count_device_dtype_and_short_labels(tmp_path: Path, figures: list[Any]) -> None:
    plot_stages(_summary(), tmp_path / "stages.png")
    plot_token_cdf(_records(), MODELS, tmp_path / "cdf.png", "3 samples, cpu, float32")
    stages_ax, cdf_ax = figures[0].axes[0], figures[1].axes[0]
    assert "3 samples, cpu, float32" in stages_ax.get_title()
    assert [t.get_text() for t in stages_ax.get_xticklabels()] == ["EventGPT-7b", "Video-LLaVA-7B-hf"]
    assert cdf_ax.get_xscale() == "log" and "3 samples, cpu, float32" in cdf_ax.get_title()
    assert [t.get_text() for t in cdf_ax.get_legend().get_texts()] == ["EventGPT-7b", "Video-LLaVA-7B-hf"]


def _spec_summary(draft: str, rates: list[float], accepted: int, drafted: int) -> dict[str, Any]:
    return {"counts": {"per_position_acceptance_rate": rates, "accepted_tokens": accepted, "drafted_tokens": drafted,
                       "drafts": 10},
            "config": {"draft": draft, "gamma": 5, "adaptive_gamma": False}, "n_samples": 4,
            "environment": {"device": "cuda:0", "gpu": "NVIDIA H100"}, "identity": {"dtype": "bfloat16"}}


def test_acceptance_at_zero_is_visible_and_says_so(tmp_path: Path, figures: list[Any]) -> None:
    plot_acceptance(_spec_summary("tiny-eventgpt", [0.0] * 5, 0, 50), tmp_path / "a.png")
    ax = figures[0].axes[0]
    (points,) = [line for line in ax.lines if line.get_label() == "measured"]
    assert list(points.get_ydata()) == [0.0] * 5 and points.get_marker() == "o"  # drawn, not a zero-height bar only
    assert ax.get_ylim()[0] < 0  # the points sit above the axis' lower edge
    assert any("0 of 50 drafted tokens accepted" in t.get_text() for t in ax.texts)
    assert "4 samples, NVIDIA H100, bfloat16" in ax.get_title()


def test_oracle_acceptance_shows_the_expected_alpha_to_the_k(tmp_path: Path, figures: list[Any]) -> None:
    summary = _spec_summary("oracle:0.8", [0.79, 0.65, 0.5, 0.41, 0.33], 27, 50)
    assert expected_oracle_rates(summary) == pytest.approx([0.8, 0.64, 0.512, 0.4096, 0.32768])
    assert expected_oracle_rates({**summary, "config": {**summary["config"], "adaptive_gamma": True}}) is None
    plot_acceptance(summary, tmp_path / "a.png")
    (expected,) = [line for line in figures[0].axes[0].lines if line.get_label().startswith("expected")]
    assert list(expected.get_ydata()) == pytest.approx([0.8**k for k in range(1, 6)])


def test_speedup_bars_are_labelled_by_sample_id(tmp_path: Path, figures: list[Any]) -> None:
    records = [{"id": "seq_a/000000", "speedup": 1.4, "error": None}, {"id": "seq_b/000042", "speedup": 0.9, "error": None},
               {"id": "broken", "error": "missing file"}]
    plot_speedup(records, tmp_path / "s.png", "2 samples, cpu, float32")
    ax = figures[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["seq_a/000000", "seq_b/000042"]
    assert "2 samples" in ax.get_title()
