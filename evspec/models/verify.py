"""Decoupled generation equals the family's own ``generate()``: the check behind ``evspec verify``.

For each sample: read -> preprocess once, then (a) decoupled generation (encode once, prefill and
decode from the cached features) and (b) the family's monolithic ``reference_generate``, both
greedy; a sample passes when the token lists are identical. Optionally the vision tower is timed
inside a plain ``generate()`` through forward hooks, with what the hooks cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evspec.data.dataset import Sample
    from evspec.models.base import VisionLanguageModel
    from evspec.models.hooks import HookReport


@dataclass(frozen=True)
class DecoupledVsGenerate:
    """Decoupled vs reference tokens for one sample."""

    sample_id: str
    decoupled: list[int]
    reference: list[int]

    @property
    def first_mismatch(self) -> int | None:
        """Index of the first differing token (a length difference counts), None when equal."""
        for i, (a, b) in enumerate(zip(self.decoupled, self.reference)):
            if a != b:
                return i
        if len(self.decoupled) != len(self.reference):
            return min(len(self.decoupled), len(self.reference))
        return None

    @property
    def passed(self) -> bool:
        return self.first_mismatch is None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.sample_id, "decoupled": self.decoupled, "reference": self.reference,
                "first_mismatch": self.first_mismatch, "passed": self.passed}


def compare_sample(model: VisionLanguageModel, sample: Sample, max_new_tokens: int, min_new_tokens: int = 0) -> DecoupledVsGenerate:
    """Greedy decoupled generation vs the family's monolithic generate() on one sample."""
    prepared = model.preprocess(model.load(sample), sample.query)
    decoupled = model.generate(prepared, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens).token_ids
    reference = model.reference_generate(prepared, max_new_tokens, min_new_tokens)
    return DecoupledVsGenerate(sample.id, decoupled, reference)


@dataclass(frozen=True)
class VerifyResult:
    """Every sample's comparison, and the hook timing of the first sample (None without hooks)."""

    comparisons: list[DecoupledVsGenerate]
    hooks: HookReport | None
    hooks_sample_id: str | None

    @property
    def n_failed(self) -> int:
        """Samples whose tokens differ, plus one when the hooks changed the tokens."""
        return sum(not c.passed for c in self.comparisons) + (self.hooks is not None and not self.hooks.same_tokens)

    @property
    def passed(self) -> bool:
        return self.n_failed == 0

    def to_dict(self) -> dict[str, Any]:
        hooks = None if self.hooks is None else {**asdict(self.hooks), "sample": self.hooks_sample_id,
                                                  "overhead_s": self.hooks.overhead_s, "overhead_pct": self.hooks.overhead_pct}
        if hooks is not None:  # JSON has no NaN: an undefined share is null
            hooks = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in hooks.items()}
        return {"passed": self.passed, "n_failed": self.n_failed,
                "samples": [c.to_dict() for c in self.comparisons], "hooks": hooks}


def verify_model(
    model: VisionLanguageModel, samples: Sequence[Sample], *, max_new_tokens: int = 32, min_new_tokens: int = 0,
    hooks: bool = True, repeats: int = 3,
) -> VerifyResult:
    """Compare decoupled and reference generation on every sample; with ``hooks``, also time the
    vision tower inside ``generate()`` on the first sample (``repeats`` runs per side)."""
    from evspec.models.hooks import measure_hook_overhead

    comparisons = [compare_sample(model, s, max_new_tokens, min_new_tokens) for s in samples]
    report = None
    if hooks and samples:
        prepared = model.preprocess(model.load(samples[0]), samples[0].query)
        report = measure_hook_overhead(
            model.vision_tower,  # type: ignore[attr-defined]
            lambda: model.reference_generate(prepared, max_new_tokens, min_new_tokens),
            model.device, repeats=repeats,
        )
    return VerifyResult(comparisons, report, samples[0].id if report is not None else None)
