"""The speculative decoding loop (gpt-fast's ``speculative_decode``, over evspec's DecodeState seam).

::

    prefill      the target's prompt pass; the draft's own prefill and first proposal, either after
                 it or concurrently (``parallel_prefill``: a second thread; on CUDA each side on its
                 own stream, or the draft on its own GPU)
    first token  the first draft token is a guess of the target's first token: verified against the
                 prefill logits; if kept, the remaining first drafts ride on the next pass
    rounds       propose (<= gamma drafts from the accepted output) -> ONE target pass over
                 [last emitted token + drafts] -> verify -> roll the target back to the accepted
                 length -> the proposer sees the committed positions' hidden states
    stop         EOS, ``max_new_tokens`` or the context: drafts are capped to the room left, so a
                 prompt that ends near the context limit still gives the target's own output

Lossless: with greedy verification the output is token-identical to the target decoding alone
with the same state factory (``target_only``); with sampling it is distributed as the target's.

Adaptive gamma (``adaptive_gamma=True``): start at ``gamma``; after a round in which all of the
``gamma`` requested drafts were accepted, ``gamma += 1`` (up to ``max_gamma``, default 2 x gamma);
after a round that accepted fewer than ``gamma // 2`` drafts, ``gamma -= 1`` (down to 1). Rounds
in between keep it. The rule follows the acceptance run length cheaply and never stalls at 0.

Timing: host clocks with the devices synchronized at part boundaries. Every round ends in host
decisions (token ids), so the synchronization costs nothing the loop does not already pay, and
it measures both devices when the draft sits on a second GPU (CUDA events only time one stream).

Hidden-state taps: a proposer whose ``taps`` name target layers (EAGLE-style heads) gets them
through ``observe_features``: the prompt's rows after the target's prefill and before its first
proposal, then each round the rows of the positions the pass committed. With ``parallel_prefill``
the first proposal runs beside the target's prefill, so it is made without them and the prompt's
rows arrive right after it (only the last prompt position's: ``Taps.prompt`` is refused there). The verify pass returns them as extra outputs (``DecodeState.extend(taps=...)``); a
:class:`~evspec.runtime.decode.FeatureBuffer` keeps one row per committed position, truncated
beside the cache's roll-back. Without taps the loop does exactly the work it did before.

Code: ``speculative_generate`` is a short driver over the phases ``_prefill``, ``_first_token`` and
``_round``; the loop's state (output, counts, rejected positions, top-2 log, the first token's
carry, the feature buffer) lives in one ``_Loop`` and every clock reading goes through one
``_Clock`` hook.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from evspec.errors import ConfigError
from evspec.runtime.decode import (
    DecodeState,
    EagerState,
    FeatureBuffer,
    LanguageModel,
    Prefilled,
    SamplingConfig,
    StateFactory,
    Taps,
    decode,
    prefill,
    probabilities,
)
from evspec.runtime.timing import collector_paused
from evspec.spec.lossless import LosslessCheck, TopTwo, TopTwoLog, check_lossless
from evspec.spec.metrics import SpecCounts, SpecTimings, position_match
from evspec.spec.proposers import DraftContext, DraftModelProposer, Proposal, Proposer
from evspec.spec.acceptance import Verdict, accept_greedy, accept_stochastic

if TYPE_CHECKING:
    from evspec.data.dataset import Sample
    from evspec.models.base import Prepared, VisionLanguageModel, VisualFeatures



# --------------------------------------------------------------------------- the target's side


@dataclass
class TargetInput:
    """One sample on the target's side, resolved once and shared by the baseline and the spec run.

    ``embed()`` is the work before the prompt pass that both runs repeat (encode + splice for a
    VLM, an embedding lookup for a bare LM): it is timed as part of the target's prefill.
    """

    lm: LanguageModel
    embed: Callable[[], torch.Tensor]
    prompt_ids: list[int]
    eos_token_ids: list[int]
    decode_text: Callable[[Sequence[int]], str]
    key: str = ""
    sample: Sample | None = None
    model: VisionLanguageModel | None = None
    prepared: Prepared | None = None
    visual_tokens: Callable[[], torch.Tensor] | None = None  # the target's visual tokens [N, D] (DraftContext.target_visual)

    def draft_context(
        self, sampling: SamplingConfig, max_new_tokens: int, reference_ids: Sequence[int] | None = None,
    ) -> DraftContext:
        """What a proposer may know about this sample (the speculative run and the draft alone)."""
        return DraftContext(
            sample=self.sample, target_prompt_ids=self.prompt_ids, target_vocab_size=self.lm.vocab_size,
            sampling=sampling, max_new_tokens=max_new_tokens,
            reference_ids=None if reference_ids is None else list(reference_ids),
            eos_token_ids=tuple(self.eos_token_ids), key=self.key, target_visual=self.visual_tokens,
        )


def _text_ids(model: VisionLanguageModel, prepared: Prepared) -> list[int]:
    """The prompt's ordinary token ids: visual placeholders (negative or special ids) dropped."""
    special = set(getattr(model.tokenizer, "all_special_ids", []) or [])
    return [i for i in prepared.input_ids[0].tolist() if i >= 0 and i not in special]


