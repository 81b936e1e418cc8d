"""A speculative-decoding run over a dataset (``evspec spec``): records, summary, report.

Per sample (after ``warmup`` discarded samples): the target alone, then the speculative decoder,
in the same process with the same state factory (:func:`evspec.spec.engine.compare`). Files in
the run folder:

    config.json     the run's identity (what a resume must match), config, environment, command
    records.jsonl   one JSON line per sample: token ids and text of both runs, counts, timings,
                    ``lossless`` (greedy: token-identical to the baseline), speedups; flushed per
                    line, so a killed run resumes where it stopped (a torn last line is dropped)
    summary.json    totals with vLLM's metric definitions, config, versions, device, seed
    report.md       tables and plots: acceptance by position, speedup per sample, time split

The folder is kept as the bench's is (:mod:`evspec.run.rundir`: identity check, ``force``,
torn-line handling), and the shared options, device/dtype resolution, dataset loading and
progress reporting are :mod:`evspec.run.shared`'s, as the bench's are; only what a record holds
is this module's. With no dataset a small synthetic one is built into ``OUT/data``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from evspec.errors import ConfigError, EvspecError
from evspec.models.generation import checkpoint_generation_configs
from evspec.models.registry import check_model_name, check_token_budget
from evspec.run.rundir import (
    RECORDS_NAME,
    REPORT_NAME,
    SUMMARY_NAME,
    JsonLinesLog,
    check_or_reset,
    dump_line,
    json_object,
    read_lines,
    write_json,
    write_run_config,
)
from evspec.run.shared import (
    ModelLoader,
    Reporter,
    SilentReporter,
    check_run_options,
    dataset_root,
    error_text,
    generation_records,
    load_samples,
    registry_loader,
    registry_loader_for,
    release_memory,
    resolve_device,
    resolve_dtype,
    state_factory_for,
)
from evspec.run.stats import latency_stats, machine_load, timing_warnings
from evspec.runtime.decode import SamplingConfig
from evspec.spec.metrics import summarize

if TYPE_CHECKING:
    from evspec.data.dataset import Sample
    from evspec.models.base import VisionLanguageModel
    from evspec.spec.proposers import Proposer

ACCEPTANCE_PNG = "acceptance_by_position.png"
SPEEDUP_PNG = "speedup_per_sample.png"
SPLIT_PNG = "time_split.png"
IDENTITY_FIELDS: tuple[str, ...] = (
    "target", "draft", "oracle_draft", "dataset", "split", "gamma", "max_gamma", "adaptive_gamma", "max_new_tokens",
    "min_new_tokens", "temperature", "top_p", "seed", "parallel_prefill", "device", "draft_device", "dtype", "cache",
    "bridge", "quantize", "event_canvas", "generation_config",
)
OUTPUTS: tuple[str, ...] = (RECORDS_NAME, SUMMARY_NAME, REPORT_NAME, ACCEPTANCE_PNG, SPEEDUP_PNG, SPLIT_PNG)
"""What ``--force`` deletes before a run of another identity (``config.json`` too)."""


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SpecRunConfig:
    """One ``evspec spec`` run. ``draft``: a model name, ``ngram`` or ``oracle:ALPHA``."""

    target: str = "demo-videollava"
    draft: str = "demo-eventgpt"
    dataset: str | None = None
    split: str | None = None
    max_samples: int | None = None
    allow_outside_root: bool = False  # dataset rows may name files outside the dataset folder
    gamma: int = 4
    max_gamma: int | None = None
    adaptive_gamma: bool = False
    max_new_tokens: int = 32
    min_new_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    parallel_prefill: bool = False
    device: str = "auto"
    draft_device: str | None = None
    dtype: str = "auto"
    cache: str = "eager"
    quantize: str | None = None  # "4bit" | "8bit" for the target and a draft model (bitsandbytes, CUDA)
    warmup: int = 1
    oracle_draft: str = "tiny-eventgpt"
    bridge: str = "auto"
    event_canvas: str = "auto"  # EventGPT's event frames (target or draft): the checkpoint's own, "upstream" or "sensor"
    generation_config: str = "evspec"  # "checkpoint": sample as the target's generation_config.json says

    def __post_init__(self) -> None:
        from evspec.models.generation import check_generation_source
        from evspec.models.registry import check_model_event_canvas

        check_model_event_canvas(self.event_canvas)
        check_generation_source(self.generation_config)
        if self.gamma < 1:
            raise ConfigError(f"gamma must be >= 1, got {self.gamma}", parameters=["gamma"])
        if self.max_gamma is not None and self.max_gamma < self.gamma:
            raise ConfigError(f"max_gamma ({self.max_gamma}) must be >= gamma ({self.gamma})",
                              parameters=["max_gamma", "gamma"])
        check_run_options(max_new_tokens=self.max_new_tokens, min_new_tokens=self.min_new_tokens,
                          max_samples=self.max_samples, warmup=self.warmup, dtype=self.dtype, cache=self.cache)
        if self.bridge not in ("auto", "same", "cross"):
            raise ConfigError(f"unknown bridge {self.bridge!r}; use auto, same or cross", parameters=["bridge"])
        sampling = self.sampling()
        alpha = self.oracle_alpha
        if alpha is not None and not sampling.greedy:
            raise ConfigError("oracle:ALPHA is greedy only (it proposes the target's greedy tokens): use temperature=0",
                              parameters=["temperature"])

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_p=self.top_p, seed=self.seed)

    def model_names(self) -> list[str]:
        """The registry names this run loads: the target, and the draft model (or the oracle's)."""
        if self.oracle_alpha is not None:
            return [self.target, self.oracle_draft]
        return [self.target] if self.draft == "ngram" else [self.target, self.draft]

    @property
    def oracle_alpha(self) -> float | None:
        """ALPHA of ``oracle:ALPHA`` (validated), else None."""
        if not self.draft.startswith("oracle:"):
            return None
        text = self.draft.removeprefix("oracle:")
        try:
            alpha = float(text)
        except ValueError as exc:
            raise ConfigError(f"draft oracle:ALPHA needs a number for ALPHA, got {text!r}", parameters=["draft"]) from exc
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"oracle alpha must be in [0, 1], got {alpha}")
        return alpha

    @property
    def draft_kind(self) -> str:
        if self.draft == "ngram":
            return "ngram"
        return "oracle" if self.oracle_alpha is not None else "model"


