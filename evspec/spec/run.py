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

The run itself (identity check and ``force``, samples, ``config.json``, resume, warm-up, the loop,
records, summary and report files) is the run layer's one orchestrator
(:func:`evspec.run.orchestrator.run_samples`), as the bench's is; this module prepares the run
(checks, device and dtype, the identity from :class:`~evspec.spec.config.SpecRunConfig`'s fields)
and supplies :class:`SpecJob`: how the target and draft load, one sample both ways, what a record
holds, and the summary. With no dataset a small synthetic one is built into ``OUT/data``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from evspec.errors import ConfigError, EvspecError
from evspec.models.generation import checkpoint_generation_configs
from evspec.models.registry import check_model_name, check_token_budget
from evspec.run.config import identity, identity_fields
from evspec.run.orchestrator import Loaded, RunPlan, SampleJob, run_samples
from evspec.run.rundir import RECORDS_NAME, REPORT_NAME, SUMMARY_NAME, dump_line, json_object
from evspec.run.shared import (
    ModelLoader,
    Reporter,
    SilentReporter,
    compilations,
    dataset_root,
    error_text,
    generation_records,
    registry_loader,
    registry_loader_for,
    resolve_device,
    resolve_dtype,
    state_factory_for,
)
from evspec.run.stats import latency_stats, timing_warnings
from evspec.spec.config import SpecRunConfig as SpecRunConfig  # re-exported: the run's config lives there
from evspec.spec.metrics import summarize
from evspec.spec.report import ACCEPTANCE_PNG, SPEEDUP_PNG, SPLIT_PNG, write_report

if TYPE_CHECKING:
    from evspec.data.dataset import Sample
    from evspec.models.base import VisionLanguageModel
    from evspec.spec.engine import SpecVsBaseline
    from evspec.spec.proposers import Proposer

IDENTITY_FIELDS: tuple[str, ...] = identity_fields(SpecRunConfig)
"""The fields marked ``identity`` in :class:`~evspec.spec.config.SpecRunConfig`: a rerun into the
same folder must match them."""
OUTPUTS: tuple[str, ...] = (RECORDS_NAME, SUMMARY_NAME, REPORT_NAME, ACCEPTANCE_PNG, SPEEDUP_PNG, SPLIT_PNG)
"""What ``--force`` deletes before a run of another identity (``config.json`` too)."""


# --------------------------------------------------------------------------- models


def build_proposer(
    config: SpecRunConfig, target: VisionLanguageModel, loader: ModelLoader, draft_device: torch.device, dtype: torch.dtype,
) -> Proposer:
    """The proposer named by ``config.draft`` (model drafts are paired with the target here)."""
    from evspec.spec.proposers import DraftModelProposer, NgramProposer, OracleProposer

    if config.draft_kind == "ngram":
        return NgramProposer()
    if config.draft_kind == "adapter":
        from evspec.align.proposer import build_adapter_proposer

        return build_adapter_proposer(config.draft, target, loader, draft_device, dtype, cache=config.cache,
                                      bridge=config.bridge)
    if config.draft_kind == "oracle":
        draft = loader(config.oracle_draft_model, draft_device, dtype)
        return OracleProposer(draft, config.oracle_alpha or 0.0, seed=config.seed,
                              state_factory=state_factory_for(config.draft_model_cache, draft.language_model))
    draft = loader(config.draft, draft_device, dtype)
    return DraftModelProposer.paired(draft, target, bridge=config.bridge, name=f"draft:{config.draft}",
                                     state_factory=state_factory_for(config.draft_model_cache, draft.language_model),
                                     confidence=config.draft_confidence)


# --------------------------------------------------------------------------- records file


def _row(value: Any) -> dict[str, Any]:
    """A line of ``records.jsonl``: a JSON object with the sample's ``id`` (the resume key)."""
    row = json_object(value)
    if "id" not in row:
        raise ValueError("missing field 'id'")
    return row


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


class SpecJob(SampleJob[tuple[Any, Any, Any], dict[str, Any]]):
    """The spec's part of a run (:mod:`evspec.run.orchestrator`): one group (the target and its
    proposer, loaded together), one ``records.jsonl`` row per sample (keyed by id and target), each
    sample run both ways by :func:`run_measured_sample`; a load failure ends the run."""

    def __init__(self, config: SpecRunConfig, model_loader: ModelLoader, device: torch.device,
                 draft_device: torch.device, dtype: torch.dtype) -> None:
        self.config = config
        self.groups = (config.target,)
        self.model_loader = model_loader
        self.device, self.draft_device, self.dtype = device, draft_device, dtype

    def parse(self, row: Any) -> dict[str, Any]:
        return _row(row)

    def dump(self, record: dict[str, Any]) -> str:
        return dump_line(record)

    def pair(self, record: dict[str, Any]) -> tuple[str, str]:
        return (record["id"], str(record.get("target")))

    def error(self, record: dict[str, Any]) -> str | None:
        return record.get("error") or None

    def label(self, group: str) -> str:
        return f"{group} <- {self.config.draft}"

    def load(self, group: str) -> Loaded[tuple[Any, Any, Any]]:
        start = time.perf_counter()
        target = self.model_loader(group, self.device, self.dtype)
        _synchronize(self.device)
        target_s = time.perf_counter() - start
        start = time.perf_counter()
        proposer = build_proposer(self.config, target, self.model_loader, self.draft_device, self.dtype)
        _synchronize(self.draft_device)
        draft_s = time.perf_counter() - start if self.config.draft_kind != "ngram" else None
        factory = state_factory_for(self.config.cache, target.language_model)
        return Loaded((target, proposer, factory), {"target": target_s, "draft": draft_s})

    def warm_up(self, loaded: Loaded[tuple[Any, Any, Any]], group: str, sample: Sample) -> None:
        target, proposer, factory = loaded.models
        run_spec_sample(self.config, target, proposer, sample, factory)

    def run_sample(self, loaded: Loaded[tuple[Any, Any, Any]], group: str, sample: Sample) -> dict[str, Any]:
        target, proposer, factory = loaded.models
        return {**run_measured_sample(self.config, target, proposer, sample, factory), "model_load_s": loaded.load_s}

    def summarize(self, records: list[dict[str, Any]], meta: dict[str, Any], model_load_s: dict[str, Any],
                  machine: dict[str, Any]) -> dict[str, Any]:
        summary = {**summarize(records), "synthetic": self.config.draft_kind == "oracle", **meta}
        # the cache the draft model ran with (``draft_cache`` resolved); None: no draft model
        summary["draft_model_cache"] = self.config.draft_model_cache if self.config.draft_kind in ("model", "oracle") else None
        # this invocation's loads (None: not loaded, every sample done)
        summary["model_load_s"] = model_load_s[self.config.target] or {"target": None, "draft": None}
        summary["machine"] = machine
        summary["timing_warnings"] = spec_timing_warnings(records, machine)
        if self.config.draft_kind == "adapter":  # the head's simulated (offline) acceptance, shown beside the live one
            from evspec.align.proposer import adapter_summary

            summary.update(adapter_summary(self.config.draft, self.config.gamma))
        return summary

    def report(self, out_dir: Path, summary: dict[str, Any], records: list[dict[str, Any]]) -> Path:
        return write_report(out_dir, summary, records)


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
    a sample that fails is passed to ``warn`` as well as to ``advance``. The loop itself is the
    run layer's (:func:`evspec.run.orchestrator.run_samples`)."""
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
    plan = RunPlan(
        out_dir=out_dir,
        identity=identity(
            config, oracle_draft=config.oracle_draft_model if config.draft_kind == "oracle" else config.oracle_draft,
            dataset=str(dataset_root(config.dataset, out_dir).resolve()), device=str(device),
            draft_device=str(draft_device), dtype=str(dtype).removeprefix("torch.")),
        config={**asdict(config), "generation": generation}, outputs=OUTPUTS, device=device, dtype=dtype,
        dataset=config.dataset, split=config.split, max_samples=config.max_samples,
        allow_outside_root=config.allow_outside_root, warmup=config.warmup, seed=config.seed, force=force,
        command=command,
    )
    job = SpecJob(config, model_loader, device, draft_device, dtype)
    outcome = run_samples(plan, job, progress or SilentReporter())
    assert outcome.report_path is not None  # the spec always writes its report
    return SpecRunResult(out_dir, outcome.records, outcome.summary, outcome.report_path)
