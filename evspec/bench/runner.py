"""The benchmark runner: every (sample, model) pair through the staged pipeline, timed from outside.

Per sample the runner calls, each in its own :class:`~evspec.runtime.timing.StageTimer` stage::

    read        model.load(sample)       (the sample's files -> frames; model loading is timed per model)
    preprocess  model.preprocess(visual, sample.query)
    encode      model.encode(prepared)
    prefill     prefill(model.language_model, model.splice(prepared, features))   (by the Decoder)
    decode      decode(prefilled, ..., on_token=timer.mark_token)                 (by the Decoder)

and appends one :class:`~evspec.bench.records.Record` to ``records.jsonl`` (flushed), so a killed
run resumes where it stopped. Warm-up samples run the same pipeline and are discarded.

Python's cyclic garbage collector is paused while a sample runs and the loaded model's objects
are frozen out of later collections (``gc.freeze``): a full collection over transformers'
object graph took 30-300 ms on this project's CPU machine and landed inside timed decode steps
(a 250-310 ms "token" in the first measured sample). Nothing else in the process is
changed: the collector is back on between samples.

The decode-strategy seam (for speculative decoding, ``--draft NAME``)
--------------------------------------------------------------------
Everything after ``encode`` belongs to a :class:`Decoder`::

    class Decoder(Protocol):
        name: str                                   # goes into every record ("target", "spec:...")
        def describe(self) -> dict: ...             # its settings; part of the run's identity
        def run(self, model, prepared, features, sample, timer, settings) -> DecodeOutcome: ...

``run`` must time the target's prompt pass as stage ``"prefill"`` and the token loop as stage
``"decode"``, marking each emitted token with ``timer.mark_token`` (pass it as ``on_token``); it
may open further stages of its own (e.g. ``"draft_load"``, ``"draft_encode"``,
``"draft_prefill"``): they land in ``Record.extra_stages_s``, count in ``total_s`` and, when they
run before ``decode``, in TTFT. ``DecodeOutcome.metrics`` (e.g. ``acceptance_rate``,
``mean_acceptance_length`` with vLLM's definitions) lands in ``Record.metrics``; the summary
and report pick up every numeric metric by name. :class:`TargetDecoder` is the plain
one-token-per-pass strategy; a speculative decoder is another class with the same ``run``.
"""

from __future__ import annotations

import functools
import gc
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch

from evspec.bench.records import Record, RecordLog, latest_by_key, read_records
from evspec.bench.rundir import (
    RECORDS_NAME,
    REPORT_NAME,
    SUMMARY_NAME,
    check_or_reset,
    write_json,
    write_run_config,
)
from evspec.errors import ConfigError, EvspecError, InputError
from evspec.models.registry import check_model_name, check_token_budget
from evspec.runtime.decode import Prefilled, SamplingConfig, decode, prefill
from evspec.runtime.timing import STAGES, StageTimer, Timings, collector_paused

if TYPE_CHECKING:
    from evspec.data.dataset import Sample
    from evspec.models.base import Prepared, VisionLanguageModel, VisualFeatures

DEFAULT_MODELS: tuple[str, ...] = ("demo-eventgpt", "demo-videollava", "tiny-llava")
SYNTH_DIR = "data"
IDENTITY_FIELDS: tuple[str, ...] = (
    "dataset", "split", "max_new_tokens", "min_new_tokens", "temperature", "top_p", "seed",
    "device", "dtype", "cache", "quantize", "decoder", "event_canvas", "generation_config",
)
"""Config fields that change what a record means: a rerun into the same folder must match them.
``models``, ``max_samples`` and ``warmup`` may change between runs (a rerun can add models or
samples to a run)."""

DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DTYPE_NAMES: tuple[str, ...] = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
"""What ``--dtype`` takes besides ``auto``: the registry's names and their short aliases."""
CacheKind = Literal["eager", "static", "compiled"]
CACHES: tuple[str, ...] = ("eager", "static", "compiled")


# --------------------------------------------------------------------------- config


