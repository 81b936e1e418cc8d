"""A speculative-decoding run over a dataset (``evspec spec``): samples, resume, records, summary, report.

Per sample (after ``warmup`` discarded samples): the target alone, then the speculative decoder,
in the same process with the same state factory (:func:`evspec.spec.engine.compare`). Files in
the run folder:

    config.json     the run's identity (what a resume must match), config, environment, command
    records.jsonl   one JSON line per sample: token ids and text of both runs, counts, timings,
                    ``lossless`` (greedy: token-identical to the baseline), speedups; flushed per
                    line, so a killed run resumes where it stopped (a torn last line is dropped)
    summary.json    totals with vLLM's metric definitions, config, versions, device, seed
    report.md       tables and plots: acceptance by position, speedup per sample, time split
                    (rendered by :mod:`evspec.spec.report`)

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
    compilations,
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
from evspec.spec.report import ACCEPTANCE_PNG, SPEEDUP_PNG, SPLIT_PNG, write_report

if TYPE_CHECKING:
    from evspec.data.dataset import Sample
    from evspec.models.base import VisionLanguageModel
    from evspec.spec.engine import SpecVsBaseline
    from evspec.spec.proposers import Proposer

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
    oracle_draft: str = "auto"  # the model whose passes give oracle:ALPHA its cost; auto: see oracle_draft_model
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

    @property
    def oracle_draft_model(self) -> str:
        """``oracle_draft``, with ``auto`` resolved: ``random-0.2b-eventgpt`` (a ~0.2B draft, as
        ``benchmarks/gpu_spec.py`` measures) for a ``random-7b-*`` target, else ``tiny-eventgpt``."""
        if self.oracle_draft != "auto":
            return self.oracle_draft
        return "random-0.2b-eventgpt" if self.target.startswith("random-7b-") else "tiny-eventgpt"

    def model_names(self) -> list[str]:
        """The registry names this run loads: the target, and the draft model (or the oracle's)."""
        if self.oracle_alpha is not None:
            return [self.target, self.oracle_draft_model]
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
        draft = loader(config.oracle_draft_model, draft_device, dtype)
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


def spec_record(result: SpecVsBaseline) -> dict[str, Any]:
    """One sample's ``records.jsonl`` row (minus id, question type and models): the run layer, not the
    engine, knows the schema of the records it writes."""
    return {
        "lossless": result.lossless,
        "exact": result.exact,
        "lossless_check": None if result.check is None else result.check.as_dict(),
        "first_divergence": result.first_divergence,
        "synthetic": result.spec.synthetic,
        "baseline": {
            "token_ids": result.baseline.token_ids, "text": result.baseline.text,
            "prefill_s": result.baseline.prefill_s, "decode_s": result.baseline.decode_s, "wall_s": result.baseline.wall_s,
        },
        "spec": {
            "token_ids": result.spec.token_ids, "text": result.spec.text, "timings": result.spec.timings.as_dict(),
            "drafts_per_round": result.spec.gamma_trace, "stopped_on_eos": result.spec.stopped_on_eos,
            "rejected_at": result.spec.rejected_at, "rejected_tokens": result.spec.rejected_tokens,
        },
        "counts": result.spec.counts.as_dict(),
        "speedup": result.speedup,
        "decode_speedup": result.decode_speedup,
        "generate_s": result.generate_s,
        "generate_matches_baseline": None if result.generate_ids is None else result.generate_ids == result.baseline.token_ids,
        "speedup_vs_generate": result.speedup_vs_generate,
        "draft_alone_ids": result.draft_alone_ids,
        "independent_position_match": result.independent_position_match,
        "independent_position_match_note": "two independent generations compared by position; NOT an acceptance rate",
    }


def run_spec_sample(config: SpecRunConfig, target: VisionLanguageModel, proposer: Proposer, sample: Sample,
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
    return {**head, **spec_record(comparison), "error": None}


COMPILE_RETRIES = 2
"""How often a sample is run again because a graph was compiled during its run."""


def run_measured_sample(config: SpecRunConfig, target: VisionLanguageModel, proposer: Proposer, sample: Sample,
                        target_factory: Any) -> dict[str, Any]:
    """:func:`run_spec_sample`, run again (up to ``COMPILE_RETRIES`` times) while a run compiles a
    graph: a pass shape no earlier sample met (a rare full acceptance, a new length bucket) would
    otherwise put a compilation (~a minute at 7B shapes) into this sample's timings. The record
    says how many runs were discarded (``compile_retries``) and whether its own compiled."""
    for retries in range(COMPILE_RETRIES + 1):
        before = compilations()
        record = run_spec_sample(config, target, proposer, sample, target_factory)
        compiled = compilations() != before
        if not compiled:
            break
    return {**record, "compile_retries": retries, "compiled_during_run": compiled}


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
    identity.update(oracle_draft=config.oracle_draft_model if config.draft_kind == "oracle" else config.oracle_draft)
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
            run_spec_sample(config, target, proposer, samples[i % len(samples)], target_factory)
        progress.status(f"running {config.target} <- {config.draft}")
        with JsonLinesLog(records_path, _row, dump_line) as log:  # truncates a torn last line
            for sample in pending:
                record = {**run_measured_sample(config, target, proposer, sample, target_factory),
                          "model_load_s": model_load_s}
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
