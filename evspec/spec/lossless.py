"""Lossless, stated precisely: where greedy speculative output leaves the target alone, and why.

Greedy speculative decoding computes the target's choices in verify passes over several tokens;
the target alone computes them one token at a time. Both are the same function, but in 16-bit the
two kernels round differently, so where the target's two best logits are (nearly) tied the argmax
can flip. After a flip the two outputs continue from different prefixes and no longer compare.

The check, per sample (greedy only):

1. Both runs record, at every output position, the target's top-2 logits there (one ``topk`` on
   logits already computed, moved to the host once at the end): margin = top1 - top2 and the two ids.
2. At the first position where the outputs differ, the divergence is a **near-tie flip** when in
   BOTH paths the margin is at most the tolerance and each path's choice is the other's runner-up;
   otherwise it is a real difference and the sample is **NOT lossless** (the run fails).
3. After a near-tie flip the target alone is run again, forced along the speculative output up to
   and including the flipped token, and the comparison goes on from there; so every later
   divergence is classified the same way (the ``up to N`` in the verdict).

Tolerance: ``ULPS[dtype]`` units in the last place of the dtype at the size of the two best logits
there. Measured on CPU with tiny LLaMAs (4 layers, width 64), the largest difference of one logit
between a verify pass and one-token steps over the same tokens was 2 ulps in bfloat16 and float16
(the logits' own rounding dominates) and 9 ulps in float32 (the body's accumulated rounding does);
a margin moves by up to twice that, and the tolerance takes twice that again. It is not measured
on 7B models: a GPU run that fails with a margin just above it should be looked at, not hidden.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

ULPS: dict[torch.dtype, int] = {torch.bfloat16: 8, torch.float16: 8, torch.float32: 64, torch.float64: 64}


def near_tie_tolerance(dtype: torch.dtype, largest_logit: float) -> float:
    """``ULPS[dtype]`` units in the last place of ``dtype`` at ``|largest_logit|`` (module docstring)."""
    eps = torch.finfo(dtype).eps
    size = abs(largest_logit)
    scale = 2.0 ** math.floor(math.log2(size)) if 0 < size < math.inf else 1.0
    return ULPS.get(dtype, 64) * eps * scale


@dataclass(frozen=True)
class TopTwo:
    """The target's two best tokens at one output position, and the larger |logit| of the two
    (the scale of the dtype's rounding there)."""

    margin: float
    first: int
    second: int
    scale: float


class TopTwoLog:
    """Per-position top-2 of the rows that chose the output tokens, kept on the device until read."""

    def __init__(self) -> None:
        self._rows: list[torch.Tensor] = []

    def add(self, logits: torch.Tensor) -> None:
        """Record rows [k, V] (or one row [V]) in output order."""
        rows = logits if logits.dim() == 2 else logits.unsqueeze(0)
        if rows.shape[0] == 0:
            return
        values, ids = rows.float().topk(2, dim=-1)
        scale = values.abs().amax(dim=-1, keepdim=True)  # the size of the two logits compared
        self._rows.append(torch.cat([values[:, :1] - values[:, 1:], ids.float(), scale], dim=-1))

    def read(self) -> list[TopTwo]:
        """Every recorded position, with one host transfer."""
        if not self._rows:
            return []
        return [TopTwo(m, int(a), int(b), s) for m, a, b, s in torch.cat(self._rows).cpu().tolist()]


@dataclass(frozen=True)
class Divergence:
    """One position where the speculative output left the target-alone output."""

    position: int
    baseline_token: int
    spec_token: int
    baseline_margin: float | None
    spec_margin: float | None
    tolerance: float | None
    near_tie: bool


@dataclass
class LosslessCheck:
    """The verdict of one sample (module docstring); ``status`` is one of ``exact``,
    ``near-tie flips`` and ``NOT lossless``."""

    divergences: list[Divergence] = field(default_factory=list)

    @property
    def status(self) -> str:
        if not self.divergences:
            return "exact"
        return "near-tie flips" if all(d.near_tie for d in self.divergences) else "NOT lossless"

    @property
    def lossless(self) -> bool:
        return self.status != "NOT lossless"

    @property
    def largest_margin(self) -> float | None:
        margins = [m for d in self.divergences for m in (d.baseline_margin, d.spec_margin) if m is not None]
        return max(margins) if margins else None

    def describe(self) -> str:
        """``exact``, ``up to N near-tie flips (largest margin m)`` or ``NOT lossless (...)``."""
        if self.status == "exact":
            return "exact"
        if self.status == "near-tie flips":
            return f"up to {len(self.divergences)} near-tie flips (largest margin {self.largest_margin:.4g})"
        bad = next(d for d in self.divergences if not d.near_tie)
        margins = ", ".join(f"{m:.4g}" for m in (bad.baseline_margin, bad.spec_margin) if m is not None) or "n/a"
        tol = "n/a" if bad.tolerance is None else f"{bad.tolerance:.4g}"
        return (f"NOT lossless (position {bad.position}: target alone {bad.baseline_token}, speculative "
                f"{bad.spec_token}; margins {margins} against tolerance {tol})")

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "verdict": self.describe(), "lossless": self.lossless,
                "divergences": [asdict(d) for d in self.divergences]}


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing token (a length difference counts); None when equal."""
    if list(a) == list(b):
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def classify(position: int, baseline_ids: Sequence[int], baseline: Sequence[TopTwo], spec_ids: Sequence[int],
             spec: Sequence[TopTwo], dtype: torch.dtype) -> Divergence:
    """One divergence, classified by both paths' top-2 at ``position`` (module docstring)."""
    if position >= len(baseline_ids) or position >= len(spec_ids) or position >= min(len(baseline), len(spec)):
        # One output stopped where the other went on with the same tokens: no flip explains that.
        return Divergence(position, _at(baseline_ids, position), _at(spec_ids, position), None, None, None, False)
    b, s = baseline[position], spec[position]
    tolerance = near_tie_tolerance(dtype, max(b.scale, s.scale))
    # In each path the two best must be the two tokens chosen (compared as a set: topk orders exactly
    # tied logits as it likes), unless that path's margin is exactly 0, where a third token tied with
    # them may have taken the runner-up slot (16-bit logits tie exactly often).
    pair = {int(baseline_ids[position]), int(spec_ids[position])}
    swapped = all(top.margin == 0.0 or {top.first, top.second} == pair for top in (b, s))
    near = swapped and b.margin <= tolerance and s.margin <= tolerance
    return Divergence(position, baseline_ids[position], spec_ids[position], b.margin, s.margin, tolerance, near)