def check_run_options(
    *, max_new_tokens: int, min_new_tokens: int, max_samples: int | None, warmup: int, dtype: str, cache: str,
) -> None:
    """The option checks every run command shares (``evspec bench``, ``evspec spec``), with the
    CLI's option names in the messages."""
    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise ConfigError(
            f"--min-new-tokens must be between 0 and --max-new-tokens ({max_new_tokens}), got {min_new_tokens}"
        )
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"--max-samples must be >= 1, got {max_samples}")
    if warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {warmup}")
    if dtype != "auto" and dtype not in DTYPE_NAMES:
        raise ConfigError(f"unknown --dtype {dtype!r}; use auto, {', '.join(DTYPE_NAMES)}")
    if cache not in CACHES:
        raise ConfigError(f"unknown --cache {cache!r}; use eager, static or compiled")


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when this torch sees one, else the CPU; any other name goes through the
    registry's checks (the device must exist here), the same the model loader applies."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from evspec.models.loading import resolve_device as registry_device

    return registry_device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on CUDA (what the models ship in), float32 on CPU; short aliases
    (bf16, fp16, fp32) accepted; the registry checks that the device can do it."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    from evspec.models.loading import resolve_dtype as registry_dtype

    return registry_dtype(DTYPE_ALIASES.get(name, name), device)


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
    """What every decoder is asked for."""

    max_new_tokens: int
    min_new_tokens: int
    sampling: SamplingConfig


@dataclass
class DecodeOutcome:
    """A decoder's result for one sample; ``metrics`` are strategy-specific numbers."""

    token_ids: list[int]
    n_prompt_tokens: int
    stopped_on_eos: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)


class Decoder(Protocol):
    """A decode strategy (module docstring): times "prefill" and "decode", marks tokens."""

    name: str

    def describe(self) -> dict[str, Any]: ...

    def run(
        self, model: VisionLanguageModel, prepared: Prepared, features: VisualFeatures, sample: Sample,
        timer: StageTimer, settings: DecodeSettings,
    ) -> DecodeOutcome: ...


class TargetDecoder:
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

    def _state_factory(self, model: VisionLanguageModel) -> Callable[..., Any] | None:
        if self.cache == "eager":
            return None
        from evspec.runtime.static import StaticDecoder

        if model not in self._static:
            lm = model.language_model
            self._static[model] = StaticDecoder(lm, lm.context_length, compile=self.cache == "compiled")
        return self._static[model]

    def run(
        self, model: VisionLanguageModel, prepared: Prepared, features: VisualFeatures, sample: Sample,
        timer: StageTimer, settings: DecodeSettings,
    ) -> DecodeOutcome:
        factory = self._state_factory(model)
        with timer.stage("prefill"):
            embeds = model.splice(prepared, features)
            prefilled: Prefilled = (
                prefill(model.language_model, embeds) if factory is None else prefill(model.language_model, embeds, factory)
            )
        with timer.stage("decode"):
            result = decode(
                prefilled, max_new_tokens=settings.max_new_tokens, min_new_tokens=settings.min_new_tokens,
                eos_token_ids=model.eos_token_ids, sampling=settings.sampling, on_token=timer.mark_token,
            )
        return DecodeOutcome(
            token_ids=result.token_ids, n_prompt_tokens=prefilled.n_prompt_tokens, stopped_on_eos=result.stopped_on_eos,
        )


# --------------------------------------------------------------------------- progress