# --------------------------------------------------------------------------- models


def build_proposer(
    config: SpecRunConfig, target: VisionLanguageModel, loader: ModelLoader, draft_device: torch.device, dtype: torch.dtype,
) -> Proposer:
    """The proposer named by ``config.draft`` (model drafts are paired with the target here)."""
    from evspec.spec.proposers import DraftModelProposer, NgramProposer, OracleProposer

    if config.draft_kind == "ngram":
        return NgramProposer()
    if config.draft_kind == "oracle":
        draft = loader(config.oracle_draft, draft_device, dtype)
        return OracleProposer(draft, config.oracle_alpha or 0.0, seed=config.seed,
                              state_factory=state_factory_for(config.cache, draft.language_model))
    draft = loader(config.draft, draft_device, dtype)
    return DraftModelProposer.paired(draft, target, bridge=config.bridge, name=f"draft:{config.draft}",
                                     state_factory=state_factory_for(config.cache, draft.language_model))


# --------------------------------------------------------------------------- records file


def _row(value: Any) -> dict[str, Any]:
    """A line of ``records.jsonl``: a JSON object with the sample's ``id`` (the resume key)."""
    row = json_object(value)
    if "id" not in row:
        raise ValueError("missing field 'id'")
    return row


def read_records(path: Path) -> list[dict[str, Any]]:
    """Complete lines of ``records.jsonl``; a torn last line (killed run) is dropped."""
    return read_lines(path, _row)


# --------------------------------------------------------------------------- the run


@dataclass
class SpecRunResult:
    out_dir: Path
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    report_path: Path


def spec_timing_warnings(records: Sequence[dict[str, Any]], machine: dict[str, Any]) -> list[str]:
    """The run's timing warnings (:func:`evspec.run.stats.timing_warnings`) for a spec run: the
    target-alone decode time per token (steady over samples) and the machine's load."""
    per_token = [r["baseline"]["decode_s"] / len(r["baseline"]["token_ids"]) for r in records
                 if not r.get("error") and r["baseline"]["token_ids"]]
    block = {"latency_s": {"tpot_s": latency_stats(per_token).to_dict()}}
    return [w.replace("target alone: tpot", "target alone: decode time per token")
            for w in timing_warnings({"target alone": block}, machine)]