def _at(ids: Sequence[int], i: int) -> int:
    return int(ids[i]) if i < len(ids) else -1


def check_lossless(
    baseline_ids: Sequence[int], baseline: Sequence[TopTwo], spec_ids: Sequence[int], spec: Sequence[TopTwo],
    dtype: torch.dtype, rerun_from: Callable[[Sequence[int]], tuple[list[int], list[TopTwo]]],
) -> LosslessCheck:
    """Classify every divergence of ``spec_ids`` from the target alone (module docstring, steps 2-3).

    ``rerun_from(prefix)``: the target alone forced along ``prefix`` then greedy, as (ids, top-2);
    called once after each near-tie flip."""
    check = LosslessCheck()
    ref_ids, ref = list(baseline_ids), list(baseline)
    while (i := first_difference(spec_ids, ref_ids)) is not None:
        divergence = classify(i, ref_ids, ref, spec_ids, spec, dtype)
        check.divergences.append(divergence)
        if not divergence.near_tie or len(check.divergences) > len(spec_ids):
            break
        ref_ids, ref = rerun_from(list(spec_ids[: i + 1]))
    return check


def run_verdict(records: Sequence[dict[str, Any]]) -> tuple[str | None, int]:
    """The run's statement over its greedy records (``lossless_check`` of each) and how many
    samples are NOT lossless: ``exact``, ``up to N near-tie flips (largest margin m)`` (N summed
    over samples) or ``NOT lossless on K of S samples``; None when no record was greedy.
    Records without a check (written before it existed) count by token identity alone."""
    checks = [r for r in records if not r.get("error") and r.get("lossless") is not None]
    if not checks:
        return None, 0
    failed = [r for r in checks if not r["lossless"]]
    if failed:
        return f"NOT lossless on {len(failed)} of {len(checks)} samples", len(failed)
    flips = [d for r in checks for d in ((r.get("lossless_check") or {}).get("divergences") or [])]
    if not flips:
        return "exact", 0
    margins = [m for d in flips for m in (d["baseline_margin"], d["spec_margin"]) if m is not None]
    largest = max(margins) if margins else float("nan")
    return f"up to {len(flips)} near-tie flips (largest margin {largest:.4g})", 0
