"""The benchmark runner: every (sample, model) pair through the staged pipeline, timed from outside.

Per sample the runner calls, each in its own :class:`~evspec.runtime.timing.StageTimer` stage::

    read        model.load(sample)       (the sample's files -> frames; model loading is timed per model)
    preprocess  model.preprocess(visual, sample.query)
    encode      model.encode(prepared)
    prefill     prefill(model.language_model, model.splice(prepared, features))   (by the DecodeStrategy)
    decode      decode(prefilled, ..., on_token=timer.mark_token)                 (by the DecodeStrategy)

and appends one :class:`~evspec.bench.records.Record` to ``records.jsonl`` (flushed), so a killed
run resumes where it stopped. Warm-up samples run the same pipeline and are discarded. The loop
over models and samples is the run layer's orchestrator (:func:`evspec.run.orchestrator.run_samples`);
:class:`BenchJob` is the bench's part of it.

Python's cyclic garbage collector is paused while a sample runs and the loaded model's objects
are frozen out of later collections (``gc.freeze``): a full collection over transformers'
object graph took 30-300 ms on this project's CPU machine and landed inside timed decode steps
(a 250-310 ms "token" in the first measured sample). Nothing else in the process is
changed: the collector is back on between samples.

The decode-strategy seam (for speculative decoding, ``--draft NAME``)
--------------------------------------------------------------------
Everything after ``encode`` belongs to a :class:`DecodeStrategy`::

    class DecodeStrategy(Protocol):
        name: str                                   # goes into every record ("target", "spec:...")
        def describe(self) -> dict: ...             # its settings; part of the run's identity
        def run(self, model, prepared, features, sample, timer, settings) -> DecodeOutcome: ...

``run`` must time the target's prompt pass as stage ``"prefill"`` and the token loop as stage
``"decode"``, marking each emitted token with ``timer.mark_token`` (pass it as ``on_token``); it
may open further stages of its own (e.g. ``"draft_load"``, ``"draft_encode"``,
``"draft_prefill"``): they land in ``Record.extra_stages_s``, count in ``total_s`` and, when they
run before ``decode``, in TTFT. ``DecodeOutcome.metrics`` (e.g. ``acceptance_rate``,
``mean_acceptance_length`` with vLLM's definitions) lands in ``Record.metrics``; the summary
and report pick up every numeric metric by name. :class:`TargetOnlyStrategy` is the plain
one-token-per-pass strategy; a speculative strategy is another class with the same ``run``.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from evspec.bench.config import DEFAULT_MODELS as DEFAULT_MODELS  # re-exported with the config
from evspec.bench.config import BenchConfig
from evspec.bench.records import Record
from evspec.errors import ConfigError
from evspec.models.registry import check_model_name, check_token_budget
from evspec.run.config import identity, identity_fields
from evspec.run.orchestrator import Loaded, RunPlan, SampleJob, run_samples
from evspec.run.rundir import RECORDS_NAME, REPORT_NAME, SUMMARY_NAME
from evspec.run.shared import (
    CacheKind,
    ModelLoader,
    Reporter,
    SilentReporter,
    dataset_root,
    error_text,
    generation_records,
    registry_loader_for,
    state_factory_for,
)
from evspec.runtime.decode import Prefilled, SamplingConfig, StateFactory, decode, prefill
from evspec.runtime.timing import STAGES, StageTimer, Timings, collector_paused

if TYPE_CHECKING:
    from evspec.data.dataset import Sample
    from evspec.models.base import Prepared, VisionLanguageModel, VisualFeatures

IDENTITY_FIELDS: tuple[str, ...] = (*identity_fields(BenchConfig), "decoder")
"""Config fields that change what a record means (the fields marked ``identity`` in
:class:`~evspec.bench.config.BenchConfig`, and the decode strategy's description): a rerun into
the same folder must match them."""


@dataclass
class DecodeSettings:
    """What every decode strategy is asked for."""

    max_new_tokens: int
    min_new_tokens: int
    sampling: SamplingConfig


@dataclass
class DecodeOutcome:
    """A decode strategy's result for one sample; ``metrics`` are strategy-specific numbers."""

    token_ids: list[int]
    n_prompt_tokens: int
    stopped_on_eos: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)


