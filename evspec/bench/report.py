"""``report.md`` with plots next to it, and the rich table the CLI prints at the end.

The report is rebuilt from ``summary.json``'s content and the records, so it can be regenerated
at any time (``evspec bench`` on a finished folder only rewrites it). Plots use matplotlib's Agg
backend (no display needed): a stacked per-stage breakdown, per-stage latency distributions and
the per-token latency CDF, each comparing the models side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evspec.bench.records import Record
from evspec.runtime.timing import STAGES

STAGES_PNG = "stages.png"
LATENCY_PNG = "latency.png"
TOKENS_PNG = "per_token_cdf.png"
DISTRIBUTION_FIELDS: tuple[str, ...] = (*(f"{s}_s" for s in STAGES), "ttft_s", "tpot_s", "total_s")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f}"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def model_labels(names: Sequence[str]) -> dict[str, str]:
    """Short labels for tables and plots: ``FAMILY:PATH`` becomes the checkpoint folder's name
    (records and summary keep the full name); other names stay. Labels that would clash keep the
    full name."""
    from pathlib import PurePath

    short = {}
    for name in names:
        family, sep, path = name.partition(":")
        folder = PurePath(path).name if sep and path and not family.startswith(("oracle", "spec")) else ""
        short[name] = folder or name
    counts = {label: list(short.values()).count(label) for label in short.values()}
    return {name: label if counts[label] == 1 else name for name, label in short.items()}


def _ok(records: Sequence[Record], model: str) -> list[Record]:
    return [r for r in records if r.model == model and r.error is None]


# --------------------------------------------------------------------------- plots


def run_subtitle(summary: dict[str, Any], n_samples: int | None = None) -> str:
    """What every plot title carries: sample count, device and dtype (timings mean nothing without them)."""
    if n_samples is None:
        n_samples = max((b.get("n_ok", 0) for b in summary.get("models", {}).values()), default=0)
    env = summary.get("environment") or {}
    where = env.get("gpu") or summary.get("device")
    return f"{n_samples} samples, {where}, {summary.get('dtype')}"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_stages(summary: dict[str, Any], path: Path) -> Path:
    """Stacked bars: mean seconds per stage, one bar per model."""
    plt = _pyplot()
    models = list(summary["models"])
    labels = model_labels(models)
    extra = sorted({n for b in summary["models"].values() for n in b["extra_stages_s"]})
    names = [*STAGES, *extra]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(models) + 2), 4.0))
    bottom = np.zeros(len(models))
    for name in names:
        values = []
        for m in models:
            block = summary["models"][m]
            stats = block["latency_s"].get(f"{name}_s") or block["extra_stages_s"].get(name) or {}
            values.append((stats.get("mean") or 0.0) * 1000)
        ax.bar([labels[m] for m in models], values, bottom=bottom, label=name)
        bottom += np.asarray(values)
    ax.set_ylabel("mean time per sample (ms)")
    ax.set_title(f"Stage breakdown\n{run_subtitle(summary)}", fontsize="medium")
    ax.tick_params(axis="x", labelrotation=20, labelsize="small")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_latency(records: Sequence[Record], models: Sequence[str], path: Path, subtitle: str = "") -> Path:
    """One box plot per stage (and TTFT, TPOT, total), one box per model."""
    plt = _pyplot()
    cols = 4
    rows = -(-len(DISTRIBUTION_FIELDS) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, DISTRIBUTION_FIELDS):
        data = [[getattr(r, name) * 1000 for r in _ok(records, m) if getattr(r, name) is not None] for m in models]
        if any(data):
            labels = model_labels(models)
            ax.boxplot([d if d else [np.nan] for d in data], tick_labels=[labels[m] for m in models], showfliers=True)
        ax.set_title(name.removesuffix("_s"))
        ax.set_ylabel("ms")
        ax.tick_params(axis="x", labelrotation=30, labelsize="small")
    for ax in list(axes.flat)[len(DISTRIBUTION_FIELDS):]:
        ax.set_visible(False)
    fig.suptitle("Latency distribution per stage" + (f" ({subtitle})" if subtitle else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_token_cdf(records: Sequence[Record], models: Sequence[str], path: Path, subtitle: str = "") -> Path:
    """Empirical CDF of per-token latency (tokens after the first), one line per model, on a log
    axis: most tokens take a fraction of the slowest ones, and a linear axis hides them."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    labels = model_labels(models)
    for m in models:
        values = np.sort([x * 1000 for r in _ok(records, m) for x in r.token_latencies_s[1:]])
        if values.size:
            ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", label=labels[m])
    if ax.lines and all(line.get_xdata().min() > 0 for line in ax.lines):
        ax.set_xscale("log")
    ax.set_xlabel("per-token latency (ms, log scale)")
    ax.set_ylabel("fraction of tokens")
    ax.set_title("Per-token latency CDF (decode, first token excluded)" + (f"\n{subtitle}" if subtitle else ""),
                 fontsize="medium")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- markdown