class Reporter(Protocol):
    """How a run tells its caller what happens (the CLI draws a rich progress bar). ``advance``
    gets the record just written: a :class:`Record` here, a dict from ``evspec spec``."""

    def start(self, total: int, done: int) -> None: ...
    def status(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def advance(self, record: Any) -> None: ...


class SilentReporter:
    """Library default: tells no one (library code never prints)."""

    def start(self, total: int, done: int) -> None: ...
    def status(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def advance(self, record: Any) -> None: ...


# --------------------------------------------------------------------------- one sample


def _error_text(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, EvspecError) else f"{type(exc).__name__}: {exc}"


def _record(model_name: str, decoder: str, sample: Sample, timings: Timings, outcome: DecodeOutcome,
            n_visual: int, text: str) -> Record:
    for needed in ("prefill", "decode"):
        if needed not in timings.stages:
            raise RuntimeError(f"decoder {decoder!r} did not time a {needed!r} stage")
    if timings.n_tokens != len(outcome.token_ids):
        raise RuntimeError(
            f"decoder {decoder!r} marked {timings.n_tokens} tokens but returned {len(outcome.token_ids)}"
        )
    stages = timings.stages
    return Record(
        id=sample.id, model=model_name, decoder=decoder,
        read_s=stages.get("read"), preprocess_s=stages.get("preprocess"), encode_s=stages.get("encode"),
        prefill_s=stages["prefill"], decode_s=stages["decode"], total_s=timings.total_s,
        ttft_s=timings.ttft_s, tpot_s=timings.tpot_s, tokens_per_s=timings.tokens_per_s,
        n_prompt_tokens=outcome.n_prompt_tokens, n_visual_tokens=n_visual, n_new_tokens=len(outcome.token_ids),
        stopped_on_eos=outcome.stopped_on_eos, token_ids=list(outcome.token_ids), text=text,
        token_latencies_s=timings.token_latencies, peak_memory_bytes=timings.peak_memory_bytes,
        extra_stages_s={k: v for k, v in stages.items() if k not in STAGES}, metrics=dict(outcome.metrics),
    )


def run_sample(
    model: VisionLanguageModel, model_name: str, sample: Sample, decoder: Decoder, timer: StageTimer,
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
            outcome = decoder.run(model, prepared, features, sample, timer, settings)
        timings = timer.read()
        return _record(model_name, decoder.name, sample, timings, outcome, features.n_tokens,
                       model.decode_text(outcome.token_ids))
    except Exception as exc:
        timer.reset()
        return Record(id=sample.id, model=model_name, decoder=decoder.name, error=_error_text(exc))


# --------------------------------------------------------------------------- the run


ModelLoader = Callable[[str, torch.device, torch.dtype], "VisionLanguageModel"]


def registry_loader_for(quantize: str | None, event_canvas: str) -> ModelLoader:
    """``registry_loader`` with the load options that are not the defaults bound."""
    extra = {k: v for k, v in (("quantize", quantize), ("event_canvas", event_canvas)) if v not in (None, "auto")}
    return functools.partial(registry_loader, **extra) if extra else registry_loader


def generation_records(config: BenchConfig | Any, names: Sequence[str]) -> tuple[Any, dict[str, Any]]:
    """The models' ``generation_config.json`` files for the run's ``config.json``, and ``config``
    with their sampling applied when ``config.generation_config == "checkpoint"`` (one sampling
    rule serves every model of a run, so their files must agree)."""
    from evspec.models.generation import checkpoint_generation_configs, sampling_settings

    files = checkpoint_generation_configs(names, strict=config.generation_config == "checkpoint")
    record: dict[str, Any] = {"source": config.generation_config, "checkpoint_generation_config": files}
    if config.generation_config != "checkpoint":
        return config, record
    settings = {name: sampling_settings(raw) for name, raw in files.items()}
    rules = {(t, p) for t, p, _ in settings.values()}
    if len(rules) != 1:
        shown = ", ".join(f"{n}: temperature {t}, top_p {p}" for n, (t, p, _) in settings.items())
        raise ConfigError(f"--generation-config checkpoint: the models' generation_config.json files disagree ({shown}); "
                          f"run them separately")
    (temperature, top_p), = rules
    record["applied"] = {"temperature": temperature, "top_p": top_p}
    record["not_applied"] = {n: skipped for n, (_, _, skipped) in settings.items() if skipped}
    return replace(config, temperature=temperature, top_p=top_p), record


def registry_loader(
    name: str, device: torch.device, dtype: torch.dtype, quantize: str | None = None, event_canvas: str = "auto",
) -> VisionLanguageModel:
    """``evspec.models.registry.load_model`` (imported late: it pulls in the model families)."""
    from evspec.models.registry import load_model

    return load_model(name, device=device, dtype=dtype, quantize=quantize, event_canvas=event_canvas)


@dataclass
class BenchResult:
    """What a run produced: the records of this config (newest per pair) and the summary."""

    out_dir: Path
    records: list[Record]
    summary: dict[str, Any]
    report_path: Path | None

    def n_ok(self, model: str) -> int:
        return sum(1 for r in self.records if r.model == model and r.error is None)


DEFAULT_SYNTH: dict[str, Any] = {"clips": 6, "size": (160, 120), "duration_s": 1.0, "seed": 0}
"""``SynthConfig`` of the built-in set: six 1 s clips of 160x120 (builds in well under a second)."""


def build_default_dataset(out_dir: Path, reporter: Reporter) -> Path:
    """The built-in synthetic set in ``out_dir/data``. The builder resumes and pins its config,
    so a killed build is finished on the next run and a finished one is reused as is."""
    from evspec.data.synth.builder import SynthConfig, build_dataset

    root = out_dir / SYNTH_DIR
    reporter.status(f"building the built-in synthetic dataset in {root}")
    build_dataset(root, SynthConfig(**DEFAULT_SYNTH))
    return root


def dataset_root(dataset: str | None, out_dir: Path) -> Path:
    """The run's dataset folder: ``dataset``, or the built-in synthetic set in ``out_dir/data``."""
    return Path(dataset) if dataset is not None else out_dir / SYNTH_DIR


def load_samples(
    dataset: str | None, out_dir: Path, *, split: str | None, max_samples: int | None, reporter: Reporter,
    allow_outside_root: bool = False,
) -> list[Sample]:
    """The run's samples, building the built-in set first when ``dataset`` is None. No sample,
    or a sample id twice, is an error: records are keyed by id."""
    from evspec.data.dataset import load_dataset

    root = dataset_root(dataset, out_dir)
    if dataset is None:
        build_default_dataset(out_dir, reporter)
    samples = load_dataset(root, split=split, max_samples=max_samples, allow_outside_root=allow_outside_root)
    if not samples:
        raise InputError(f"no samples{f' in split {split!r}' if split else ''}", root)
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise InputError(f"sample id {duplicate!r} appears more than once; records are keyed by id", root)
    return samples


def _identity(config: BenchConfig, dataset: str, device: torch.device, dtype: torch.dtype,
              decoder: Decoder) -> dict[str, Any]:
    values = asdict(config)
    values.update(dataset=dataset, device=str(device), dtype=str(dtype).removeprefix("torch."),
                  decoder=decoder.describe())
    return {k: values[k] for k in IDENTITY_FIELDS}


OUTPUTS: tuple[str, ...] = (RECORDS_NAME, SUMMARY_NAME, REPORT_NAME, "*.png")
"""What ``--force`` deletes before a run of another identity (``config.json`` too)."""


def release_memory() -> None:
    """After a model is dropped: unfreeze, collect and return its memory before the next loads."""
    gc.unfreeze()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _warm_up(model: VisionLanguageModel, name: str, samples: Sequence[Sample], n: int, decoder: Decoder,
             timer: StageTimer, settings: DecodeSettings) -> None:
    """Run the first ``n`` samples (cycling when there are fewer) and discard them."""
    for i in range(n if samples else 0):
        with collector_paused():
            run_sample(model, name, samples[i % len(samples)], decoder, timer, settings)


def run_bench(
    config: BenchConfig,
    out_dir: str | Path,
    *,
    force: bool = False,
    decoder: Decoder | None = None,
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
        raise ConfigError("--quantize and --generation-config apply to models loaded by name (the registry), "
                          "not to a custom loader")
    else:
        generation = {"source": config.generation_config, "checkpoint_generation_config": None}
    decoder = decoder or TargetDecoder(config.cache)
    out_dir = Path(out_dir)
    device = config.resolved_device()
    dtype = config.resolved_dtype(device)
    if config.quantize is not None:
        from evspec.models.loading import LoadOptions

        LoadOptions.resolve(device, dtype, config.quantize)  # CUDA and bitsandbytes present, or one clear error
    root = dataset_root(config.dataset, out_dir)
    identity = _identity(config, str(root.resolve()), device, dtype, decoder)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is an existing file; give a folder for the run")
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
    from evspec.bench.stats import machine_load

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
                message = f"model {name!r} failed to load: {_error_text(exc)}"
                reporter.warn(message)
                for sample in pending:
                    record = Record(id=sample.id, model=name, decoder=decoder.name, error=message)
                    log.append(record)
                    reporter.advance(record)
                model_load_s[name] = None
                continue
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            model_load_s[name] = time.perf_counter() - start
            if config.warmup:
                reporter.status(f"warming up {name} ({config.warmup} sample(s), discarded)")
                _warm_up(model, name, samples, config.warmup, decoder, timer, settings)
            reporter.status(f"running {name}")
            gc.collect()
            gc.freeze()  # the model's objects: later collections need not walk them
            for sample in pending:
                with collector_paused():
                    record = run_sample(model, name, sample, decoder, timer, settings)
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
