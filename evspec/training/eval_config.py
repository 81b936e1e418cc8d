"""``EvalConfig``: one ``evspec eval`` run, each field declared once with its option
(:mod:`evspec.run.config`). Imports no torch: the CLI builds ``evspec eval``'s options from it."""

from __future__ import annotations

from dataclasses import dataclass

from evspec.errors import ConfigError
from evspec.models.registry import model_names_help
from evspec.run.config import EVENT_CANVAS_HELP, option


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation: ``model``'s greedy answers, or a hand-made file of ``answers``, judged
    against the dataset's ``answer`` and ``event_visible_answer`` (exactly one of the two).
    ``dataset=None`` means the built-in synthetic set under ``OUT/data``. The identity fields
    change what a record means; ``max_samples`` and ``allow_outside_root`` may change when a run is
    resumed (a rerun can add samples)."""

    model: str | None = option(
        None, f"The model that answers. Names: {model_names_help()}.",
        short="-m", identity=True)
    answers: str | None = option(
        None, 'Judge these answers instead of a model\'s: JSON lines {"id", "prediction"}.', identity=True)
    dataset: str | None = option(
        None, "An evspec clip dataset with answers. Default: a small synthetic set built into OUT/data.", short="-d",
        identity=True)
    split: str | None = option(None, "Only rows of this split.", identity=True)
    max_samples: int | None = option(None, "First N samples only.", short="-n")
    all_questions: bool = option(
        False, "Every question the synthetic builder wrote per clip, not only the row's.", identity=True)
    max_new_tokens: int = option(64, "Most tokens per answer.", identity=True)
    device: str = option("auto", "auto, cpu, cuda, cuda:N.", identity=True)
    dtype: str = option("float32", "float32, bfloat16, float16, or auto (bf16 on CUDA, fp32 on CPU).", identity=True)
    event_canvas: str = option("auto", EVENT_CANVAS_HELP, identity=True)
    allow_outside_root: bool = option(False, "Let dataset rows name files outside the dataset folder.")

    def __post_init__(self) -> None:
        from evspec.models.registry import check_model_event_canvas
        from evspec.run.shared import check_run_options

        if (self.model is None) == (self.answers is None):
            raise ConfigError("give either model (to answer with it) or answers (a file of predictions to judge)",
                              parameters=["model", "answers"])
        check_model_event_canvas(self.event_canvas)
        check_run_options(max_new_tokens=self.max_new_tokens, min_new_tokens=0, max_samples=self.max_samples,
                          warmup=0, dtype=self.dtype, cache="eager")