class DecodeStrategy(Protocol):
    """A decode strategy (module docstring): times "prefill" and "decode", marks tokens."""

    name: str

    def describe(self) -> dict[str, Any]: ...

    def run(
        self, model: VisionLanguageModel, prepared: Prepared, features: VisualFeatures, sample: Sample,
        timer: StageTimer, settings: DecodeSettings,
    ) -> DecodeOutcome: ...


class TargetOnlyStrategy:
    """Plain decoding: one target pass per token (``evspec.runtime.decode``).

    ``cache``: ``eager`` = transformers modules + DynamicCache (bit-identical to generate());
    ``static`` = evspec's preallocated KV cache; ``compiled`` = the static cache with the step
    compiled (CUDA graphs; the first samples compile, which is what ``--warmup`` is for). One
    static cache of the model's full context is kept per model and reused; it is held by a weak
    reference to the model, so it is freed with the model (before the next model loads).
    """

    name = "target"

    def __init__(self, cache: CacheKind = "eager") -> None:
        self.cache = cache
        self._static: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "cache": self.cache}

    def _state_factory(self, model: VisionLanguageModel) -> StateFactory:
        if model not in self._static:
            self._static[model] = state_factory_for(self.cache, model.language_model)
        return self._static[model]

    def run(
        self, model: VisionLanguageModel, prepared: Prepared, features: VisualFeatures, sample: Sample,
        timer: StageTimer, settings: DecodeSettings,
    ) -> DecodeOutcome:
        factory = self._state_factory(model)
        with timer.stage("prefill"):
            embeds = model.splice(prepared, features)
            prefilled: Prefilled = prefill(model.language_model, embeds, factory)
        with timer.stage("decode"):
            result = decode(
                prefilled, max_new_tokens=settings.max_new_tokens, min_new_tokens=settings.min_new_tokens,
                eos_token_ids=model.eos_token_ids, sampling=settings.sampling, on_token=timer.mark_token,
            )
        return DecodeOutcome(
            token_ids=result.token_ids, n_prompt_tokens=prefilled.n_prompt_tokens, stopped_on_eos=result.stopped_on_eos,
        )


# --------------------------------------------------------------------------- progress


# --------------------------------------------------------------------------- one sample


def _record(model_name: str, strategy: str, sample: Sample, timings: Timings, outcome: DecodeOutcome,
            n_visual: int, text: str) -> Record:
    for needed in ("prefill", "decode"):
        if needed not in timings.stages:
            raise RuntimeError(f"decode strategy {strategy!r} did not time a {needed!r} stage")
    if timings.n_tokens != len(outcome.token_ids):
        raise RuntimeError(
            f"decode strategy {strategy!r} marked {timings.n_tokens} tokens but returned {len(outcome.token_ids)}"
        )
    stages = timings.stages
    return Record(
        id=sample.id, model=model_name, decoder=strategy,
        read_s=stages.get("read"), preprocess_s=stages.get("preprocess"), encode_s=stages.get("encode"),
        prefill_s=stages["prefill"], decode_s=stages["decode"], total_s=timings.total_s,
        ttft_s=timings.ttft_s, tpot_s=timings.tpot_s, tokens_per_s=timings.tokens_per_s,
        n_prompt_tokens=outcome.n_prompt_tokens, n_visual_tokens=n_visual, n_new_tokens=len(outcome.token_ids),
        stopped_on_eos=outcome.stopped_on_eos, token_ids=list(outcome.token_ids), text=text,
        token_latencies_s=timings.token_latencies, peak_memory_bytes=timings.peak_memory_bytes,
        extra_stages_s={k: v for k, v in stages.items() if k not in STAGES}, metrics=dict(outcome.metrics),
    )