def _synchronize(device: torch.device) -> None:
    """Wait for a model's weights to land on the GPU before its load time is read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_sample(config: SpecRunConfig, target: VisionLanguageModel, proposer: Proposer, sample: Sample,
               target_factory: Any) -> dict[str, Any]:
    """One sample both ways; a failure that is about the sample becomes a record with ``error``."""
    from evspec.spec.engine import compare

    head = {"id": sample.id, "question_type": sample.question_type, "target": config.target, "draft": config.draft}
    try:
        comparison = compare(
            target, proposer, sample=sample, gamma=config.gamma, max_new_tokens=config.max_new_tokens,
            sampling=config.sampling(), adaptive_gamma=config.adaptive_gamma, max_gamma=config.max_gamma,
            parallel_prefill=config.parallel_prefill, min_new_tokens=config.min_new_tokens,
            state_factory=target_factory,
        )
    except (EvspecError, ValueError, RuntimeError) as exc:
        return {**head, "error": error_text(exc)}
    return {**head, **comparison.to_record(), "error": None}


def run_spec(
    config: SpecRunConfig,
    out_dir: str | Path,
    *,
    force: bool = False,
    model_loader: ModelLoader = registry_loader,
    progress: Reporter | None = None,
    command: str | None = None,
) -> SpecRunResult:
    """Run (or resume) ``config`` into ``out_dir``; see the module docstring for the files.

    ``progress``: a :class:`~evspec.run.shared.Reporter` (default: tells no one);
    a sample that fails is passed to ``warn`` as well as to ``advance``."""
    progress = progress or SilentReporter()
    if model_loader is registry_loader:
        for name in config.model_names():
            check_model_name(name)  # before any work: a typo should not cost a dataset build
        check_token_budget(config.target, config.max_new_tokens, config.min_new_tokens)
        # Sampling follows the target's file (the output is the target's); the draft's is recorded.
        config, generation = generation_records(config, [config.target])
        generation["checkpoint_generation_config"] = checkpoint_generation_configs(config.model_names(), strict=False)
        model_loader = registry_loader_for(None, config.event_canvas)
    elif config.quantize is not None or config.generation_config != "evspec":
        raise ConfigError("quantize and generation_config apply to models loaded by name (the registry), "
                          "not to a custom loader", parameters=["quantize", "generation_config"])
    else:
        generation = {"source": config.generation_config, "checkpoint_generation_config": None}
    out_dir = Path(out_dir)
    device = resolve_device(config.device)
    draft_device = resolve_device(config.draft_device) if config.draft_device else device
    dtype = resolve_dtype(config.dtype, device)
    if config.quantize is not None:
        from evspec.models.loading import LoadOptions

        for where in {device, draft_device}:
            LoadOptions.resolve(where, dtype, config.quantize)  # CUDA and bitsandbytes present, or one clear error
        model_loader = registry_loader_for(config.quantize, config.event_canvas)
    identity = {k: v for k, v in asdict(config).items() if k in IDENTITY_FIELDS}
    identity.update(dataset=str(dataset_root(config.dataset, out_dir).resolve()), device=str(device),
                    draft_device=str(draft_device), dtype=str(dtype).removeprefix("torch."))
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"out_dir {out_dir} is an existing file; give a folder for the run", parameters=["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    check_or_reset(out_dir, identity, IDENTITY_FIELDS, force, OUTPUTS)
    samples = load_samples(config.dataset, out_dir, split=config.split, max_samples=config.max_samples,
                           reporter=progress, allow_outside_root=config.allow_outside_root)

    meta = write_run_config(out_dir, identity=identity, config={**asdict(config), "generation": generation},
                            device=str(device), command=command)

    records_path = out_dir / RECORDS_NAME
    done = {r["id"] for r in read_records(records_path) if not r.get("error")}
    pending = [s for s in samples if s.id not in done]
    progress.start(len(samples), len(samples) - len(pending))
    model_load_s: dict[str, float | None] = {"target": None, "draft": None}
    machine: dict[str, Any] = {"cpu_count": machine_load()["cpu_count"], "before": machine_load()}
    if pending:
        progress.status(f"loading {config.target} and the draft on {device} ({dtype})")
        start = time.perf_counter()
        target = model_loader(config.target, device, dtype)
        _synchronize(device)
        model_load_s["target"] = time.perf_counter() - start
        start = time.perf_counter()
        proposer = build_proposer(config, target, model_loader, draft_device, dtype)
        _synchronize(draft_device)
        model_load_s["draft"] = time.perf_counter() - start if config.draft_kind != "ngram" else None
        target_factory = state_factory_for(config.cache, target.language_model)
        torch.manual_seed(config.seed)
        gc.collect()
        gc.freeze()  # the models' objects: later collections need not walk them
        for i in range(config.warmup):
            progress.status("warming up (discarded)")
            run_sample(config, target, proposer, samples[i % len(samples)], target_factory)
        progress.status(f"running {config.target} <- {config.draft}")
        with JsonLinesLog(records_path, _row, dump_line) as log:  # truncates a torn last line
            for sample in pending:
                record = {**run_sample(config, target, proposer, sample, target_factory), "model_load_s": model_load_s}
                log.append(record)
                if record["error"] is not None:
                    progress.warn(f"{record['id']}: {record['error']}")
                progress.advance(record)

        del target, proposer
        release_memory()

    wanted = {s.id: i for i, s in enumerate(samples)}
    latest = {r["id"]: r for r in read_records(records_path) if r["id"] in wanted}
    records = sorted(latest.values(), key=lambda r: wanted[r["id"]])
    summary = {**summarize(records), "synthetic": config.draft_kind == "oracle", **meta}
    summary["model_load_s"] = model_load_s  # this invocation's loads (None: not loaded, every sample done)
    machine["after"] = machine_load()
    summary["machine"] = machine
    summary["timing_warnings"] = spec_timing_warnings(records, machine)
    write_json(out_dir / SUMMARY_NAME, summary)
    report = write_report(out_dir, summary, records)
    return SpecRunResult(out_dir, records, summary, report)


# --------------------------------------------------------------------------- report


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


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
    lines = [
        f"# evspec spec: {config['target']} <- {config['draft']}{synthetic}",
        "",
        f"Command: `{summary['command']}`",
        "",
        f"Device {env['device']} ({env.get('gpu') or env['machine']}), dtype {summary['identity']['dtype']}, "
        f"torch {env['torch']}, transformers {env['transformers']}, evspec {env['evspec']}, seed {config['seed']}, "
        f"gamma {config['gamma']}{' (adaptive)' if config['adaptive_gamma'] else ''}, "
        f"max_new_tokens {config['max_new_tokens']}, temperature {config['temperature']}, "
        f"parallel prefill {'on' if config['parallel_prefill'] else 'off'}, cache {config['cache']}.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| samples (errors) | {summary['n_samples']} ({summary['n_errors']}) |",
        f"| lossless (greedy: against the target alone; flips classified by top-2 margin) | "
        f"{'-' if lossless is None else summary.get('lossless_verdict')} "
        f"({summary.get('n_exact', summary['n_lossless'])}/{summary['n_samples']} token-identical) |",
        f"| drafts / drafted / accepted tokens | {c['drafts']} / {c['drafted_tokens']} / {c['accepted_tokens']} |",
        f"| acceptance rate (accepted / drafted) | {_fmt(c['acceptance_rate'])} |",
        f"| mean acceptance length (1 + accepted / drafts) | {_fmt(c['mean_acceptance_length'])} |",
        f"| tokens per target pass | {_fmt(c['tokens_per_target_pass'])} |",
        f"| per-position acceptance rate | {', '.join(_fmt(x, 2) for x in c['per_position_acceptance_rate']) or '-'} |",
        f"| speedup, median per sample (wall, same run) | {_fmt(summary['speedup_median'], 2)}x |",
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
        "seeds reported as acceptance); no draft token was conditioned on the target's prefix there.",
        "",
        f"![acceptance]({ACCEPTANCE_PNG})",
        f"![speedup]({SPEEDUP_PNG})",
        f"![time split]({SPLIT_PNG})",
        "",
    ]
    by_type = summary.get("by_question_type") or {}
    if by_type:
        lines += ["## By question type", "", "| question type | samples | acceptance rate | mean acceptance length | "
                  "median speedup |", "|---|---|---|---|---|"]
        lines += [f"| {q} | {v['n_samples']} | {_fmt(v['acceptance_rate'])} | {_fmt(v['mean_acceptance_length'], 2)} | "
                  f"{_fmt(v['speedup_median'], 2)}x |" for q, v in by_type.items()]
        lines.append("")
    rejected = summary.get("rejected_tokens_top") or []
    if rejected:
        total = sum(n for _, n in rejected)
        lines += ["## Where drafts fail", "", "The target's tokens that replaced a rejected draft, most frequent "
                  f"first (top {len(rejected)}, {total} rejections): what the draft could not predict.", "",
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


def write_report(out_dir: Path, summary: dict[str, Any], records: Sequence[dict[str, Any]]) -> Path:
    plot_acceptance(summary, out_dir / ACCEPTANCE_PNG)
    plot_speedup(records, out_dir / SPEEDUP_PNG, _subtitle(summary))
    plot_time_split(summary, records, out_dir / SPLIT_PNG)
    path = out_dir / REPORT_NAME
    path.write_text(render_markdown(summary, records), encoding="utf-8")
    return path
