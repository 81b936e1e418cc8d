"""The benchmark runner: every (sample, model) pair through the staged pipeline, timed from outside.

Per sample the runner calls, each in its own :class:`~evspec.runtime.timing.StageTimer` stage::

    read        model.load(sample)       (the sample's files -> frames; model loading is timed per model)
    preprocess  model.preprocess(visual, sample.query)
    encode      model.encode(prepared)
    prefill     prefill(model.language_model, model.splice(prepared, features))   (by the DecodeStrategy)
    decode      decode(prefilled, ..., on_token=timer.mark_token)                 (by the DecodeStrategy)

and appends one :class:`~evspec.bench.records.Record` to ``records.jsonl`` (flushed), so a killed
run resumes where it stopped. Warm-up samples run the same pipeline and are discarded.

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

import gc
import time
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from evspec.bench.records import Record, RecordLog, latest_by_key, read_records
from evspec.errors import ConfigError
from evspec.models.registry import check_model_name, check_token_budget
from evspec.run.rundir import (
    RECORDS_NAME,
    REPORT_NAME,
    SUMMARY_NAME,
    check_or_reset,
    write_json,
    write_run_config,
)
from evspec.run.shared import (
    CacheKind,
    ModelLoader,
    Reporter,
    SilentReporter,
    check_run_options,
    dataset_root,
    error_text,
    generation_records,
    load_samples,
    registry_loader_for,
    release_memory,
    resolve_device,
    resolve_dtype,
    state_factory_for,
)
from evspec.runtime.decode import Prefilled, SamplingConfig, StateFactory, decode, prefill
from evspec.runtime.timing import STAGES, StageTimer, Timings, collector_paused

if TYPE_CHECKING:
    from evspec.data.dataset import Sample
    from evspec.models.base import Prepared, VisionLanguageModel, VisualFeatures

DEFAULT_MODELS: tuple[str, ...] = ("demo-eventgpt", "demo-videollava", "tiny-llava")
IDENTITY_FIELDS: tuple[str, ...] = (
    "dataset", "split", "max_new_tokens", "min_new_tokens", "temperature", "top_p", "seed",
    "device", "dtype", "cache", "quantize", "decoder", "event_canvas", "generation_config",
)
"""Config fields that change what a record means: a rerun into the same folder must match them.
``models``, ``max_samples`` and ``warmup`` may change between runs (a rerun can add models or
samples to a run)."""

# --------------------------------------------------------------------------- config



@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run. ``dataset=None`` means the built-in synthetic set under ``OUT/data``."""

    models: tuple[str, ...] = DEFAULT_MODELS
    dataset: str | None = None
    split: str | None = None
    max_samples: int | None = None
    max_new_tokens: int = 32
    min_new_tokens: int = 0
    warmup: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    cache: CacheKind = "eager"
    quantize: str | None = None  # "4bit" | "8bit": bitsandbytes, CUDA only
    event_canvas: str = "auto"  # EventGPT's event frames: the checkpoint's own ("auto"), "upstream" or "sensor"
    generation_config: str = "evspec"  # "checkpoint": sample as the models' generation_config.json says
    allow_outside_root: bool = False  # dataset rows may name files outside the dataset folder

    def __post_init__(self) -> None:
        from evspec.models.generation import check_generation_source
        from evspec.models.registry import check_model_event_canvas

        check_model_event_canvas(self.event_canvas)
        check_generation_source(self.generation_config)
        if not self.models:
            raise ConfigError("give at least one model name")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"a model is named twice in {', '.join(self.models)}")
        check_run_options(max_new_tokens=self.max_new_tokens, min_new_tokens=self.min_new_tokens,
                          max_samples=self.max_samples, warmup=self.warmup, dtype=self.dtype, cache=self.cache)
        self.sampling()  # validates temperature and top_p

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_p=self.top_p, seed=self.seed)

    def resolved_device(self) -> torch.device:
        return resolve_device(self.device)

    def resolved_dtype(self, device: torch.device) -> torch.dtype:
        return resolve_dtype(self.dtype, device)


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


def _identity(config: BenchConfig, dataset: str, device: torch.device, dtype: torch.dtype,
              strategy: DecodeStrategy) -> dict[str, Any]:
    values = asdict(config)
    values.update(dataset=dataset, device=str(device), dtype=str(dtype).removeprefix("torch."),
                  decoder=strategy.describe())
    return {k: values[k] for k in IDENTITY_FIELDS}