def run_bench_sample(
    model: VisionLanguageModel, model_name: str, sample: Sample, strategy: DecodeStrategy, timer: StageTimer,
    settings: DecodeSettings,
) -> Record:
    """One sample through one model, every stage timed; a failure becomes a record with ``error``."""
    try:
        with torch.inference_mode():
            with timer.stage("read"):  # the sample's files -> frames
                visual = model.load(sample)
            with timer.stage("preprocess"):
                prepared = model.preprocess(visual, sample.query)
            with timer.stage("encode"):
                features = model.encode(prepared)
            outcome = strategy.run(model, prepared, features, sample, timer, settings)
        timings = timer.read()
        return _record(model_name, strategy.name, sample, timings, outcome, features.n_tokens,
                       model.decode_text(outcome.token_ids))
    except Exception as exc:
        timer.reset()
        return Record(id=sample.id, model=model_name, decoder=strategy.name, error=error_text(exc))


# --------------------------------------------------------------------------- the run


@dataclass
class BenchResult:
    """What a run produced: the records of this config (newest per pair) and the summary."""

    out_dir: Path
    records: list[Record]
    summary: dict[str, Any]
    report_path: Path | None

    def n_ok(self, model: str) -> int:
        return sum(1 for r in self.records if r.model == model and r.error is None)


OUTPUTS: tuple[str, ...] = (RECORDS_NAME, SUMMARY_NAME, REPORT_NAME, "*.png")
"""What ``--force`` deletes before a run of another identity (``config.json`` too)."""


class BenchJob(SampleJob[Any, Record]):
    """The bench's part of a run (:mod:`evspec.run.orchestrator`): one group per model, one
    :class:`Record` per (sample, model), each sample timed stage by stage with the cyclic garbage
    collector paused; a model that fails to load gives every pending sample a record with the error."""

    def __init__(self, config: BenchConfig, strategy: DecodeStrategy, model_loader: ModelLoader,
                 device: torch.device, dtype: torch.dtype, write_report: bool) -> None:
        self.groups = config.models
        self.strategy = strategy
        self.model_loader = model_loader
        self.device, self.dtype = device, dtype
        self.settings = DecodeSettings(config.max_new_tokens, config.min_new_tokens, config.sampling())
        self.timer = StageTimer(device)
        self.write_report = write_report

    def parse(self, row: Any) -> Record:
        if not isinstance(row, dict):
            raise TypeError(f"expected a JSON object, got {type(row).__name__}")
        return Record.from_dict(row)

    def dump(self, record: Record) -> str:
        return record.to_json()

    def pair(self, record: Record) -> tuple[str, str]:
        return record.key

    def error(self, record: Record) -> str | None:
        return record.error

    def load(self, group: str) -> Loaded[Any]:
        start = time.perf_counter()
        model = self.model_loader(group, self.device, self.dtype)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return Loaded(model, time.perf_counter() - start)

    def load_failed(self, group: str, sample: Sample, message: str) -> Record:
        return Record(id=sample.id, model=group, decoder=self.strategy.name, error=message)

    def warm_up(self, loaded: Loaded[Any], group: str, sample: Sample) -> None:
        with collector_paused():
            run_bench_sample(loaded.models, group, sample, self.strategy, self.timer, self.settings)

    def run_sample(self, loaded: Loaded[Any], group: str, sample: Sample) -> Record:
        with collector_paused():
            record = run_bench_sample(loaded.models, group, sample, self.strategy, self.timer, self.settings)
        record.model_load_s = loaded.load_s
        return record

    def warning(self, group: str, record: Record) -> str:
        return f"{group} / {record.id}: {record.error}"

    def summarize(self, records: list[Record], meta: dict[str, Any], model_load_s: dict[str, Any],
                  machine: dict[str, Any]) -> dict[str, Any]:
        from evspec.bench.stats import build_summary

        return build_summary(records, meta=meta, models=self.groups, model_load_s=model_load_s, machine=machine)

    def report(self, out_dir: Path, summary: dict[str, Any], records: list[Record]) -> Path | None:
        from evspec.bench.report import write_report as write_markdown

        return write_markdown(out_dir, summary, records) if self.write_report else None