def target_input(
    target: VisionLanguageModel | LanguageModel | TargetInput,
    *,
    sample: Sample | None = None,
    prepared: Prepared | None = None,
    features: VisualFeatures | None = None,
    prompt_ids: Sequence[int] | None = None,
    prompt_embeds: torch.Tensor | None = None,
    eos_token_ids: Sequence[int] | None = None,
    tokenizer: Any = None,
    key: str | None = None,
) -> TargetInput:
    """Resolve the target side: a VLM with a ``sample`` (loaded and preprocessed here, untimed) or
    its ``prepared`` inputs (and optionally ready ``features``), or a bare language model with
    ``prompt_ids`` or ``prompt_embeds`` and ``eos_token_ids``."""
    if isinstance(target, TargetInput):
        return target
    if isinstance(target, LanguageModel):
        if (prompt_ids is None) == (prompt_embeds is None):
            raise ConfigError("a bare language-model target needs exactly one of prompt_ids or prompt_embeds")
        lm = target
        if prompt_ids is not None:
            ids = [int(i) for i in prompt_ids]
            if not ids:
                raise ConfigError("the target prompt is empty")
            tensor = torch.tensor([ids], dtype=torch.long, device=lm.device)
            embed = lambda: lm.embed_tokens(tensor)
        else:
            ids = []
            embed = lambda: prompt_embeds
        decode_text = (lambda t: tokenizer.decode(list(t), skip_special_tokens=True).strip()) if tokenizer else (lambda t: "")
        return TargetInput(lm, embed, ids, list(eos_token_ids or []), decode_text, key or "")
    model = target
    if prepared is None:
        if sample is None:
            raise ConfigError(f"the target {model.name} needs a sample or its prepared inputs")
        prepared = model.preprocess(model.load(sample), sample.query)
    ready = features
    latest: list[VisualFeatures] = []  # the last encode, so a proposer reading the target's visual tokens needs no second one

    def embed() -> torch.Tensor:
        encoded = ready if ready is not None else model.encode(prepared)
        latest[:] = [encoded]
        return model.splice(prepared, encoded)

    def visual_tokens() -> torch.Tensor:
        return (latest[0] if latest else ready if ready is not None else model.encode(prepared)).embeds

    eos = list(eos_token_ids) if eos_token_ids is not None else list(model.eos_token_ids)
    return TargetInput(
        model.language_model, embed, _text_ids(model, prepared), eos, model.decode_text,
        key if key is not None else (sample.id if sample is not None else ""), sample, model, prepared, visual_tokens,
    )


# --------------------------------------------------------------------------- clocks and concurrency


def _devices(*devices: torch.device | None) -> list[torch.device]:
    return [d for d in {d for d in devices if d is not None and d.type == "cuda"}]


def _now(devices: Sequence[torch.device]) -> float:
    for device in devices:
        torch.cuda.synchronize(device)
    return time.perf_counter()


_STREAMS: dict[tuple[int, str], torch.cuda.Stream] = {}