OUTPUTS: tuple[str, ...] = (RECORDS_NAME, SUMMARY_NAME, REPORT_NAME, "*.png")
"""What ``--force`` deletes before a run of another identity (``config.json`` too)."""


def _warm_up(model: VisionLanguageModel, name: str, samples: Sequence[Sample], n: int, strategy: DecodeStrategy,
             timer: StageTimer, settings: DecodeSettings) -> None:
    """Run the first ``n`` samples (cycling when there are fewer) and discard them."""
    for i in range(n if samples else 0):
        with collector_paused():
            run_bench_sample(model, name, samples[i % len(samples)], strategy, timer, settings)


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
    line recorded in the results (the CLI passes its own; default ``sys.argv``).
    """
    reporter = reporter or SilentReporter()
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
    strategy = strategy or TargetOnlyStrategy(config.cache)
    out_dir = Path(out_dir)
    device = config.resolved_device()
    dtype = config.resolved_dtype(device)
    if config.quantize is not None:
        from evspec.models.loading import LoadOptions

        LoadOptions.resolve(device, dtype, config.quantize)  # CUDA and bitsandbytes present, or one clear error
    root = dataset_root(config.dataset, out_dir)
    identity = _identity(config, str(root.resolve()), device, dtype, strategy)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"out_dir {out_dir} is an existing file; give a folder for the run", parameters=["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    check_or_reset(out_dir, identity, IDENTITY_FIELDS, force, OUTPUTS)
    samples = load_samples(config.dataset, out_dir, split=config.split, max_samples=config.max_samples,
                           reporter=reporter, allow_outside_root=config.allow_outside_root)
    ids = [s.id for s in samples]

    meta = write_run_config(out_dir, identity=identity, config={**asdict(config), "generation": generation},
                            device=str(device), command=command)

    settings = DecodeSettings(config.max_new_tokens, config.min_new_tokens, config.sampling())
    timer = StageTimer(device)
    model_load_s: dict[str, float | None] = {}
    torch.manual_seed(config.seed)
    from evspec.run.stats import machine_load

    before = machine_load()  # before any timed work: the load is other processes'
    machine: dict[str, Any] = {"cpu_count": before["cpu_count"], "before": before}
    with RecordLog(out_dir / RECORDS_NAME) as log:
        done = {k for k, r in latest_by_key(log.existing).items() if r.error is None}
        todo = {m: [s for s in samples if (s.id, m) not in done] for m in config.models}
        total = len(samples) * len(config.models)
        reporter.start(total, total - sum(len(v) for v in todo.values()))
        for name in config.models:
            pending = todo[name]
            if not pending:
                model_load_s[name] = None
                continue
            reporter.status(f"loading {name} on {device} ({dtype})")
            start = time.perf_counter()
            try:
                model = model_loader(name, device, dtype)
            except Exception as exc:
                message = f"model {name!r} failed to load: {error_text(exc)}"
                reporter.warn(message)
                for sample in pending:
                    record = Record(id=sample.id, model=name, decoder=strategy.name, error=message)
                    log.append(record)
                    reporter.advance(record)
                model_load_s[name] = None
                continue
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            model_load_s[name] = time.perf_counter() - start
            if config.warmup:
                reporter.status(f"warming up {name} ({config.warmup} sample(s), discarded)")
                _warm_up(model, name, samples, config.warmup, strategy, timer, settings)
            reporter.status(f"running {name}")
            gc.collect()
            gc.freeze()  # the model's objects: later collections need not walk them
            for sample in pending:
                with collector_paused():
                    record = run_bench_sample(model, name, sample, strategy, timer, settings)
                record.model_load_s = model_load_s[name]
                log.append(record)
                if record.error is not None:
                    reporter.warn(f"{name} / {sample.id}: {record.error}")
                reporter.advance(record)
            del model
            release_memory()

    wanted = {(s.id, m) for s in samples for m in config.models}
    latest = latest_by_key(read_records(out_dir / RECORDS_NAME))
    order = {sample_id: i for i, sample_id in enumerate(ids)}
    records = sorted(
        (r for k, r in latest.items() if k in wanted),
        key=lambda r: (config.models.index(r.model), order[r.id]),
    )

    from evspec.bench.report import write_report as write_markdown
    from evspec.bench.stats import build_summary

    machine["after"] = machine_load()
    summary = build_summary(records, meta=meta, models=config.models, model_load_s=model_load_s, machine=machine)
    write_json(out_dir / SUMMARY_NAME, summary)
    report_path = write_markdown(out_dir, summary, records) if write_report else None
    return BenchResult(out_dir=out_dir, records=records, summary=summary, report_path=report_path)