def _overview_rows(summary: dict[str, Any]) -> list[list[str]]:
    rows = []
    for m, b in summary["models"].items():
        lat = b["latency_s"]
        peak = max((v for v in b["peak_memory_bytes"].values() if v is not None), default=None)
        rows.append([
            m, f"{b['n_ok']}/{b['n_records']}", _ms(lat["total_s"]["mean"]), _ms(lat["ttft_s"]["p50"]),
            _ms(lat["ttft_s"]["p90"]), _ms(lat["tpot_s"]["p50"]), _rate(b["decode_tokens_per_s"]),
            _rate(b["samples_per_s"]), _mib(peak),
        ])
    return rows


OVERVIEW_HEADER = ["model", "ok", "total mean ms", "TTFT p50 ms", "TTFT p90 ms", "TPOT p50 ms",
                   "decode tok/s", "samples/s", "peak MiB"]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(summary: dict[str, Any], images: Sequence[str]) -> str:
    config = summary.get("config") or {}
    env = summary.get("environment") or {}
    parts = [
        "# evspec bench",
        "",
        f"Command: `{summary.get('command')}`  ",
        f"Started {summary.get('started')} on {env.get('gpu') or env.get('platform')} "
        f"({summary.get('device')}, {summary.get('dtype')}), seed {summary.get('seed')}.  ",
        f"evspec {env.get('evspec')}, Python {env.get('python')}, torch {env.get('torch')}, "
        f"transformers {env.get('transformers')}, numpy {env.get('numpy')}, CUDA {env.get('cuda')}, "
        f"driver {env.get('driver')}.",
        "",
        f"Dataset `{(summary.get('identity') or {}).get('dataset')}`, max new tokens {config.get('max_new_tokens')} "
        f"(min {config.get('min_new_tokens')}), temperature {config.get('temperature')}, top-p {config.get('top_p')}, "
        f"cache {config.get('cache')}, {config.get('warmup')} warm-up sample(s) per model discarded.",
        "",
        *(["## Timing warnings", "", *(f"- **warning**: {w}" for w in summary["timing_warnings"]), ""]
          if summary.get("timing_warnings") else []),
        "## Overview",
        "",
        _table(OVERVIEW_HEADER, _overview_rows(summary)),
        "",
        "Model load (s, once per model, not part of any sample): " + ", ".join(
            f"{m} {'-' if b.get('model_load_s') is None else format(b['model_load_s'], '.2f')}"
            for m, b in summary["models"].items()) + ".",
        "",
        "## Stages (ms)",
        "",
    ]
    stat_names = ["count", "mean", "p50", "p90", "p95", "p99", "stdev"]
    rows = []
    for m, b in summary["models"].items():
        blocks = {**{k.removesuffix("_s"): v for k, v in b["latency_s"].items()}, **b["extra_stages_s"],
                  "per token": b["per_token_latency_s"]}
        for name, stats in blocks.items():
            rows.append([m, name, str(stats["count"]), *(_ms(stats[s]) for s in stat_names[1:])])
    parts += [_table(["model", "stage", *stat_names], rows), ""]
    metric_rows = [
        [m, name, str(stats["count"]), *(f"{stats[s]:.4g}" if stats[s] is not None else "-" for s in ("mean", "p50", "p90"))]
        for m, b in summary["models"].items() for name, stats in b["metrics"].items()
    ]
    if metric_rows:
        parts += ["## Decode-strategy metrics", "", _table(["model", "metric", "count", "mean", "p50", "p90"], metric_rows), ""]
    parts += ["## Plots", ""] + [f"![{Path(i).stem}]({i})" for i in images] + [""]
    errors = [(m, e) for m, b in summary["models"].items() for e in b["errors"]]
    if errors:
        parts += ["## Errors", ""] + [f"- {m} / `{e['id']}`: {e['error']}" for m, e in errors] + [""]
    parts += ["## Definitions", ""] + [f"- **{k}**: {v}" for k, v in (summary.get("definitions") or {}).items()] + [""]
    return "\n".join(parts)


def write_report(out_dir: str | Path, summary: dict[str, Any], records: Sequence[Record]) -> Path:
    """Write the PNGs and ``report.md`` into ``out_dir``; return the report's path."""
    out_dir = Path(out_dir)
    models = list(summary["models"])
    images = [
        plot_stages(summary, out_dir / STAGES_PNG).name,
        plot_latency(records, models, out_dir / LATENCY_PNG, run_subtitle(summary)).name,
        plot_token_cdf(records, models, out_dir / TOKENS_PNG, run_subtitle(summary)).name,
    ]
    path = out_dir / "report.md"
    path.write_text(render_markdown(summary, images), encoding="utf-8")
    return path


def summary_table(summary: dict[str, Any]) -> Any:
    """The overview for the terminal (a ``rich.table.Table``; models by their short label, the
    full names are in the records and ``summary.json``)."""
    from rich.markup import escape
    from rich.table import Table

    labels = model_labels(list(summary["models"]))
    table = Table(title="evspec bench (times in ms; model load in s)", title_justify="left")
    table.add_column("model")
    for column in ("ok", "total mean", "TTFT p50", "TPOT p50", "decode tok/s", "peak MiB", "model load s"):
        table.add_column(column, justify="right")
    for row, block in zip(_overview_rows(summary), summary["models"].values()):
        load = block.get("model_load_s")
        table.add_row(escape(labels[row[0]]), row[1], row[2], row[3], row[5], row[6], row[8],
                      "-" if load is None else f"{load:.2f}")
    return table