def side_stream(device: torch.device, role: str) -> torch.cuda.Stream:
    """One persistent CUDA stream per (device, role). Persistent because a stream's first GEMM
    allocates cuBLAS workspace (a cudaMalloc, which waits for the whole device): a fresh stream
    per call would serialize the very work it is meant to overlap."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (index, role)
    if key not in _STREAMS:
        _STREAMS[key] = torch.cuda.Stream(torch.device("cuda", index))
    return _STREAMS[key]


def _timed(job: Callable[[], Any], device: torch.device | None, role: str = "target") -> tuple[Any, float]:
    """Run ``job`` (on its own CUDA stream when ``device`` is CUDA); its result and seconds."""
    stream = side_stream(device, role) if device is not None and device.type == "cuda" else None
    with torch.inference_mode(), (torch.cuda.stream(stream) if stream is not None else nullcontext()):
        start = time.perf_counter()
        result = job()
        if stream is not None:
            stream.synchronize()
        return result, time.perf_counter() - start


def run_concurrently(
    first: Callable[[], Any], first_device: torch.device | None,
    second: Callable[[], Any], second_device: torch.device | None,
) -> tuple[Any, float, Any, float, float]:
    """``first`` in this thread and ``second`` in a worker thread, each on its own CUDA stream.

    Returns (first result, its seconds, second result, its seconds, wall seconds of both). Both
    streams are synchronized before returning, so later work on the default stream sees the results.
    """
    devices = _devices(first_device, second_device)
    start = _now(devices)
    future = _worker().submit(_timed, second, second_device, "draft")
    first_result, first_s = _timed(first, first_device, "target")
    second_result, second_s = future.result()
    wall = _now(devices) - start
    return first_result, first_s, second_result, second_s, wall


_WORKER: ThreadPoolExecutor | None = None


def _worker() -> ThreadPoolExecutor:
    """One persistent worker thread for the draft side. Persistent because CUDA libraries keep
    per-thread state (cuBLAS handles and workspaces): a new thread per sample re-creates them,
    which synchronizes with the device and put the draft behind the target's whole prefill (seen
    on H200s, with the draft on its own GPU)."""
    global _WORKER
    if _WORKER is None:
        _WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evspec-draft", initializer=_one_cpu_thread)
    return _WORKER


def _one_cpu_thread() -> None:
    """The worker's CPU operators run on one thread. Why: with an OpenMP team of its own, the
    process holds more OpenMP threads than cores, and libgomp then throttles every team's
    spin-waiting for good: on a 2-core CPU the target's later one-token steps in the main thread
    ran 13-22% slower, and a whole parallel-prefill run's verify passes 2.4x slower. The setting
    is this thread's own (the main thread keeps its threads); a CUDA draft only launches kernels."""
    torch.set_num_threads(1)


# --------------------------------------------------------------------------- outcomes


@dataclass
class BaselineOutcome:
    """The target alone: the reference output and its wall time (prefill = embed + prompt pass)."""

    token_ids: list[int]
    text: str
    prefill_s: float
    decode_s: float
    top2: list[TopTwo] | None = None  # per output position, with record_top2 (the lossless check)

    @property
    def wall_s(self) -> float:
        return self.prefill_s + self.decode_s


@dataclass
class SpecOutcome:
    """A speculative generation: its tokens and text, token accounting and time split.

    ``gamma_trace``: drafts offered in each round after the first (shows the adaptive rule at work).
    """

    token_ids: list[int]
    text: str
    counts: SpecCounts
    timings: SpecTimings
    synthetic: bool = False
    stopped_on_eos: bool = False
    gamma_trace: list[int] = field(default_factory=list)
    n_prompt_tokens: int = 0
    top2: list[TopTwo] | None = None  # the target's top-2 per output position, with record_top2
    # Output positions where the target's token replaced a rejected draft, and those tokens' text:
    # where the drafts fail (greedy: what the draft could not know, e.g. a colour it cannot see).
    rejected_at: list[int] = field(default_factory=list)
    rejected_tokens: list[str] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, Any]:
        return {**self.counts.as_dict(), **self.timings.as_dict(), "synthetic": self.synthetic}


# --------------------------------------------------------------------------- baseline


