"""Timing the vision tower *inside* a family's own ``generate()``, with forward hooks.

The decoupled pipeline times ``encode`` from outside. A user who keeps calling the model's plain
``generate()`` can still see what the tower costs: a forward pre-hook records a start mark and a
forward hook an end mark on the tower module, for every call (Video-LLaVA's video tower runs once
per prefill, EventGPT's tower once per event frame). On CUDA the marks are
``torch.cuda.Event(enable_timing=True)`` records on the current stream, read after one
synchronize; on CPU they are ``time.perf_counter`` readings. Hooks only record: they never touch
the module's inputs or outputs, so tokens are unchanged, and :func:`measure_hook_overhead`
measures what they cost (median ``generate()`` time with hooks vs without).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from evspec.errors import ConfigError

if TYPE_CHECKING:  # typing.Self is 3.11+; annotations are not evaluated at run time
    from typing_extensions import Self


class TowerTimer:
    """``with TowerTimer(module, device) as timer: model.generate(...)``; then ``timer.seconds()``
    gives one duration per forward call of ``module``."""

    def __init__(self, module: nn.Module, device: torch.device | str = "cpu") -> None:
        self.module = module
        self.cuda = torch.device(device).type == "cuda"
        self._starts: list[Any] = []
        self._ends: list[Any] = []
        self._handles: list[Any] = []

    def _mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _pre(self, module: nn.Module, args: Any) -> None:
        self._starts.append(self._mark())

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        self._ends.append(self._mark())

    def __enter__(self) -> Self:
        self._starts.clear()
        self._ends.clear()
        self._handles = [
            self.module.register_forward_pre_hook(self._pre),
            self.module.register_forward_hook(self._post),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def seconds(self) -> list[float]:
        """Duration of each tower call, in order (one synchronize on CUDA)."""
        if len(self._starts) != len(self._ends):
            raise RuntimeError(f"{len(self._starts)} tower calls started but {len(self._ends)} ended")
        if self.cuda:
            torch.cuda.synchronize()
            return [s.elapsed_time(e) / 1000.0 for s, e in zip(self._starts, self._ends)]
        return [e - s for s, e in zip(self._starts, self._ends)]


@dataclass(frozen=True)
class HookReport:
    """Tower time seen by the hooks in one ``generate()``, and what the hooks cost."""

    tower_calls: int
    tower_s: float  # summed over the calls of one generate(); median over the hooked runs
    generate_s: float  # median generate() time without hooks
    generate_hooked_s: float  # median generate() time with hooks
    same_tokens: bool  # hooked generate() gave the same tokens as the plain one
    tower_fraction: float = float("nan")  # median over hooked runs of tower time / that run's time

    @property
    def overhead_s(self) -> float:
        return self.generate_hooked_s - self.generate_s

    @property
    def overhead_pct(self) -> float:
        return 100.0 * self.overhead_s / self.generate_s if self.generate_s > 0 else float("nan")


def _timed(run: Callable[[], list[int]], cuda: bool) -> tuple[float, list[int]]:
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    tokens = run()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, tokens


def measure_hook_overhead(
    tower: nn.Module, run: Callable[[], list[int]], device: torch.device | str = "cpu", *, repeats: int = 3
) -> HookReport:
    """Alternate ``repeats`` plain and hooked runs of ``run`` (a ``generate()`` returning tokens)
    after one warm-up, and report median times (the tower's share is taken within each hooked
    run, since medians of different runs need not nest), and whether the hooked runs returned
    the plain run's tokens."""
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    cuda = torch.device(device).type == "cuda"
    run()  # warm-up: first-call allocations and lazy initialisation
    plain, hooked, towers, same = [], [], [], True
    calls = 0
    for _ in range(repeats):
        seconds, reference = _timed(run, cuda)
        plain.append(seconds)
        with TowerTimer(tower, device) as timer:
            seconds, tokens = _timed(run, cuda)
        hooked.append(seconds)
        same = same and tokens == reference
        per_call = timer.seconds()
        towers.append(sum(per_call))
        calls = len(per_call)
    fractions = [t / h for t, h in zip(towers, hooked)]
    return HookReport(calls, statistics.median(towers), statistics.median(plain), statistics.median(hooked), same,
                      statistics.median(fractions))
