"""``SpecRunConfig``: one ``evspec spec`` run, each field declared once with its option
(:mod:`evspec.run.config`). Imports no torch: the CLI builds ``evspec spec``'s options from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from evspec.errors import ConfigError
from evspec.models.registry import model_names_help
from evspec.run.config import EVENT_CANVAS_HELP, option

if TYPE_CHECKING:
    from evspec.runtime.decode import SamplingConfig


@dataclass(frozen=True)
class SpecRunConfig:
    """One ``evspec spec`` run. ``draft``: a model name, ``ngram``, ``oracle:ALPHA`` or ``adapter:RUN``. The identity
    fields change what a record means; ``max_samples``, ``warmup`` and ``allow_outside_root`` may
    change when a run is resumed."""

    target: str = option("demo-videollava", f"Target model. Names: {model_names_help()}.", short="-t",
                         identity=True, always=True)
    draft: str = option(
        "demo-eventgpt",
        "Draft: a model name (its own modality input), 'ngram' (prompt lookup), 'oracle:ALPHA' (synthetic) or "
        "'adapter:RUN' (a head trained by evspec align train; RUN its folder or a head folder).",
        identity=True, always=True)
    dataset: str | None = option(None, "Dataset folder or JSON. Default: a synthetic set in OUT/data.", short="-d",
                                 identity=True)
    split: str | None = option(None, "Only rows of this split.", identity=True)
    max_samples: int | None = option(None, "First N samples only.", short="-n")
    allow_outside_root: bool = option(False, "Let dataset rows name files outside the dataset folder.")
    gamma: int = option(4, "Drafted tokens per round (the start value with --adaptive-gamma).", short="-g", identity=True)
    max_gamma: int | None = option(None, "Upper bound of adaptive gamma (default 2 x gamma).", identity=True)
    adaptive_gamma: bool = option(False, "+1 after all accepted, -1 after an early rejection.", identity=True)
    draft_confidence: float = option(
        0.0, "A model draft stops a round after a token it gives less than this probability (0: never).",
        identity=True)
    max_new_tokens: int = option(32, "Most tokens generated per sample.", identity=True)
    min_new_tokens: int = option(0, "EOS is masked below this length.", identity=True)
    temperature: float = option(0.0, "0 = greedy (lossless is then checked token by token).", identity=True)
    top_p: float = option(1.0, "Nucleus mass with temperature > 0.", identity=True)
    seed: int = option(0, "Seed of sampling and of the oracle's draws.", identity=True)
    parallel_prefill: bool = option(False, "Draft prefills while the target prefills.", identity=True)
    device: str = option("auto", "auto, cpu, cuda, cuda:N.", identity=True)
    draft_device: str | None = option(None, "The draft's device (e.g. cuda:1). Default: --device.", identity=True)
    dtype: str = option("auto", "auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16.", identity=True)
    cache: str = option("eager", "KV cache of both models: eager, static, compiled.", identity=True)
    draft_cache: str = option(
        "auto", "KV cache of the draft model: eager, static, compiled; auto: static where --cache is eager, else "
        "--cache. The target keeps --cache, so its output is unchanged.", identity=True)
    quantize: str | None = option(None, "4bit or 8bit target and draft (bitsandbytes; CUDA only).", identity=True)
    warmup: int = option(1, "Samples run first and discarded.")
    oracle_draft: str = option(
        "auto", "The model whose passes give oracle:ALPHA its real cost; auto: random-0.2b-eventgpt for a "
        "random-7b-* target, else tiny-eventgpt.", identity=True)
    bridge: str = option("auto", "Vocabulary bridge: auto, same (token ids), cross (text re-encoding).", identity=True)
    event_canvas: str = option("auto", EVENT_CANVAS_HELP, identity=True)
    generation_config: str = option(
        "evspec", "evspec (--temperature/--top-p) or checkpoint (sample as the target's generation_config.json says).",
        identity=True)

    def __post_init__(self) -> None:
        from evspec.models.generation import check_generation_source
        from evspec.models.registry import check_model_event_canvas
        from evspec.run.shared import CACHES, check_run_options

        check_model_event_canvas(self.event_canvas)
        check_generation_source(self.generation_config)
        if self.gamma < 1:
            raise ConfigError(f"gamma must be >= 1, got {self.gamma}", parameters=["gamma"])
        if self.max_gamma is not None and self.max_gamma < self.gamma:
            raise ConfigError(f"max_gamma ({self.max_gamma}) must be >= gamma ({self.gamma})",
                              parameters=["max_gamma", "gamma"])
        check_run_options(max_new_tokens=self.max_new_tokens, min_new_tokens=self.min_new_tokens,
                          max_samples=self.max_samples, warmup=self.warmup, dtype=self.dtype, cache=self.cache)
        if self.draft_cache != "auto":
            if self.draft_cache not in CACHES:
                raise ConfigError(f"unknown draft_cache {self.draft_cache!r}; use auto, eager, static or compiled",
                                  parameters=["draft_cache"])
            if self.draft_kind in ("ngram", "adapter"):
                raise ConfigError(f"draft_cache is the draft model's cache; {self.draft!r} has no draft model",
                                  parameters=["draft_cache"])
        if not 0.0 <= self.draft_confidence < 1.0:
            raise ConfigError(f"draft_confidence must be in [0, 1), got {self.draft_confidence}",
                              parameters=["draft_confidence"])
        if self.draft_confidence and self.draft_kind in ("ngram", "adapter", "oracle"):
            raise ConfigError(f"draft_confidence needs a draft model's own probabilities; {self.draft!r} drafts otherwise",
                              parameters=["draft_confidence"])
        if self.bridge not in ("auto", "same", "cross"):
            raise ConfigError(f"unknown bridge {self.bridge!r}; use auto, same or cross", parameters=["bridge"])
        sampling = self.sampling()
        alpha = self.oracle_alpha
        if alpha is not None and not sampling.greedy:
            raise ConfigError("oracle:ALPHA is greedy only (it proposes the target's greedy tokens): use temperature=0",
                              parameters=["temperature"])

    def sampling(self) -> SamplingConfig:
        from evspec.runtime.decode import SamplingConfig

        return SamplingConfig(temperature=self.temperature, top_p=self.top_p, seed=self.seed)

    @property
    def draft_model_cache(self) -> str:
        """The draft model's KV cache. ``auto``: a static cache beside an eager target, since only the
        target's output must equal its ``generate()``, and a static cache steps faster (the demo
        draft on a 2-core CPU: 0.98 ms against 1.31 ms a token, no cache concatenation and no mask
        built per step); beside a static or compiled target, the target's."""
        if self.draft_cache != "auto":
            return self.draft_cache
        return "static" if self.cache == "eager" else self.cache

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
        if self.draft_kind == "adapter":  # the model its head reads, as RUN records it
            from evspec.align.proposer import adapter_model_names

            return [self.target, *adapter_model_names(self.draft)]
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
        if self.draft.startswith("adapter:"):
            return "adapter"
        return "oracle" if self.oracle_alpha is not None else "model"
