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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from evspec.errors import ConfigError
from evspec.runtime.decode import (
    EagerState,
    LanguageModel,
    Prefilled,
    SamplingConfig,
    StateFactory,
    decode,
    prefill,
    probabilities,
)
from evspec.runtime.timing import collector_paused
from evspec.spec.lossless import LosslessCheck, TopTwo, TopTwoLog, check_lossless
from evspec.spec.metrics import SpecCounts, SpecTimings, position_match
from evspec.spec.proposers import DraftContext, DraftModelProposer, Proposal, Proposer
from evspec.spec.verify import Verdict, verify_greedy, verify_stochastic

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

    def draft_context(
        self, sampling: SamplingConfig, max_new_tokens: int, reference_ids: Sequence[int] | None = None,
    ) -> DraftContext:
        """What a proposer may know about this sample (the speculative run and the draft alone)."""
        return DraftContext(
            sample=self.sample, target_prompt_ids=self.prompt_ids, target_vocab_size=self.lm.vocab_size,
            sampling=sampling, max_new_tokens=max_new_tokens,
            reference_ids=None if reference_ids is None else list(reference_ids),
            eos_token_ids=tuple(self.eos_token_ids), key=self.key,
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

    def embed() -> torch.Tensor:
        return model.splice(prepared, ready if ready is not None else model.encode(prepared))

    eos = list(eos_token_ids) if eos_token_ids is not None else list(model.eos_token_ids)
    return TargetInput(
        model.language_model, embed, _text_ids(model, prepared), eos, model.decode_text,
        key if key is not None else (sample.id if sample is not None else ""), sample, model, prepared,
    )


# --------------------------------------------------------------------------- clocks and concurrency


def _devices(*devices: torch.device | None) -> list[torch.device]:
    return [d for d in {d for d in devices if d is not None and d.type == "cuda"}]


def _now(devices: Sequence[torch.device]) -> float:
    for device in devices:
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _timed_synced(job: Callable[[], Any], devices: Sequence[torch.device]) -> tuple[Any, float]:
    """Run ``job`` on the current stream; seconds until its device work is done."""
    start = _now(devices)
    result = job()
    return result, _now(devices) - start


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
        _WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evspec-draft")
    return _WORKER


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


def _verify(logits: torch.Tensor, proposal: Proposal, sampling: SamplingConfig, generator: torch.Generator | None) -> Verdict:
    if sampling.greedy:
        return verify_greedy(logits, proposal.token_ids)
    assert generator is not None
    return verify_stochastic(probabilities(logits, sampling), proposal.token_ids, proposal.q, generator)


def _next_gamma(gamma: int, requested: int, n_drafted: int, n_accepted: int, max_gamma: int) -> int:
    """The adaptive rule of the module docstring."""
    if n_drafted == 0:
        return gamma
    if requested == gamma and n_drafted == gamma and n_accepted == gamma:
        return min(gamma + 1, max_gamma)
    if n_accepted < gamma // 2:
        return max(gamma - 1, 1)
    return gamma


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
    tgt = target_input(target, **inputs)
    lm, eos = tgt.lm, list(tgt.eos_token_ids)
    ctx = tgt.draft_context(sampling, max_new_tokens, reference_ids)
    devices = _devices(lm.device, proposer.device)
    generator = None if sampling.greedy else sampling.generator()
    timings, counts = SpecTimings(), SpecCounts()
    first_k = min(gamma, max_new_tokens - 1)
    top2 = TopTwoLog() if record_top2 else None

    def target_job() -> Prefilled:
        return prefill(lm, tgt.embed(), state_factory)

    def draft_job() -> Proposal:
        proposer.start(ctx)
        return proposer.propose([], first_k)

    stage = stage or (lambda name: nullcontext())
    with torch.inference_mode(), collector_paused():
        start = _now(devices)
        if parallel_prefill:
            with stage("prefill"):
                prefilled, t_target, first, t_draft, wall = run_concurrently(
                    target_job, lm.device, draft_job, proposer.device)
        else:
            with stage("prefill"):
                prefilled, t_target = _timed_synced(target_job, devices)
            with stage("draft_prefill"):
                first, t_draft = _timed_synced(draft_job, devices)
            wall = _now(devices) - start
        timings.target_prefill_s, timings.draft_prefill_s, timings.prefill_wall_s = t_target, t_draft, wall
        state = prefilled.state
        n_prompt = prefilled.n_prompt_tokens
        cap = min(max_new_tokens, state.capacity - n_prompt + 1)  # decode()'s cap: the last token needs no slot
        if min_new_tokens > state.capacity - n_prompt + 1:  # as decode(): an error, not fewer tokens
            raise ConfigError(
                f"min_new_tokens={min_new_tokens} cannot be met: the prompt of {n_prompt} tokens leaves room for "
                f"{state.capacity - n_prompt + 1} new tokens in the context of {state.capacity}"
            )
        proposer.observe(prefilled.hidden[None])

        with stage("decode"):
            out: list[int] = []
            emitted = 0

            def emit(tokens: list[int]) -> int:
                """Append tokens up to EOS or the cap; how many were appended."""
                nonlocal emitted
                before = len(out)
                for token in tokens:
                    out.append(token)
                    if len(out) >= cap or token in eos:
                        break
                while on_token is not None and emitted < len(out):
                    on_token(emitted)
                    emitted += 1
                return len(out) - before

            def finished() -> bool:
                return len(out) >= cap or out[-1] in eos

            # ---- first token: the first draft guesses it, the prefill logits decide
            first = first.truncate(cap - 1)
            prefill_row = _mask_eos(prefilled.logits[None], 0, min_new_tokens, eos)
            t = _now(devices)
            verdict = _verify(prefill_row, first.truncate(1), sampling, generator)
            timings.verify_s += _now(devices) - t
            carry: Proposal | None = None
            rejected_at: list[int] = []
            if verdict.n_accepted == 1:
                carry = first.drop_first()
                appended = emit([first.token_ids[0]])
            else:
                counts.record_round(len(first), 0)
                appended = emit([verdict.next_token])  # type: ignore[list-item]
                if len(first):
                    rejected_at.append(0)
            if top2 is not None:
                top2.add(prefill_row[:appended])
            done = finished()
            current_gamma = gamma
            trace: list[int] = []

            # ---- rounds
            while not done:
                room = cap - len(out) - 1  # drafts that fit: the pass adds len(drafts)+1 positions
                requested = min(current_gamma, room)
                t = _now(devices)
                if carry is not None:
                    proposal, carry = carry.truncate(room), None
                    first_round = True
                else:
                    proposal = proposer.propose(out, requested) if requested > 0 else Proposal()
                    proposal = proposal.truncate(room)
                    first_round = False
                    timings.draft_s += _now(devices) - t
                    t = _now(devices)
                step = state.extend(token_ids=[out[-1]] + proposal.token_ids)
                logits = _mask_eos(step.logits, len(out), min_new_tokens, eos)
                verdict = _verify(logits, proposal, sampling, generator)
                timings.verify_s += _now(devices) - t
                counts.record_pass()
                n = verdict.n_accepted
                base = len(out)
                appended = emit(verdict.tokens(proposal.token_ids))
                if n < len(proposal) and appended > n:
                    rejected_at.append(base + n)
                kept = min(n, appended)  # drafts past an accepted EOS do not count
                if top2 is not None:
                    top2.add(logits[:appended])  # row j chose the j-th token this round emitted
                if first_round:
                    counts.record_round(len(proposal) + 1, kept + 1)
                else:
                    counts.record_round(len(proposal), kept)
                    trace.append(len(proposal))
                    if adaptive_gamma:
                        current_gamma = _next_gamma(current_gamma, requested, len(proposal), n, max_gamma)
                done = finished()
                if not done:
                    state.rollback(n_prompt + len(out) - 1)
                    proposer.observe(step.hidden[: n + 1])
            if carry is not None:
                counts.record_round(len(first), 1)  # the first drafts never reached a pass: EOS or the cap came first
        timings.total_s = _now(devices) - start
    counts.emitted_tokens = len(out)
    return SpecOutcome(
        token_ids=out, text=tgt.decode_text(out), counts=counts, timings=timings,
        synthetic=proposer.synthetic, stopped_on_eos=bool(out) and out[-1] in eos,
        gamma_trace=trace, n_prompt_tokens=n_prompt, top2=top2.read() if top2 is not None else None,
        rejected_at=rejected_at, rejected_tokens=[tgt.decode_text([out[i]]) for i in rejected_at],
    )


# --------------------------------------------------------------------------- one sample, both ways


@dataclass
class Comparison:
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

    def to_record(self) -> dict[str, Any]:
        """The JSON-ready per-sample record (``evspec spec``'s records.jsonl row, minus id/config)."""
        return {
            "lossless": self.lossless,
            "exact": self.exact,
            "lossless_check": None if self.check is None else self.check.as_dict(),
            "first_divergence": self.first_divergence,
            "synthetic": self.spec.synthetic,
            "baseline": {
                "token_ids": self.baseline.token_ids, "text": self.baseline.text,
                "prefill_s": self.baseline.prefill_s, "decode_s": self.baseline.decode_s, "wall_s": self.baseline.wall_s,
            },
            "spec": {
                "token_ids": self.spec.token_ids, "text": self.spec.text, "timings": self.spec.timings.as_dict(),
                "drafts_per_round": self.spec.gamma_trace, "stopped_on_eos": self.spec.stopped_on_eos,
                "rejected_at": self.spec.rejected_at, "rejected_tokens": self.spec.rejected_tokens,
            },
            "counts": self.spec.counts.as_dict(),
            "speedup": self.speedup,
            "decode_speedup": self.decode_speedup,
            "generate_s": self.generate_s,
            "generate_matches_baseline": None if self.generate_ids is None else self.generate_ids == self.baseline.token_ids,
            "speedup_vs_generate": self.speedup_vs_generate,
            "draft_alone_ids": self.draft_alone_ids,
            "independent_position_match": self.independent_position_match,
            "independent_position_match_note": "two independent generations compared by position; NOT an acceptance rate",
        }


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
) -> Comparison:
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
    result = Comparison(baseline, spec, greedy)
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