def target_only(
    target: VisionLanguageModel | LanguageModel | TargetInput,
    *,
    max_new_tokens: int,
    sampling: SamplingConfig = SamplingConfig(),
    min_new_tokens: int = 0,
    state_factory: StateFactory = EagerState,
    record_top2: bool = False,
    **inputs: Any,
) -> BaselineOutcome:
    """The target decoding alone (one pass per token) with the same state factory: the reference.
    ``record_top2``: keep the top-2 logits of every output position (one ``topk`` per token)."""
    tgt = target_input(target, **inputs)
    devices = _devices(tgt.lm.device)
    log = TopTwoLog() if record_top2 else None
    with torch.inference_mode(), collector_paused():
        t0 = _now(devices)
        prefilled = prefill(tgt.lm, tgt.embed(), state_factory)
        t1 = _now(devices)
        result = decode(prefilled, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                        eos_token_ids=tgt.eos_token_ids, sampling=sampling, on_logits=log.add if log else None)
        t2 = _now(devices)
    return BaselineOutcome(result.token_ids, tgt.decode_text(result.token_ids), t1 - t0, t2 - t1,
                           top2=log.read() if log else None)


def target_forced(
    tgt: TargetInput, prefix: Sequence[int], *, max_new_tokens: int, min_new_tokens: int = 0,
    state_factory: StateFactory = EagerState,
) -> tuple[list[int], list[TopTwo]]:
    """The target alone, greedy, but made to emit ``prefix`` first (one-token steps, as the
    baseline runs): its output and top-2 per position. The lossless check re-runs the baseline
    from a speculative output this way after a near-tie flip. Untimed."""
    log = TopTwoLog()
    eos = list(tgt.eos_token_ids)
    with torch.inference_mode():
        prefilled = prefill(tgt.lm, tgt.embed(), state_factory)
        state, logits, hidden = prefilled.state, prefilled.logits, prefilled.hidden
        cap = min(max_new_tokens, state.capacity - state.length + 1)
        out: list[int] = []
        for token in list(prefix)[:cap]:
            row = _mask_eos(logits[None], len(out), min_new_tokens, eos)
            log.add(row)
            out.append(int(token))
            if token in eos or len(out) >= cap:
                return out, log.read()
            step = state.extend(token_ids=[int(token)])
            logits, hidden = step.logits[-1], step.hidden[-1]
        rest = decode(Prefilled(state, logits, hidden, prefilled.n_prompt_tokens), max_new_tokens=cap - len(out),
                      min_new_tokens=max(min_new_tokens - len(out), 0), eos_token_ids=eos, on_logits=log.add)
    return out + rest.token_ids, log.read()


# --------------------------------------------------------------------------- the speculative loop


def _mask_eos(logits: torch.Tensor, first_index: int, min_new_tokens: int, eos: Sequence[int]) -> torch.Tensor:
    """Rows predicting output index < ``min_new_tokens`` cannot end the answer (as decode() does)."""
    n = min(max(min_new_tokens - first_index, 0), logits.shape[0])
    if n == 0 or not eos:
        return logits
    logits = logits.clone()
    logits[:n, list(eos)] = float("-inf")
    return logits


def _accept(logits: torch.Tensor, proposal: Proposal, sampling: SamplingConfig, generator: torch.Generator | None) -> Verdict:
    if sampling.greedy:
        return accept_greedy(logits, proposal.token_ids)
    assert generator is not None
    return accept_stochastic(probabilities(logits, sampling), proposal.token_ids, proposal.q, generator)


def _next_gamma(gamma: int, requested: int, n_drafted: int, n_accepted: int, max_gamma: int) -> int:
    """The adaptive rule of the module docstring."""
    if n_drafted == 0:
        return gamma
    if requested == gamma and n_drafted == gamma and n_accepted == gamma:
        return min(gamma + 1, max_gamma)
    if n_accepted < gamma // 2:
        return max(gamma - 1, 1)
    return gamma


class _Clock:
    """The loop's one timing hook: the caller's ``stage`` around each phase, and host seconds with
    the devices synchronized (module docstring) charged to a :class:`SpecTimings` part."""

    def __init__(self, devices: Sequence[torch.device], stage: Callable[[str], AbstractContextManager[Any]] | None) -> None:
        self.devices = devices
        self.timings = SpecTimings()
        self._stage = stage or (lambda name: nullcontext())
        self._start = 0.0

    def now(self) -> float:
        return _now(self.devices)

    def start(self) -> None:
        self._start = self.now()

    def elapsed(self) -> float:
        """Seconds since :meth:`start`."""
        return self.now() - self._start

    def stage(self, name: str) -> AbstractContextManager[Any]:
        return self._stage(name)

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Add the block's seconds to ``timings.<name>`` (not on an exception: the run is void)."""
        start = self.now()
        yield
        setattr(self.timings, name, getattr(self.timings, name) + self.now() - start)