def _draft_strategy(draft: str, config: BenchConfig, device: torch.device, dtype: torch.dtype,
                    model_loader: ModelLoader | None) -> DecodeStrategy:
    """``config.draft``: the speculative engine behind the decode-strategy seam (the draft model by
    name through the registry, unquantized, unless the run has its own loader)."""
    from evspec.bench.spec_strategy import SpeculativeStrategy  # it imports this module: imported when used

    return SpeculativeStrategy(
        draft, gamma=config.gamma, adaptive_gamma=config.adaptive_gamma,
        parallel_prefill=config.parallel_prefill, device=device, dtype=dtype, draft_device=config.draft_device,
        cache=config.cache, seed=config.seed,
        model_loader=model_loader or registry_loader_for(None, config.event_canvas),
    )


def run_bench(
    config: BenchConfig,
    out_dir: str | Path,
    *,
    force: bool = False,
    strategy: DecodeStrategy | None = None,
    model_loader: ModelLoader | None = None,
    reporter: Reporter | None = None,
    write_report: bool = True,
    command: str | None = None,
) -> BenchResult:
    """Run (or resume) a benchmark into ``out_dir``; write records, summary and report.

    Resume: pairs with a successful record are skipped; failed pairs are tried again and the
    newest record of a pair wins. A folder made with another identity (``IDENTITY_FIELDS``) is
    refused unless ``force``, which deletes the old results first. ``command`` is the command
    line recorded in the results (the CLI passes its own; default ``sys.argv``). ``strategy``:
    what follows ``encode`` (default: ``config.draft``'s speculative strategy, or the target alone).
    The loop itself is the run layer's (:func:`evspec.run.orchestrator.run_samples`).
    """
    if strategy is not None and config.draft is not None:
        raise ConfigError("give either a decode strategy or draft, not both", parameters=["draft"])
    custom_loader = model_loader
    if model_loader is None:
        for name in config.models:
            check_model_name(name)  # before any work: a typo should not cost a dataset build
            check_token_budget(name, config.max_new_tokens, config.min_new_tokens)
        model_loader = registry_loader_for(config.quantize, config.event_canvas)
        config, generation = generation_records(config, config.models)
    elif config.quantize is not None or config.generation_config != "evspec":
        raise ConfigError("quantize and generation_config apply to models loaded by name (the registry), "
                          "not to a custom loader", parameters=["quantize", "generation_config"])
    else:
        generation = {"source": config.generation_config, "checkpoint_generation_config": None}
    out_dir = Path(out_dir)
    device = config.resolved_device()
    dtype = config.resolved_dtype(device)
    if config.quantize is not None:
        from evspec.models.loading import LoadOptions

        LoadOptions.resolve(device, dtype, config.quantize)  # CUDA and bitsandbytes present, or one clear error
    if strategy is None:
        strategy = (_draft_strategy(config.draft, config, device, dtype, custom_loader) if config.draft is not None
                    else TargetOnlyStrategy(config.cache))
    plan = RunPlan(
        out_dir=out_dir,
        identity=identity(config, dataset=str(dataset_root(config.dataset, out_dir).resolve()), device=str(device),
                          dtype=str(dtype).removeprefix("torch."), decoder=strategy.describe()),
        config={**asdict(config), "generation": generation}, outputs=OUTPUTS, device=device, dtype=dtype,
        dataset=config.dataset, split=config.split, max_samples=config.max_samples,
        allow_outside_root=config.allow_outside_root, warmup=config.warmup, seed=config.seed, force=force,
        command=command,
    )
    job = BenchJob(config, strategy, model_loader, device, dtype, write_report)
    outcome = run_samples(plan, job, reporter or SilentReporter())
    return BenchResult(out_dir=out_dir, records=outcome.records, summary=outcome.summary,
                       report_path=outcome.report_path)
