"""The report of an ``evspec spec`` run: ``report.md`` and its plots (acceptance by position,
speedup per sample, time split), rendered from the summary and records that
:mod:`evspec.spec.run` wrote. Rendering only: nothing here runs a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evspec.run.rundir import REPORT_NAME

ACCEPTANCE_PNG = "acceptance_by_position.png"
SPEEDUP_PNG = "speedup_per_sample.png"
SPLIT_PNG = "time_split.png"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _with_interval(summary: dict[str, Any], key: str, value: float | None, digits: int, unit: str = "") -> str:
    """``value`` and, where the summary has one, its bootstrap interval over samples."""
    interval = (summary.get("intervals") or {}).get(key)
    if value is None or interval is None:
        return f"{_fmt(value, digits)}{unit if value is not None else ''}"
    return f"{_fmt(value, digits)}{unit} ({_fmt(interval[0], digits)}-{_fmt(interval[1], digits)}{unit})"


def _subtitle(summary: dict[str, Any], n_samples: int | None = None) -> str:
    """Sample count, device and dtype: every plot title carries them."""
    env = summary.get("environment") or {}
    n = summary.get("n_samples") if n_samples is None else n_samples
    return f"{n} samples, {env.get('gpu') or env.get('device') or '?'}, {(summary.get('identity') or {}).get('dtype')}"


def expected_oracle_rates(summary: dict[str, Any]) -> list[float] | None:
    """alpha^k for k = 1..gamma: the per-position rate an oracle run of fixed gamma has in
    expectation (position k is accepted when all k draws hit, each with probability alpha).
    None for other drafts and for adaptive gamma (rounds of other lengths change the rate)."""
    config = summary.get("config") or {}
    draft = str(config.get("draft", ""))
    if not draft.startswith("oracle:") or config.get("adaptive_gamma"):
        return None
    alpha = float(draft.removeprefix("oracle:"))
    return [alpha**k for k in range(1, int(config["gamma"]) + 1)]


def plot_acceptance(summary: dict[str, Any], path: Path) -> Path:
    """Per-position acceptance: bars and points (a rate of 0 stays visible), the counts it comes
    from, and for oracle runs the expected alpha^k."""
    plt = _pyplot()
    c = summary["counts"]
    rates = c["per_position_acceptance_rate"]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    positions = list(range(1, len(rates) + 1))
    ax.bar(positions, rates, color="#4c72b0", alpha=0.6)
    ax.plot(positions, rates, "o", color="#4c72b0", label="measured")
    expected = expected_oracle_rates(summary)
    if expected is not None:
        alpha = expected[0]
        ax.plot(range(1, len(expected) + 1), expected, "--", color="#c44e52", marker="x", label=f"expected {alpha:g}^k")
    if not positions:
        ax.text(0.5, 0.5, "no drafts: nothing was proposed", ha="center", va="center", transform=ax.transAxes)
    ax.text(0.98, 0.95, f"{c['accepted_tokens']} of {c['drafted_tokens']} drafted tokens accepted, {c['drafts']} drafts",
            ha="right", va="top", transform=ax.transAxes, fontsize="small")
    ax.set_xlabel("draft position k")
    ax.set_ylabel("accepted at k / drafts")
    ax.set_ylim(-0.03, 1.05)
    ax.set_xticks(positions or [1])
    ax.set_title(f"per-position acceptance rate\n{_subtitle(summary)}", fontsize="medium")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_speedup(records: Sequence[dict[str, Any]], path: Path, subtitle: str = "") -> Path:
    """Speedup per sample, each bar labelled by the sample's id."""
    plt = _pyplot()
    ok = [r for r in records if not r.get("error")]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.3 * len(ok) + 2), 3.8))
    ax.bar(range(len(ok)), [r["speedup"] or 0.0 for r in ok], color="#55a868")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(ok)), [str(r["id"]) for r in ok], rotation=60, ha="right", fontsize="x-small")
    ax.set_xlabel("sample id")
    ax.set_ylabel("target-alone wall / speculative wall")
    ax.set_title("speedup per sample" + (f"\n{subtitle}" if subtitle else ""), fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_time_split(summary: dict[str, Any], records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Stacked bars: the baseline's prefill/decode next to the speculative run's parts."""
    plt = _pyplot()
    ok = [r for r in records if not r.get("error")]
    split = summary["time_split_s"]
    hidden = sum(max(r["spec"]["timings"]["draft_prefill_s"] + r["spec"]["timings"]["target_prefill_s"]
                     - r["spec"]["timings"]["prefill_wall_s"], 0.0) for r in ok)
    parts = {
        "target prefill": (sum(r["baseline"]["prefill_s"] for r in ok), split["target_prefill_s"]),
        "draft prefill (not hidden)": (0.0, max(split["draft_prefill_s"] - hidden, 0.0)),
        "target decode / verify": (sum(r["baseline"]["decode_s"] for r in ok), split["verify_s"]),
        "draft": (0.0, split["draft_s"]),
        "other": (0.0, split["other_s"]),
    }
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    bottom = [0.0, 0.0]
    for name, (base, spec) in parts.items():
        ax.bar(["target alone", "speculative"], [base, spec], bottom=bottom, label=name)
        bottom = [bottom[0] + base, bottom[1] + spec]
    ax.set_ylabel("seconds (all samples)")
    ax.set_title(f"where the time goes\n{_subtitle(summary, len(ok))}", fontsize="medium")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_markdown(summary: dict[str, Any], records: Sequence[dict[str, Any]]) -> str:
    c = summary["counts"]
    config, env = summary["config"], summary["environment"]
    synthetic = " **(synthetic: oracle proposer, acceptance is set by ALPHA, cost is a real draft's)**" if summary["synthetic"] else ""
    lossless = summary["lossless"]
    intervals = summary.get("intervals")
    lines = [
        f"# evspec spec: {config['target']} <- {config['draft']}{synthetic}",
        "",
        f"Command: `{summary['command']}`",
        "",
        f"Device {env['device']} ({env.get('gpu') or env['machine']}), dtype {summary['identity']['dtype']}, "
        f"torch {env['torch']}, transformers {env['transformers']}, evspec {env['evspec']}, seed {config['seed']}, "
        f"gamma {config['gamma']}{' (adaptive)' if config['adaptive_gamma'] else ''}"
        f"{', draft confidence ' + str(config['draft_confidence']) if config.get('draft_confidence') else ''}, "
        f"max_new_tokens {config['max_new_tokens']}, temperature {config['temperature']}, "
        f"parallel prefill {'on' if config['parallel_prefill'] else 'off'}, cache {config['cache']}"
        f"{', draft cache ' + summary['draft_model_cache'] if summary.get('draft_model_cache') else ''}.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| samples (errors) | {summary['n_samples']} ({summary['n_errors']}) |",
        f"| lossless (greedy: against the target alone; flips classified by top-2 margin) | "
        f"{'-' if lossless is None else summary.get('lossless_verdict')} "
        f"({summary.get('n_exact', summary['n_lossless'])}/{summary['n_samples']} token-identical) |",
        f"| drafts / drafted / accepted tokens | {c['drafts']} / {c['drafted_tokens']} / {c['accepted_tokens']} |",
        f"| acceptance rate (accepted / drafted) | {_with_interval(summary, 'acceptance_rate', c['acceptance_rate'], 3)} |",
        f"| mean acceptance length (1 + accepted / drafts) | "
        f"{_with_interval(summary, 'mean_acceptance_length', c['mean_acceptance_length'], 3)} |",
        f"| tokens per target pass | {_fmt(c['tokens_per_target_pass'])} |",
        f"| per-position acceptance rate | {', '.join(_fmt(x, 2) for x in c['per_position_acceptance_rate']) or '-'} |",
        f"| speedup, median per sample (wall, same run) | "
        f"{_with_interval(summary, 'speedup_median', summary['speedup_median'], 2, 'x')} |",
        f"| speedup, pooled (sum of walls) | {_fmt(summary['speedup_pooled'], 2)}x |",
        f"| decode-phase speedup, median | {_fmt(summary['decode_speedup_median'], 2)}x |",
        f"| speedup over transformers generate(), median | {_fmt(summary['speedup_vs_generate_median'], 2)}x |",
        f"| prefill overlap (hidden fraction of the draft prefill), median | {_fmt(summary['prefill_overlap_median'], 2)} |",
        f"| independent position match, draft alone vs target alone (NOT an acceptance rate) | "
        f"{_fmt(summary['independent_position_match_NOT_acceptance'])} |",
        "",
        "Time split over all samples (s): " + ", ".join(f"{k} {v:.4f}" for k, v in summary["time_split_s"].items()),
        "",
        "Definitions (vLLM): a draft is one round that proposed at least one token; acceptance rate = accepted / "
        "drafted; mean acceptance length = 1 + accepted / drafts; per-position rate k = drafts accepted at "
        "position k / drafts. Speedup = target-alone wall / speculative wall for the same sample in the same run. "
        "The independent position match compares two separate generations position by position (what the "
        "seeds reported as acceptance); no draft token was conditioned on the target's prefix there."
        + (f" In brackets: {100 * intervals['level']:.0f}% bootstrap intervals over samples ({intervals['resamples']} "
           f"resamples, seed {intervals['seed']}): how far the figure could move on other clips like these; compare two "
           "drafters on the same clips with benchmarks/compare_live_runs.py (paired)." if intervals else ""),
        "",
        f"![acceptance]({ACCEPTANCE_PNG})",
        f"![speedup]({SPEEDUP_PNG})",
        f"![time split]({SPLIT_PNG})",
        "",
    ]
    lines += simulated_vs_live(summary)
    by_type = summary.get("by_question_type") or {}
    if by_type:
        lines += ["## By question type", "", "| question type | samples | acceptance rate | mean acceptance length | "
                  "median speedup |", "|---|---|---|---|---|"]
        lines += [f"| {q} | {v['n_samples']} | {_fmt(v['acceptance_rate'])} | {_fmt(v['mean_acceptance_length'], 2)} | "
                  f"{_fmt(v['speedup_median'], 2)}x |" for q, v in by_type.items()]
        lines.append("")
    rejected = summary.get("rejected_tokens_top") or []
    if rejected:
        shown = sum(n for _, n in rejected)
        total = summary.get("rejections", shown)
        lines += ["## Where drafts fail", "", "The target's tokens that replaced a rejected draft, most frequent "
                  f"first (the top {len(rejected)}: {shown} of {total} rejections): what the draft could not predict.", "",
                  "| target token | rejections |", "|---|---|"]
        lines += [f"| `{text or ' '}` | {n} |" for text, n in rejected]
        lines.append("")
    loads = {k: v for k, v in (summary.get("model_load_s") or {}).items() if v is not None}
    if loads:
        lines += ["Model load (s, once per model, not part of any sample): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in loads.items()) + ".", ""]
    if summary.get("timing_warnings"):
        lines += ["## Timing warnings", ""] + [f"- **warning**: {w}" for w in summary["timing_warnings"]] + [""]
    errors = [r for r in records if r.get("error")]
    if errors:
        lines += ["## Errors", ""] + [f"- {r['id']}: {r['error']}" for r in errors] + [""]
    return "\n".join(lines)


def simulated_vs_live(summary: dict[str, Any]) -> list[str]:
    """For an ``adapter:RUN`` draft (``summary["simulated_acceptance"]`` present): the head's
    SIMULATED (offline) acceptance from its training run beside this run's LIVE one, labelled, so
    the one is never read as the other. Empty for other drafts."""
    if "simulated_acceptance" not in summary:
        return []
    c, config = summary["counts"], summary["config"]
    simulated = summary["simulated_acceptance"]
    lines = ["## Acceptance: simulated (offline) vs live", "",
             f"| gamma {config['gamma']}{' (adaptive, live)' if config['adaptive_gamma'] else ''} | acceptance rate | "
             "mean acceptance length |", "|---|---|---|"]
    if simulated is None:
        lines.append("| simulated (offline) | none recorded in the adapter run | - |")
    else:
        lines.append(f"| simulated (offline): held-out store rows, step {simulated.get('step')} | "
                     f"{_fmt(simulated.get('acceptance_rate'))} | {_fmt(simulated.get('mean_acceptance_length'))} |")
        replay = simulated.get("replay")
        if isinstance(replay, dict):
            lines.append(f"| simulated (offline), replaying the live loop's rounds: the same rows | "
                         f"{_fmt(replay.get('acceptance_rate'))} | {_fmt(replay.get('mean_acceptance_length'))} |")
    lines += [f"| live: this run, {summary['n_samples']} samples, temperature {config['temperature']} | "
              f"{_fmt(c['acceptance_rate'])} | {_fmt(c['mean_acceptance_length'])} |", ""]
    if simulated is not None:
        lines += [f"Simulated (offline): {simulated.get('note') or 'greedy chains on stored rows'} "
                  f"(`{simulated.get('source')}`). Live: drafts verified by the target in this run's loop.", ""]
    return lines


def write_report(out_dir: Path, summary: dict[str, Any], records: Sequence[dict[str, Any]]) -> Path:
    plot_acceptance(summary, out_dir / ACCEPTANCE_PNG)
    plot_speedup(records, out_dir / SPEEDUP_PNG, _subtitle(summary))
    plot_time_split(summary, records, out_dir / SPLIT_PNG)
    path = out_dir / REPORT_NAME
    path.write_text(render_markdown(summary, records), encoding="utf-8")
    return path
