"""``BenchConfig``: one ``evspec bench`` run, each field declared once with its option
(:mod:`evspec.run.config`). Imports no torch: the CLI builds ``evspec bench``'s options from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from evspec.errors import ConfigError
from evspec.models.registry import model_names_help
from evspec.run.config import EVENT_CANVAS_HELP, CacheKind, option

if TYPE_CHECKING:
    import torch

    from evspec.runtime.decode import SamplingConfig

DEFAULT_MODELS: tuple[str, ...] = ("demo-eventgpt", "demo-videollava", "tiny-llava")


def _model_list(text: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in text.split(",") if m.strip())


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run. ``dataset=None`` means the built-in synthetic set under ``OUT/data``.

    The identity fields change what a record means; ``models``, ``max_samples`` and ``warmup`` may
    change between runs (a rerun can add models or samples to a run). The ``draft`` options are in
    the identity through the decode strategy's description (``decoder``)."""

    models: tuple[str, ...] = option(
        DEFAULT_MODELS, f"Model name(s), comma-separated. Names: {model_names_help()}.", flag="--model", short="-m",
        always=True, parse=_model_list, show=",".join)
    dataset: str | None = option(
        None, "Dataset folder (or its JSON). Default: a small synthetic set built into OUT/data.", short="-d",
        identity=True)
    split: str | None = option(None, "Only rows of this split.", identity=True)
    max_samples: int | None = option(None, "First N samples only.", short="-n")
    max_new_tokens: int = option(32, "Most tokens generated per sample.", identity=True)
    min_new_tokens: int = option(0, "EOS is masked below this length (fixed-length timing).", identity=True)
    warmup: int = option(1, "Samples run first per model and discarded.")
    temperature: float = option(0.0, "0 = greedy.", identity=True)
    top_p: float = option(1.0, "Nucleus sampling mass (with temperature > 0).", identity=True)
    seed: int = option(0, "Sampling seed (the same for every sample, so resumes repeat).", identity=True)
    device: str = option("auto", "auto (cuda if available), cpu, cuda, cuda:1 ...", identity=True)
    dtype: str = option("auto", "auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16.", identity=True)
    cache: CacheKind = option("eager", "KV cache: eager (transformers), static, compiled (CUDA graphs).", identity=True)
    quantize: str | None = option(None, "4bit or 8bit weights (bitsandbytes; CUDA only).", identity=True)
    event_canvas: str = option("auto", EVENT_CANVAS_HELP, identity=True)
    generation_config: str = option(
        "evspec", "evspec (--temperature/--top-p) or checkpoint (sample as the models' generation_config.json say; "
        "they must agree).", identity=True)
    allow_outside_root: bool = option(False, "Let dataset rows name files outside the dataset folder.")
    draft: str | None = option(
        None, "Decode speculatively with this draft: a model name (as --model), 'ngram' or 'oracle:ALPHA'.")
    gamma: int = option(4, "With --draft: drafted tokens per round.")
    adaptive_gamma: bool = option(False, "With --draft: adapt gamma to acceptance.")
    parallel_prefill: bool = option(False, "With --draft: draft prefills concurrently.")
    draft_device: str | None = option(None, "With --draft: the draft's device (default --device).")

    def __post_init__(self) -> None:
        from evspec.models.generation import check_generation_source
        from evspec.models.registry import check_model_event_canvas
        from evspec.run.shared import check_run_options

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
        from evspec.runtime.decode import SamplingConfig

        return SamplingConfig(temperature=self.temperature, top_p=self.top_p, seed=self.seed)

    def resolved_device(self) -> torch.device:
        from evspec.run.shared import resolve_device

        return resolve_device(self.device)

    def resolved_dtype(self, device: torch.device) -> torch.dtype:
        from evspec.run.shared import resolve_dtype

        return resolve_dtype(self.dtype, device)
