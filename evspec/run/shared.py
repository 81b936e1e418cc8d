"""What every run command (``evspec bench``, ``evspec spec``) shares, below both: the common option
checks, the "auto" device and dtype, the reporter protocol, model loading through the registry,
the run's samples (the built-in synthetic set when no dataset is given), the decode state of the
``cache`` option, and what happens between models. The run folder itself is :mod:`evspec.run.rundir`.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from evspec.errors import ConfigError, EvspecError, InputError
from evspec.run.config import CACHES as CACHES  # re-exported: declared with the run configs
from evspec.run.config import CacheKind as CacheKind
from evspec.runtime.decode import EagerState, StateFactory

if TYPE_CHECKING:
    from evspec.data.dataset import Sample
    from evspec.models.base import VisionLanguageModel
    from evspec.runtime.decode import LanguageModel

SYNTH_DIR = "data"
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DTYPE_NAMES: tuple[str, ...] = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
"""What ``dtype`` takes besides ``auto``: the registry's names and their short aliases."""


# --------------------------------------------------------------------------- options


def check_run_options(
    *, max_new_tokens: int, min_new_tokens: int, max_samples: int | None, warmup: int, dtype: str, cache: str,
) -> None:
    """The option checks every run command shares (``evspec bench``, ``evspec spec``); the messages
    name the parameters (the CLI shows them as its flags)."""
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}", parameters=["max_new_tokens"])
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise ConfigError(
            f"min_new_tokens must be between 0 and max_new_tokens ({max_new_tokens}), got {min_new_tokens}",
            parameters=["min_new_tokens", "max_new_tokens"],
        )
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"max_samples must be >= 1, got {max_samples}", parameters=["max_samples"])
    if warmup < 0:
        raise ConfigError(f"warmup must be >= 0, got {warmup}", parameters=["warmup"])
    if dtype != "auto" and dtype not in DTYPE_NAMES:
        raise ConfigError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPE_NAMES)}", parameters=["dtype"])
    if cache not in CACHES:
        raise ConfigError(f"unknown cache {cache!r}; use eager, static or compiled", parameters=["cache"])


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


# --------------------------------------------------------------------------- progress


class Reporter(Protocol):
    """How a run tells its caller what happens (the CLI draws a rich progress bar). ``advance``
    gets the record just written: the bench's ``Record``, or the dict ``evspec spec`` writes."""

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


# --------------------------------------------------------------------------- models


ModelLoader = Callable[[str, torch.device, torch.dtype], "VisionLanguageModel"]


def registry_loader_for(quantize: str | None, event_canvas: str) -> ModelLoader:
    """``registry_loader`` with the load options that are not the defaults bound."""
    extra = {k: v for k, v in (("quantize", quantize), ("event_canvas", event_canvas)) if v not in (None, "auto")}
    return functools.partial(registry_loader, **extra) if extra else registry_loader


def generation_records(config: Any, names: Sequence[str]) -> tuple[Any, dict[str, Any]]:
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
        raise ConfigError(f"generation_config checkpoint: the models' generation_config.json files disagree ({shown}); "
                          f"run them separately", parameters=["generation_config"])
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


def state_factory_for(cache: str, lm: LanguageModel) -> StateFactory:
    """The decode state of a run's ``cache`` option: ``eager`` -> :class:`EagerState`; ``static`` /
    ``compiled`` -> one :class:`~evspec.runtime.static.StaticDecoder` of the model's full context
    (built here once; the caller keeps it per model, it holds the preallocated cache)."""
    if cache == "eager":
        return EagerState
    from evspec.runtime.static import StaticDecoder

    return StaticDecoder(lm, lm.context_length, compile=cache == "compiled")


def compilations() -> int:
    """Graphs ``torch.compile`` has compiled in this process so far (dynamo's own counter; a static
    decoder compiles, and on CUDA captures, one graph per pass shape): a sample during which this
    grew paid a compilation inside its timings."""
    import sys

    if "torch._dynamo" not in sys.modules:
        return 0
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def release_memory() -> None:
    """After a model is dropped: unfreeze, collect and return its memory before the next loads."""
    gc.unfreeze()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def error_text(exc: BaseException) -> str:
    """A failed sample's ``error`` field: evspec's own message, else the exception's type and text."""
    return str(exc) if isinstance(exc, EvspecError) else f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- samples


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