@dataclass
class _Loop:
    """The decode loop's state (as EAGLE's generation loop and vLLM's sampler keep theirs): the
    rules that end the output, the output so far, and everything recorded about it."""

    cap: int  # decode()'s cap: the last token needs no cache slot
    eos: list[int]
    min_new_tokens: int
    gamma: int  # drafts asked for next round; adaptive gamma moves it
    max_gamma: int
    adaptive_gamma: bool
    counts: SpecCounts
    top2: TopTwoLog | None = None  # the target's rows that chose each output token
    on_token: Callable[[int], None] | None = None
    out: list[int] = field(default_factory=list)
    rejected_at: list[int] = field(default_factory=list)
    gamma_trace: list[int] = field(default_factory=list)  # drafts offered per round after the first
    # The first token's carry: when the prefill logits keep the first draft, the rest of the first
    # proposal rides on the first round's pass (no propose call) and counts as ONE draft with it.
    carry: Proposal | None = None
    n_reported: int = 0  # tokens already handed to on_token
    # The tapped target features of the committed positions (None: the proposer taps nothing).
    features: FeatureBuffer | None = None

    @property
    def done(self) -> bool:
        return len(self.out) >= self.cap or self.out[-1] in self.eos

    def masked(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits``' rows predict output positions len(out), len(out)+1, ...: min_new_tokens applied."""
        return _mask_eos(logits, len(self.out), self.min_new_tokens, self.eos)

    def emit(self, tokens: Sequence[int]) -> int:
        """Append tokens up to EOS or the cap; how many were appended."""
        before = len(self.out)
        for token in tokens:
            self.out.append(token)
            if len(self.out) >= self.cap or token in self.eos:
                break
        while self.on_token is not None and self.n_reported < len(self.out):
            self.on_token(self.n_reported)
            self.n_reported += 1
        return len(self.out) - before


_AcceptRule = Callable[[torch.Tensor, Proposal], Verdict]


def _prompt_features(prefilled: Prefilled, taps: Taps) -> FeatureBuffer:
    """The feature buffer after the prompt: every prompt position's rows, or the last one's."""
    n = prefilled.n_prompt_tokens
    buffer = FeatureBuffer(taps.layers, prefilled.state.capacity, start=0 if taps.prompt else n - 1)
    buffer.append({layer: rows[buffer.start:] for layer, rows in prefilled.taps.items()})
    return buffer


def _prefill(
    tgt: TargetInput, proposer: Proposer, ctx: DraftContext, first_k: int,
    state_factory: StateFactory, parallel: bool, clock: _Clock,
) -> tuple[Prefilled, Proposal, FeatureBuffer | None]:
    """The target's prompt pass and the draft's start + first proposal (of ``first_k`` tokens),
    one after the other or concurrently; the three prefill timings. A tapping proposer gets the
    prompt's features between its start and its first proposal; in parallel (taps of the prompt's
    last row only), after its first proposal, which ran beside the target's prefill."""
    taps = proposer.taps

    def target_job() -> tuple[Prefilled, FeatureBuffer | None]:
        prefilled = prefill(tgt.lm, tgt.embed(), state_factory, taps.layers)
        return prefilled, _prompt_features(prefilled, taps) if taps else None

    def deliver(prefilled: Prefilled, features: FeatureBuffer) -> None:
        rows = {layer: prefilled.taps[layer][features.start:] for layer in features.layers}
        proposer.observe_features(rows, features.start, features)

    def draft_job(prefilled: Prefilled | None = None, features: FeatureBuffer | None = None) -> Proposal:
        proposer.start(ctx)
        if prefilled is not None and features is not None:
            deliver(prefilled, features)
        return proposer.propose([], first_k)

    timings = clock.timings
    if parallel:
        with clock.stage("prefill"):
            (prefilled, features), timings.target_prefill_s, first, timings.draft_prefill_s, timings.prefill_wall_s = (
                run_concurrently(target_job, tgt.lm.device, draft_job, proposer.device))
        if features is not None:  # the prompt's last row, before the first round's proposal
            deliver(prefilled, features)
        return prefilled, first, features
    with clock.stage("prefill"), clock.part("target_prefill_s"):
        prefilled, features = target_job()
    with clock.stage("draft_prefill"), clock.part("draft_prefill_s"):
        first = draft_job(prefilled, features)
    timings.prefill_wall_s = clock.elapsed()
    return prefilled, first, features


def _first_token(loop: _Loop, prefill_logits: torch.Tensor, first: Proposal, accept: _AcceptRule, clock: _Clock) -> None:
    """The first draft guesses the target's first token and the prefill logits decide: kept, the
    other first drafts become the carry; rejected, the first proposal is a draft of 0 accepted."""
    first = first.truncate(loop.cap - 1)
    row = loop.masked(prefill_logits[None])
    with clock.part("verify_s"):
        verdict = accept(row, first.truncate(1))
    if verdict.n_accepted == 1:
        loop.carry = first.drop_first()
        appended = loop.emit([first.token_ids[0]])
    else:
        loop.counts.record_round(len(first), 0)
        appended = loop.emit([verdict.next_token])  # type: ignore[list-item]
        if len(first):
            loop.rejected_at.append(0)
    if loop.top2 is not None:
        loop.top2.add(row[:appended])


def _round(loop: _Loop, state: DecodeState, proposer: Proposer, accept: _AcceptRule, clock: _Clock, n_prompt: int) -> None:
    """Propose (or take the carry) -> ONE target pass over [last token + drafts] -> verify ->
    emit -> count -> roll back to the accepted length -> the proposer sees those positions."""
    room = loop.cap - len(loop.out) - 1  # drafts that fit: the pass adds len(drafts)+1 positions
    requested = min(loop.gamma, room)
    carried = loop.carry
    if carried is not None:
        proposal, loop.carry = carried.truncate(room), None
    else:
        with clock.part("draft_s"):
            proposal = proposer.propose(loop.out, requested) if requested > 0 else Proposal()
            proposal = proposal.truncate(room)
    features = loop.features
    with clock.part("verify_s"):
        ids = [loop.out[-1]] + proposal.token_ids
        # taps only when asked: a tap-free round calls extend exactly as before taps existed
        step = state.extend(token_ids=ids, taps=features.layers) if features is not None else state.extend(token_ids=ids)
        logits = loop.masked(step.logits)
        verdict = accept(logits, proposal)
    loop.counts.record_pass()
    n = verdict.n_accepted
    base = len(loop.out)
    appended = loop.emit(verdict.tokens(proposal.token_ids))
    if n < len(proposal) and appended > n:
        loop.rejected_at.append(base + n)
    kept = min(n, appended)  # drafts past an accepted EOS do not count
    if loop.top2 is not None:
        loop.top2.add(logits[:appended])  # row j chose the j-th token this round emitted
    if carried is not None:
        loop.counts.record_round(len(proposal) + 1, kept + 1)  # the first token's draft and the carry: one draft
    else:
        loop.counts.record_round(len(proposal), kept)
        loop.gamma_trace.append(len(proposal))
        if loop.adaptive_gamma:
            loop.gamma = _next_gamma(loop.gamma, requested, len(proposal), n, loop.max_gamma)
    committed = n_prompt + len(loop.out) - 1  # positions whose tokens are output and were fed
    if features is not None:  # the buffer mirrors the cache: the pass's rows, then the roll-back
        features.append(step.taps)
        features.truncate(committed)
    if not loop.done:
        state.rollback(committed)
        proposer.observe(step.hidden[: n + 1])
        if features is not None:
            proposer.observe_features({layer: rows[: n + 1] for layer, rows in step.taps.items()}, committed - n - 1,
                                      features)


def speculative_generate(
    target: VisionLanguageModel | LanguageModel | TargetInput,
    proposer: Proposer,
    *,
    gamma: int = 4,
    max_new_tokens: int = 64,
    sampling: SamplingConfig = SamplingConfig(),
    adaptive_gamma: bool = False,
    max_gamma: int | None = None,
    parallel_prefill: bool = False,
    min_new_tokens: int = 0,
    state_factory: StateFactory = EagerState,
    reference_ids: Sequence[int] | None = None,
    on_token: Callable[[int], None] | None = None,
    stage: Callable[[str], AbstractContextManager[Any]] | None = None,
    record_top2: bool = False,
    **inputs: Any,
) -> SpecOutcome:
    """Speculative decoding of one sample (module docstring).

    ``inputs``: the target's sample/prepared/features or prompt_ids/prompt_embeds (see
    :func:`target_input`). ``reference_ids``: the target-only greedy tokens (the oracle needs them).
    ``on_token(i)`` is called for every emitted token, in order, when its round ends.
    ``stage(name)``: a context manager wrapped around the phases "prefill" (the target's, or both
    when parallel), "draft_prefill" (sequential only) and "decode" (first token and rounds), e.g.
    the benchmark's ``StageTimer.stage``. ``record_top2``: keep the target's top-2 logits at every
    output position (from the rows verification already computed; greedy: the lossless check).
    """
    if gamma < 1:
        raise ConfigError(f"gamma must be >= 1, got {gamma}")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    max_gamma = max_gamma if max_gamma is not None else 2 * gamma
    if max_gamma < gamma:
        raise ConfigError(f"max_gamma ({max_gamma}) must be >= gamma ({gamma})")
    if parallel_prefill and proposer.taps.prompt:
        raise ConfigError(f"the proposer {proposer.name} taps every prompt position of the target, which its first "
                          "proposal needs from the target's prefill: run without parallel_prefill",
                          parameters=["parallel_prefill"])
    tgt = target_input(target, **inputs)
    ctx = tgt.draft_context(sampling, max_new_tokens, reference_ids)
    clock = _Clock(_devices(tgt.lm.device, proposer.device), stage)
    accept: _AcceptRule = partial(_accept, sampling=sampling, generator=None if sampling.greedy else sampling.generator())
    with torch.inference_mode(), collector_paused():
        clock.start()
        prefilled, first, features = _prefill(tgt, proposer, ctx, min(gamma, max_new_tokens - 1), state_factory,
                                              parallel_prefill, clock)
        state, n_prompt = prefilled.state, prefilled.n_prompt_tokens
        if min_new_tokens > state.capacity - n_prompt + 1:  # as decode(): an error, not fewer tokens
            raise ConfigError(
                f"min_new_tokens={min_new_tokens} cannot be met: the prompt of {n_prompt} tokens leaves room for "
                f"{state.capacity - n_prompt + 1} new tokens in the context of {state.capacity}"
            )
        proposer.observe(prefilled.hidden[None])
        loop = _Loop(
            cap=min(max_new_tokens, state.capacity - n_prompt + 1), eos=list(tgt.eos_token_ids),
            min_new_tokens=min_new_tokens, gamma=gamma, max_gamma=max_gamma, adaptive_gamma=adaptive_gamma,
            counts=SpecCounts(), top2=TopTwoLog() if record_top2 else None, on_token=on_token, features=features,
        )
        with clock.stage("decode"):
            _first_token(loop, prefilled.logits, first, accept, clock)
            while not loop.done:
                _round(loop, state, proposer, accept, clock, n_prompt)
            if loop.carry is not None:  # the first drafts never reached a pass: EOS or the cap came first
                loop.counts.record_round(len(loop.carry) + 1, 1)
        clock.timings.total_s = clock.elapsed()
    out = loop.out
    loop.counts.emitted_tokens = len(out)
    return SpecOutcome(
        token_ids=out, text=tgt.decode_text(out), counts=loop.counts, timings=clock.timings,
        synthetic=proposer.synthetic, stopped_on_eos=bool(out) and out[-1] in loop.eos,
        gamma_trace=loop.gamma_trace, n_prompt_tokens=n_prompt,
        top2=loop.top2.read() if loop.top2 is not None else None,
        rejected_at=loop.rejected_at, rejected_tokens=[tgt.decode_text([out[i]]) for i in loop.rejected_at],
    )


# --------------------------------------------------------------------------- one sample, both ways


@dataclass
class SpecVsBaseline:
    """One sample decoded by the target alone and speculatively, in the same run and process.

    ``exact`` (greedy only): the speculative tokens equal the baseline's, token for token.
    ``lossless`` (greedy only): exact, or every divergence a near-tie flip (``check``,
    :mod:`evspec.spec.lossless`); without a check, the same as ``exact``.
    ``speedup`` = baseline wall / speculative wall, both from the target's prefill work to the last
    token (the draft's own load/preprocess/encode/prefill count on the speculative side);
    ``decode_speedup`` compares the decode phases only. ``generate_*``: the family's monolithic
    ``generate()`` (transformers), when the target is a VLM and decoding is greedy.
    ``draft_alone_ids``/``independent_position_match``: the draft generating by itself, matched
    position by position with the baseline -- labelled, because that is NOT an acceptance rate.
    """

    baseline: BaselineOutcome
    spec: SpecOutcome
    greedy: bool
    generate_s: float | None = None
    generate_ids: list[int] | None = None
    draft_alone_ids: list[int] | None = None
    check: LosslessCheck | None = None

    @property
    def exact(self) -> bool | None:
        return self.spec.token_ids == self.baseline.token_ids if self.greedy else None

    @property
    def lossless(self) -> bool | None:
        if self.check is not None:
            return self.check.lossless
        return self.exact

    @property
    def first_divergence(self) -> int | None:
        """Index of the first token where the speculative output leaves the baseline (None: equal)."""
        a, b = self.spec.token_ids, self.baseline.token_ids
        if a == b:
            return None
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    @property
    def speedup(self) -> float | None:
        return self.baseline.wall_s / self.spec.timings.total_s if self.spec.timings.total_s > 0 else None

    @property
    def decode_speedup(self) -> float | None:
        decode_s = self.spec.timings.decode_s
        return self.baseline.decode_s / decode_s if decode_s > 0 else None

    @property
    def speedup_vs_generate(self) -> float | None:
        if self.generate_s is None or self.spec.timings.total_s <= 0:
            return None
        return self.generate_s / self.spec.timings.total_s

    @property
    def independent_position_match(self) -> float | None:
        return None if self.draft_alone_ids is None else position_match(self.draft_alone_ids, self.baseline.token_ids)


def compare(
    target: VisionLanguageModel | LanguageModel | TargetInput,
    proposer: Proposer,
    *,
    gamma: int = 4,
    max_new_tokens: int = 64,
    sampling: SamplingConfig = SamplingConfig(),
    adaptive_gamma: bool = False,
    max_gamma: int | None = None,
    parallel_prefill: bool = False,
    min_new_tokens: int = 0,
    state_factory: StateFactory = EagerState,
    with_generate: bool = True,
    with_draft_alone: bool = True,
    **inputs: Any,
) -> SpecVsBaseline:
    """Baseline first (its greedy tokens are the oracle's answer key), then the speculative run,
    then (untimed against each other) the family's ``generate()`` and the draft alone."""
    tgt = target_input(target, **inputs)
    greedy = sampling.greedy
    baseline = target_only(tgt, max_new_tokens=max_new_tokens, sampling=sampling, min_new_tokens=min_new_tokens,
                           state_factory=state_factory, record_top2=greedy)
    spec = speculative_generate(
        tgt, proposer, gamma=gamma, max_new_tokens=max_new_tokens, sampling=sampling, adaptive_gamma=adaptive_gamma,
        max_gamma=max_gamma, parallel_prefill=parallel_prefill, min_new_tokens=min_new_tokens,
        state_factory=state_factory, reference_ids=baseline.token_ids if greedy else None, record_top2=greedy,
    )
    result = SpecVsBaseline(baseline, spec, greedy)
    if greedy and baseline.top2 is not None and spec.top2 is not None:
        result.check = check_lossless(
            baseline.token_ids, baseline.top2, spec.token_ids, spec.top2, tgt.lm.dtype,
            rerun_from=lambda prefix: target_forced(tgt, prefix, max_new_tokens=max_new_tokens,
                                                    min_new_tokens=min_new_tokens, state_factory=state_factory),
        )
    if with_generate and sampling.greedy and tgt.model is not None and tgt.prepared is not None:
        devices = _devices(tgt.lm.device)
        with torch.inference_mode():
            start = _now(devices)
            result.generate_ids = list(tgt.model.reference_generate(tgt.prepared, max_new_tokens, min_new_tokens))
            result.generate_s = _now(devices) - start
    if with_draft_alone and isinstance(proposer, DraftModelProposer) and not proposer.synthetic and sampling.greedy:
        result.draft_alone_ids = proposer.standalone(tgt.draft_context(sampling, max_new_tokens), max_new_tokens,
                                                     tgt.eos_token_ids)
    return result
