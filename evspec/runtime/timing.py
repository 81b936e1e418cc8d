"""Stage timing from outside the models: ``with timer.stage("encode"): ...``.

Why this shape (optimum-benchmark's rules): GPU work is asynchronous, so wall clocks
around it measure the launch, not the work. On CUDA every stage records a pair of
``torch.cuda.Event(enable_timing=True)`` on the current stream and nothing synchronizes while
the pipeline runs; :meth:`StageTimer.read` synchronizes ONCE and turns the events into seconds.
On CPU the same calls use ``time.perf_counter``. On CUDA each stage is also an NVTX range, so an
Nsight timeline shows the same names as the records.

Definitions (all in seconds; stages run one after another, never nested):

- stage time: from entering to leaving its ``with`` block (CUDA: from the start event to the end
  event on the current stream, i.e. the device work enqueued in between).
- token marks: :meth:`StageTimer.mark_token` is the decode loop's ``on_token(i)`` callback; it
  records one mark right after token ``i`` is chosen, inside the stage that is open (``decode``).
- per-token latencies: ``token_latencies[0]`` = decode-stage start -> mark 0 (choosing the first
  token from the prefill logits); ``token_latencies[i]`` = mark ``i-1`` -> mark ``i`` (one target
  pass plus choosing the token).
- TTFT (time to first token) = the sum of every stage that ran before the token stage
  (read + preprocess + encode + prefill, plus any extra stage a decoder ran before it) +
  ``token_latencies[0]``. Gaps between stages (the runner's own bookkeeping) are not counted.
- TPOT (time per output token) = (token stage time - ``token_latencies[0]``) / (n_new - 1):
  the steady-state cost of one more token after the first (None when fewer than 2 tokens).
- tokens/s = n_new / token stage time.
- peak memory per stage: ``torch.cuda.reset_peak_memory_stats`` before the stage and the
  allocator's peak ``allocated_bytes`` (what ``torch.cuda.max_memory_allocated`` returns) after
  it, in bytes: everything allocated at the peak, weights and caches included, not only what the
  stage added (host-side counters, no synchronize). None on CPU.

Cost: a stage is two event records (or two ``perf_counter`` calls); a token mark is one more.
``benchmarks/timing_overhead.py`` measures that the per-token marks cost < 1% of decode time.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

STAGES: tuple[str, ...] = ("read", "preprocess", "encode", "prefill", "decode")
"""The pipeline's stages in order (docs/ARCHITECTURE.md's data flow). ``read`` is reading the sample's files
(``model.load(sample)``: events, images or video -> frames); loading a model is not a stage of a
sample: the runner times it once per model (``model_load_s``)."""


@dataclass
class Timings:
    """What one timed sample took. ``stages`` keeps the order in which stages ran."""

    stages: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: dict[str, int | None] = field(default_factory=dict)
    token_stage: str | None = None
    token_latencies: list[float] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        """Sum of all stage times (gaps between stages excluded)."""
        return float(sum(self.stages.values()))

    @property
    def n_tokens(self) -> int:
        return len(self.token_latencies)

    @property
    def ttft_s(self) -> float | None:
        """Stages before the token stage + the first token's latency (module docstring)."""
        if self.token_stage is None or not self.token_latencies:
            return None
        before = 0.0
        for name, seconds in self.stages.items():
            if name == self.token_stage:
                break
            before += seconds
        return before + self.token_latencies[0]

    @property
    def tpot_s(self) -> float | None:
        """(token stage time - first token latency) / (n_new - 1); None below 2 tokens."""
        if self.token_stage is None or self.n_tokens < 2:
            return None
        return (self.stages[self.token_stage] - self.token_latencies[0]) / (self.n_tokens - 1)

    @property
    def tokens_per_s(self) -> float | None:
        """Generated tokens over the token stage's time."""
        if self.token_stage is None or not self.token_latencies:
            return None
        seconds = self.stages[self.token_stage]
        return self.n_tokens / seconds if seconds > 0 else None


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside a timed region; the collector's state is restored after.

    Why: one full collection over transformers' object graph took 30-300 ms on this project's CPU
    machine and landed inside timed decode steps (a 250-310 ms "token" in the first measured
    sample of the bench). The bench pauses it around each sample, the speculative engine around
    each generation.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _resolve_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class StageTimer:
    """Times consecutive stages of one sample; :meth:`read` returns them, :meth:`reset` reuses it.

    ``device`` picks the clock: a CUDA device -> CUDA events + NVTX + peak memory; anything else
    -> ``time.perf_counter``. The timer holds a pool of CUDA events that it reuses across samples,
    so marking a token never allocates an event after the first sample.
    """

    def __init__(self, device: torch.device | str | None = None, *, nvtx: bool = True, memory: bool = True) -> None:
        self.device = _resolve_device(device)
        self.cuda = self.device.type == "cuda"
        self.nvtx = nvtx and self.cuda
        self.memory = memory and self.cuda
        self._pool: list[torch.cuda.Event] = []
        self._used = 0
        self._stream: torch.cuda.Stream | None = None
        self.reset()

    # ---- marks: a CUDA event recorded on the stream that was current when the stage opened
    #      (looked up once per stage: ``Event.record()`` without a stream looks it up every
    #      call), or a perf_counter reading
    def _mark(self) -> object:
        if not self.cuda:
            return time.perf_counter()
        if self._used == len(self._pool):
            self._pool.append(torch.cuda.Event(enable_timing=True))
        event = self._pool[self._used]
        self._used += 1
        event.record(self._stream)
        return event

    def _peak_bytes(self) -> int:
        # max_memory_allocated() flattens every allocator statistic in Python; read the one needed.
        return int(torch.cuda.memory_stats_as_nested_dict(self.device)["allocated_bytes"]["all"]["peak"])

    def _elapsed(self, start: object, end: object) -> float:
        if self.cuda:
            return start.elapsed_time(end) / 1000.0  # type: ignore[attr-defined]  # ms -> s
        return end - start  # type: ignore[operator]

    def reset(self) -> None:
        """Forget the last sample (after :meth:`read`; the CUDA event pool is kept)."""
        self._spans: list[tuple[str, object, object]] = []
        self._peaks: dict[str, int | None] = {}
        self._tokens: list[object] = []
        self._token_stage: str | None = None
        self._token_origin: object | None = None
        self._open: tuple[str, object] | None = None
        self._used = 0

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name``. Stages do not nest; a repeated name adds up."""
        if self._open is not None:
            raise RuntimeError(f"stage {name!r} opened inside stage {self._open[0]!r}: stages do not nest")
        if self.memory:
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.nvtx:
            torch.cuda.nvtx.range_push(name)
        if self.cuda:
            self._stream = torch.cuda.current_stream(self.device)
        start = self._mark()
        self._open = (name, start)
        try:
            yield
        finally:
            end = self._mark()
            self._open = None
            if self.nvtx:
                torch.cuda.nvtx.range_pop()
            self._spans.append((name, start, end))
            if self.memory:
                peak = self._peak_bytes()
                self._peaks[name] = max(peak, self._peaks.get(name) or 0)
            else:
                self._peaks.setdefault(name, None)

    def mark_token(self, index: int = 0) -> None:
        """``on_token(i)`` for :func:`evspec.runtime.decode.decode`: one mark per chosen token.

        Must be called inside a stage; the first mark fixes that stage as the token stage.
        ``index`` is accepted for the callback's signature and not needed: marks are in order.
        """
        if self._token_stage is None:
            if self._open is None:
                raise RuntimeError("mark_token called outside a stage")
            self._token_stage, self._token_origin = self._open
        self._tokens.append(self._mark())

    def read(self) -> Timings:
        """Synchronize once (CUDA) and return the sample's timings; then :meth:`reset`."""
        if self._open is not None:
            raise RuntimeError(f"read() inside the open stage {self._open[0]!r}")
        if self.cuda and (self._spans or self._tokens):
            torch.cuda.synchronize(self.device)
        stages: dict[str, float] = {}
        for name, start, end in self._spans:
            stages[name] = stages.get(name, 0.0) + self._elapsed(start, end)
        latencies: list[float] = []
        previous = self._token_origin
        for mark in self._tokens:
            latencies.append(self._elapsed(previous, mark))
            previous = mark
        timings = Timings(
            stages=stages, peak_memory_bytes=dict(self._peaks),
            token_stage=self._token_stage, token_latencies=latencies,
        )
        self.reset()
        return timings
