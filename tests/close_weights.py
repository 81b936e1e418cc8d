"""Weights of two trainings that should agree up to float summation order (data-parallel against
one process): AdamW's first steps move each weight by about lr times the sign of its gradient, so a
gradient that is zero up to rounding can take either sign and leave that one weight up to 2 x lr a
step apart. Nearly every weight must agree tightly; the few that do not, within that bound."""

from __future__ import annotations

import torch


def assert_weights_follow(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], *, lr: float, steps: int,
                          rtol: float, atol: float, max_fraction_apart: float = 1e-3) -> None:
    assert set(got) == set(expected)
    apart = total = 0
    for name, want in expected.items():
        diff = (got[name].float() - want.float()).abs()
        assert float(diff.max()) <= 2 * lr * steps, (name, float(diff.max()))
        apart += int((diff > atol + rtol * want.float().abs()).sum())
        total += want.numel()
    assert apart <= max_fraction_apart * total, (apart, total)
