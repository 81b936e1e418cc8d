"""Trained adapters and draft heads drafting live in the lossless loop (issue 14, section 4):
``evspec spec --draft adapter:RUN``.

:class:`AdapterProposer` wraps any head of :data:`~evspec.align.heads.ADAPTERS`, loaded over the
target's own embedding and LM head, as a :class:`~evspec.spec.proposers.Proposer`. Its sequence is
the store's (EAGLE's): head position 0 is the target's last prompt position (its token the last
prompt id), position ``p`` the ``p``-th output token. What each kind of head is given:

- the target's features ``f_{t-1}`` (B1, L5F, EC, VS): the proposer declares
  ``Taps(layers=(FINAL,))`` (the last prompt position, then each verify pass's committed
  positions) and reads the engine's :class:`~evspec.runtime.decode.FeatureBuffer`, which holds
  exactly the committed rows after each roll-back, so the head's cache is cut back to the common
  prefix and extended with real features, never with rejected drafts (``HeadCache.truncate``);
- the draft's hidden states or logits (TokenAdapter, L1-L4, L5, L5F): a draft model runs alongside
  with :class:`~evspec.spec.proposers.DraftModelProposer`'s cache bookkeeping (fed the accepted
  tokens, stepped along the drafted ones), one hidden row kept per position it holds; those heads
  need draft and target on one vocabulary (a token map), as their training rows do;
- EC: the event model's ``encode`` of the sample, run once in ``start`` (the event model is the
  draft model of the store the head was trained on);
- VS: the target's own visual tokens (``DraftContext.target_visual``: the features the target's
  prefill encoded), compressed once, at the first proposal that drafts.

Drafting from position ``n`` (the latest token ``x_n``, whose feature the target has not computed
yet) needs ``f_{n-1}``: heads reading features draft nothing from position 0 (``f_{-1}`` is
unknown; training never counts that position either, nor does the offline simulation), so their
first proposal is empty and the target's prefill gives the first token. That is also what lets
them run with ``parallel_prefill``: the first proposal needs no feature, and the last prompt row
arrives right after it (EC's event encoder and the draft's prefill then run beside the target's).

Greedy: each draft is the argmax of the head's logits. Sampling: each draft is drawn from the
head's distribution at the sampling temperature and top-p (:func:`~evspec.runtime.decode.
probabilities`), which is returned as ``q``, so the acceptance rule keeps the target's
distribution. A chain of drafts, one per ``draft_step`` (heads' caches are values: a tree would
call ``draft_step`` on one parent cache per child; the proposer seam does not forbid it).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from evspec.align.heads import (
    ADAPTERS,
    DRAFT_READS,
    CONFIG_NAME,
    HEAD_FORMAT,
    Head,
    HeadCache,
    HeadInputs,
    HeadOutput,
    load_head,
    weights_sha256,
)
from evspec.errors import ConfigError, EvspecWarning, ModelError
from evspec.runtime.decode import (
    FINAL,
    EagerState,
    FeatureBuffer,
    LanguageModel,
    SamplingConfig,
    StateFactory,
    Taps,
    probabilities,
)
from evspec.spec.proposers import DraftContext, DraftModelProposer, Proposal, Proposer
from evspec.spec.vocab import TokenMap, common_prefix_length

if TYPE_CHECKING:
    from evspec.models.base import VisionLanguageModel

DRAFT_PREFIX = "adapter:"
HEAD_FOLDER = "head"  # where ``evspec align train`` saves its head inside RUN
METRICS_NAME = "metrics.jsonl"


# ----------------------------------------------------------------------------- RUN folders


@dataclass(frozen=True)
class AdapterRun:
    """What ``adapter:RUN`` names: an ``evspec align train`` folder (the head in ``RUN/head``) or a
    head folder itself (``config.json`` of an evspec head). ``draft_model``: the model the head
    reads (the draft of the store it was trained on; a bare head folder may name it in a
    ``draft_model`` key of its config.json), None when none is recorded."""

    path: Path
    head_folder: Path
    adapter: str
    draft_model: str | None
    target_model: str | None
    metrics: Path | None
    target_weights_sha256: str | None = None  # of the target the run trained over (align train)
    draft_weights_sha256: str | None = None  # of the draft model it read, for a head that reads one

    @property
    def needs_draft(self) -> bool:
        """Whether the head reads a model besides the target (the draft's states, or EC's events)."""
        return ADAPTERS[self.adapter].reads_draft_model()


def _json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ModelError(f"{path}: unreadable JSON ({error})") from None
    if not isinstance(document, dict):
        raise ModelError(f"{path}: not a JSON object")
    return document


def _is_head(folder: Path) -> bool:
    path = folder / CONFIG_NAME
    return path.is_file() and _json(path).get("format") == HEAD_FORMAT


def read_adapter_run(path: str | Path) -> AdapterRun:
    """The head folder, adapter and models a RUN folder records; a ModelError naming RUN when it is
    neither an alignment training run with a saved head nor a head folder."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"adapter run {path}: no such folder")
    run_config: dict[str, Any] = {}
    if _is_head(path):
        head_folder = path
    elif _is_head(path / HEAD_FOLDER):
        head_folder = path / HEAD_FOLDER
        if (path / CONFIG_NAME).is_file():
            run_config = _json(path / CONFIG_NAME)
    else:
        raise ModelError(f"adapter run {path}: not a head (no {CONFIG_NAME} of an evspec head in it or in "
                         f"{HEAD_FOLDER}/; train one with evspec align train)")
    head_document = _json(head_folder / CONFIG_NAME)
    adapter = head_document.get("adapter")
    if adapter not in ADAPTERS:
        raise ModelError(f"{head_folder / CONFIG_NAME}: adapter {str(adapter)[:80]!r} is not one of {', '.join(ADAPTERS)}")
    identity = run_config.get("identity") if isinstance(run_config.get("identity"), dict) else {}
    store = identity.get("store_identity") if isinstance(identity.get("store_identity"), dict) else {}
    draft = store.get("draft", head_document.get("draft_model"))
    target = identity.get("target", store.get("target", head_document.get("target_model")))
    metrics = path / METRICS_NAME
    weights, draft_weights = identity.get("target_weights_sha256"), identity.get("draft_weights_sha256")
    return AdapterRun(path, head_folder, adapter, draft if isinstance(draft, str) else None,
                      target if isinstance(target, str) else None, metrics if metrics.is_file() else None,
                      weights if isinstance(weights, str) else None,
                      draft_weights if isinstance(draft_weights, str) else None)


def _warn_if_trained_over_other_weights(run: AdapterRun, head: Head, lm: LanguageModel,
                                       draft: VisionLanguageModel | LanguageModel | None) -> None:
    """An EvspecWarning when the run recorded the sha256 of the target weights it trained over
    (embedding, LM head, and the draft's LM head for the TokenAdapter) and this target's differ: a
    head of an earlier build of the same shapes loads and drafts losslessly, but its acceptance and
    its recorded simulated acceptance belong to the other weights. Checked in float32 only, the
    dtype the run hashed in (a 16-bit copy of the same weights hashes differently). The same for the
    draft model a head reads (its whole trainable module: EC reads its event encoder)."""
    if run.target_weights_sha256 is None or lm.dtype != torch.float32:
        return
    draft_lm_head = None
    if "draft_logits" in head.reads and draft is not None:
        draft_lm_head = (draft if isinstance(draft, LanguageModel) else draft.language_model).lm_head
    if weights_sha256(lm.embed_tokens, lm.lm_head, draft_lm_head) != run.target_weights_sha256:
        warnings.warn(EvspecWarning(
            f"{run.path}: this head was trained over other target weights than these (config.json's "
            "target_weights_sha256 differs): it drafts losslessly, but expect lower acceptance than it was "
            "trained for; retrain it on a store of this target (evspec align extract, evspec align train)"),
            stacklevel=3)
    if (run.draft_weights_sha256 is not None and draft is not None and not isinstance(draft, LanguageModel)
            and draft.dtype == torch.float32 and weights_sha256(draft.trainable_module) != run.draft_weights_sha256):
        warnings.warn(EvspecWarning(
            f"{run.path}: this head read another draft model's states or event features in training "
            "(config.json's draft_weights_sha256 differs): it drafts losslessly, but expect lower acceptance "
            "than it was trained for; retrain it on a store of this draft (evspec align extract, evspec align train)"),
            stacklevel=3)


def simulated_acceptance(run: AdapterRun, gamma: int) -> dict[str, Any] | None:
    """The run's last held-out SIMULATED (offline) acceptance at ``gamma`` (from its metrics.jsonl),
    labelled; None when the run has none at that gamma."""
    if run.metrics is None:
        return None
    last: dict[str, Any] | None = None
    for line in run.metrics.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn last line of a killed run
        simulated = row.get("eval", {}).get("simulated") if isinstance(row, dict) and isinstance(row.get("eval"), dict) else None
        if isinstance(simulated, dict) and str(gamma) in (simulated.get("acceptance_rate") or {}):
            last = {"step": row.get("step"), **simulated}
    if last is None:
        return None
    result = {"label": "simulated (offline)", "note": last.get("label"), "source": str(run.metrics), "step": last["step"],
              "gamma": gamma, "acceptance_rate": last["acceptance_rate"][str(gamma)],
              "mean_acceptance_length": (last.get("mean_acceptance_length") or {}).get(str(gamma))}
    replay = last.get("replay")
    if isinstance(replay, dict) and (replay.get("acceptance_rate") or {}).get(str(gamma)) is not None:
        result["replay"] = {"note": replay.get("label"), "acceptance_rate": replay["acceptance_rate"][str(gamma)],
                            "mean_acceptance_length": (replay.get("mean_acceptance_length") or {}).get(str(gamma))}
    return result


# ----------------------------------------------------------------------------- the draft alongside


class _DraftTrack(DraftModelProposer):
    """The draft model's cache, kept as :class:`DraftModelProposer` keeps it, plus its last hidden
    state at every position it holds: row ``p`` is the draft's state at head position ``p`` (row 0
    its last prompt position). Rows past the cache's length are stale and overwritten on refeed."""

    _rows: torch.Tensor | None = None
    _device_map: torch.Tensor | None = None  # target id -> draft id, on the draft's device

    def start(self, ctx: DraftContext) -> None:
        super().start(ctx)
        assert self.state is not None and self.draft_hidden is not None
        self._rows = self.draft_hidden.new_empty(self.state.capacity - self._prompt_len + 1, self.draft_hidden.shape[-1])
        self._rows[0] = self.draft_hidden[-1]

    def _feed(self, draft_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        logits = super()._feed(draft_ids)
        assert self.state is not None and self._rows is not None and self.draft_hidden is not None
        end = self.state.length - self._prompt_len + 1
        self._rows[end - self.draft_hidden.shape[0]: end] = self.draft_hidden
        return logits

    def sync(self, target_ids: Sequence[int]) -> bool:
        """Hold the prompt + ``target_ids`` (mapped); False when the draft's context has no room."""
        return self._sync(self._to_draft(target_ids)) is not None

    def step(self, target_id: int) -> None:
        self._feed(self._to_draft([target_id]))

    def step_on_device(self, target_id: torch.Tensor) -> torch.Tensor:
        """Feed a target id held on the device [1] (no host sync); returns the draft id fed, which
        the caller records with :meth:`record_fed` once it reads the round's ids back."""
        if self._device_map is None:
            mapped = self.bridge.target_to_draft  # type: ignore[union-attr]
            self._device_map = torch.where(mapped >= 0, mapped, self.bridge.draft_fallback).to(self.lm.device)  # type: ignore[union-attr]
        draft_id = self._device_map[target_id.to(self.lm.device)]
        self._feed(draft_id)
        return draft_id

    def record_fed(self, draft_ids: list[int]) -> None:
        self._fed.extend(draft_ids)

    def rows(self, start: int, end: int) -> torch.Tensor:
        """[end - start, Hd]: the hidden states at head positions start .. end - 1 (all held)."""
        assert self._rows is not None
        return self._rows[start:end]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The draft's next-token logits from its hidden states (its own LM head)."""
        return self.lm.lm_head(hidden).float()

    @property
    def room(self) -> int:
        """Tokens the draft's cache can still take."""
        assert self.state is not None
        return self.state.capacity - self.state.length


# ----------------------------------------------------------------------------- the proposer


class AdapterProposer(Proposer):
    """A trained head (or adapter) as a proposer: see the module docstring.

    ``head``: over the target's embedding and LM head (:func:`~evspec.align.heads.load_head`).
    ``draft``: the draft model the head reads, with its vocabulary ``bridge`` (a token map to the
    target) -- for TokenAdapter, L1-L4, L5 and L5F. ``event_model``: the model whose ``encode``
    gives EC its visual features. ``last_prompt_id``: the token at the target's last prompt
    position (default: the last of the context's ``target_prompt_ids``, the template's answer cue).
    """

    def __init__(
        self, head: Head, *, draft: VisionLanguageModel | LanguageModel | None = None, bridge: TokenMap | None = None,
        event_model: VisionLanguageModel | None = None, state_factory: StateFactory = EagerState, name: str | None = None,
    ) -> None:
        self.head = head.eval()
        self.name = name or f"adapter:{head.name}"
        self.reads_features = "previous_features" in head.reads
        self.track: _DraftTrack | None = None
        if DRAFT_READS & head.reads:
            if draft is None or bridge is None:
                raise ConfigError(f"{head.name} reads the draft model's states: pass draft and its bridge",
                                  parameters=("draft",))
            if not isinstance(bridge, TokenMap):
                raise ConfigError(f"{head.name} reads the draft's states position by position: draft and target need "
                                  f"one vocabulary (a token map), got a {bridge.kind} bridge", parameters=("bridge",))
            self.track = _DraftTrack(draft, bridge, state_factory=state_factory, name=f"{self.name}/draft")
            self._check_width("draft_hidden_size", head.config.draft_hidden_size, self.track.lm.hidden_size, "hidden size")
            if "draft_logits" in head.reads:
                self._check_width("draft_vocab_size", head.config.draft_vocab_size, self.track.lm.vocab_size, "vocabulary")
        if head.visual_field == "draft_visual" and event_model is None:
            raise ConfigError(f"{head.name} is conditioned on the event model's features: pass event_model",
                              parameters=("event_model",))
        self.event_model = event_model
        self._cache: HeadCache | None = None
        self._tokens: list[int] = []  # the head positions the cache holds (real inputs only)
        self._buffer: FeatureBuffer | None = None
        self._x0 = 0
        self._sampling = SamplingConfig()
        self._eos: set[int] = set()
        self._generator = torch.Generator()
        self._visual: torch.Tensor | None = None
        self._target_visual = None

    def _check_width(self, field: str, configured: int, actual: int, what: str) -> None:
        if configured != actual:
            raise ConfigError(f"{self.head.name} was built for {field}={configured}, the draft's {what} is {actual}: "
                              "a head of another draft model", parameters=("draft",))

    @classmethod
    def from_folder(
        cls, folder: str | Path, target: VisionLanguageModel | LanguageModel, *,
        draft: VisionLanguageModel | LanguageModel | None = None, bridge: str = "auto",
        state_factory: StateFactory = EagerState, name: str | None = None,
    ) -> AdapterProposer:
        """The head saved in ``folder`` (a head folder or an align train RUN) over ``target``'s
        embedding and LM head, on the target's device and in its dtype; ``draft``: the model it
        reads, when it reads one (paired with the target's vocabulary through ``bridge``)."""
        run = read_adapter_run(folder)
        lm = target if isinstance(target, LanguageModel) else target.language_model
        head = load_head(run.head_folder, lm.embed_tokens, lm.lm_head).to(device=lm.device, dtype=lm.dtype)
        _warn_if_trained_over_other_weights(run, head, lm, draft)
        token_map = event_model = None
        if run.needs_draft and draft is None:
            raise ConfigError(f"{run.path}: the {run.adapter} head reads a draft model and none was given",
                              parameters=("draft",))
        if DRAFT_READS & head.reads:
            token_map = _pair(draft, target, bridge)
        if head.visual_field == "draft_visual":
            if isinstance(draft, LanguageModel):
                raise ConfigError(f"{run.adapter} needs the event model's encoder: a VLM draft, not a bare language model",
                                  parameters=("draft",))
            event_model = draft
        return cls(head, draft=draft, bridge=token_map, event_model=event_model, state_factory=state_factory,
                   name=name or f"adapter:{run.adapter}")

    # ---- the protocol
    @property
    def taps(self) -> Taps:
        return Taps(layers=(FINAL,)) if self.reads_features else Taps()

    @property
    def device(self) -> torch.device:
        return self.head.target.lm_head.weight.device

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "adapter": self.head.name, "reads": sorted(self.head.reads)}

    @torch.inference_mode()
    def start(self, ctx: DraftContext) -> None:
        if not ctx.target_prompt_ids:
            raise ConfigError(f"{self.name} needs the target's prompt ids (its last one is the head's position 0)")
        self._x0 = int(ctx.target_prompt_ids[-1])
        self._sampling = ctx.sampling
        self._eos = set(ctx.eos_token_ids)
        self._generator = torch.Generator().manual_seed(ctx.sampling.seed + 1)
        self._cache, self._tokens, self._buffer = None, [], None
        self._target_visual = ctx.target_visual
        if self.track is not None:
            self.track.start(ctx)
        if self.event_model is not None:  # EC: the event encoder, once per sample (beside the target's prefill when parallel)
            if ctx.sample is None:
                raise ConfigError(f"{self.name} needs the sample itself (the event model's input)")
            model = self.event_model
            prepared = model.preprocess(model.load(ctx.sample), ctx.sample.query)
            self._visual = model.encode(prepared).embeds
        elif self.head.visual_field == "target_visual":
            self._visual = None  # VS: the target's encode, read at the first drafting proposal
        if "visual" not in self.head.reads:
            self._cache = self.head.start()
        elif self._visual is not None:
            self._cache = self.head.start(self._visual[None].to(self.device))

    def observe_features(self, features: dict[int, torch.Tensor], start: int, buffer: FeatureBuffer) -> None:
        self._buffer = buffer  # read at the next proposal: it then holds exactly the committed rows

    def _known_features(self, n: int) -> torch.Tensor | None:
        """[n, H]: the target's features f_0 .. f_{n-1} of head positions 0 .. n-1, or None when
        the buffer does not hold them (yet)."""
        buffer = self._buffer
        if buffer is None or buffer.length - buffer.start < n:
            return None
        return buffer[FINAL][:n]

    @torch.inference_mode()
    def propose(self, accepted: Sequence[int], gamma: int) -> Proposal:
        sequence = [self._x0, *(int(t) for t in accepted)]
        n = len(sequence) - 1  # the latest position: x_n known, f_n not
        features = None
        if self.reads_features:
            if n == 0:
                return Proposal()  # f_{-1} is unknown: the target's prefill gives the first token
            features = self._known_features(n)
            if features is None:
                return Proposal()
        if self._cache is None and self.head.visual_field == "target_visual":  # after the target's prefill (n >= 1)
            if self._target_visual is None:
                raise ConfigError(f"{self.name} is conditioned on the target's visual tokens: the target must be a VLM")
            self._cache = self.head.start(self._target_visual()[None].to(self.device))
        if gamma < 1 or self._cache is None:
            return Proposal()
        if self.track is not None:
            if not self.track.sync(accepted):
                return Proposal()
            gamma = min(gamma, self.track.room + 1)  # the last draft needs no slot
        out = self._extend(sequence, features)
        return self._chain(out, gamma)

    # ---- the committed prefix
    def _extend(self, sequence: list[int], features: torch.Tensor | None) -> HeadOutput:
        """The cache cut to the common prefix with ``sequence`` (and to exclude the latest position,
        which is re-fed to get its output), then extended with real inputs up to position n."""
        assert self._cache is not None
        n = len(sequence) - 1
        keep = min(common_prefix_length(self._tokens, sequence), n)
        cache = self._cache.truncate(keep)
        ids = torch.tensor([sequence[keep:]], dtype=torch.long, device=self.device)
        previous = None
        if features is not None:
            zero = features.new_zeros(1, features.shape[-1])
            known = torch.cat([zero, features])  # f_{p-1} for p = 0 .. n
            previous = known[keep: n + 1][None]
        hidden = logits = None
        if self.track is not None:
            hidden = self.track.rows(keep, n + 1)
            logits = self.track.logits(hidden)[None] if "draft_logits" in self.head.reads else None
            hidden = hidden[None]
        out, self._cache = self.head.extend(cache, HeadInputs(ids, previous, hidden, logits))
        self._tokens = list(sequence)
        return out

    # ---- drafting
    def _pick(self, logits: torch.Tensor) -> tuple[int, torch.Tensor]:
        """One sampled draft from the head's logits [V] and the distribution it was drawn from."""
        probs = probabilities(logits, self._sampling)
        return int(torch.multinomial(probs.cpu(), 1, generator=self._generator)), probs

    def _draft_inputs(self, hidden: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The draft's hidden state [1, Hd] at the position just fed and its logits, as the head reads them."""
        if hidden is None:
            return None, None
        return hidden, self.track.logits(hidden) if "draft_logits" in self.head.reads else None  # type: ignore[union-attr]

    def _chain_greedy(self, out: HeadOutput, gamma: int) -> Proposal:
        """gamma argmax steps with the tokens kept on the device: one host sync per round (as
        DraftModelProposer's greedy drafting); drafts after an end-of-answer token are cut afterwards."""
        assert self._cache is not None
        cache = self._cache
        tokens = [out.logits[0, -1].argmax(-1, keepdim=True)]
        fed: list[torch.Tensor] = []
        for _ in range(gamma - 1):
            hidden = None
            if self.track is not None:
                fed.append(self.track.step_on_device(tokens[-1]))
                hidden = self.track.draft_hidden[-1:]  # type: ignore[index]
            hidden, logits = self._draft_inputs(hidden)
            previous = out.features[:, -1] if self.reads_features else None
            out, cache = self.head.draft_step(cache, tokens[-1], previous_feature=previous, draft_hidden=hidden,
                                              draft_logits=logits)
            tokens.append(out.logits[0, -1].argmax(-1, keepdim=True))
        drafted = torch.cat(tokens).tolist()
        if self.track is not None and fed:
            self.track.record_fed(torch.cat(fed).tolist())
        for j, token in enumerate(drafted):
            if token in self._eos:
                return Proposal(drafted[: j + 1])
        return Proposal(drafted)

    def _chain(self, out: HeadOutput, gamma: int) -> Proposal:
        return self._chain_greedy(out, gamma) if self._sampling.greedy else self._chain_sampled(out, gamma)

    def _chain_sampled(self, out: HeadOutput, gamma: int) -> Proposal:
        """gamma draws, each from the head's distribution (returned as q); a host generator draws."""
        assert self._cache is not None
        cache = self._cache
        drafted: list[int] = []
        rows: list[torch.Tensor] = []
        while True:
            token, probs = self._pick(out.logits[0, -1])
            drafted.append(token)
            rows.append(probs)
            if len(drafted) == gamma or token in self._eos:
                break
            hidden = None
            if self.track is not None:
                self.track.step(token)
                hidden = self.track.draft_hidden[-1:]
            hidden, logits = self._draft_inputs(hidden)
            previous = out.features[:, -1] if self.reads_features else None
            out, cache = self.head.draft_step(cache, torch.tensor([token], device=self.device),
                                              previous_feature=previous, draft_hidden=hidden, draft_logits=logits)
        return Proposal(drafted, torch.stack(rows))


def _pair(draft: VisionLanguageModel | LanguageModel | None, target: VisionLanguageModel | LanguageModel,
          bridge: str) -> TokenMap:
    """The token map between a draft and the target (bare language models: ids agree)."""
    from evspec.spec.vocab import bridge_vocabularies, identity_map

    if draft is None:
        raise ConfigError("this head reads a draft model: pass draft", parameters=("draft",))
    if isinstance(draft, LanguageModel) or isinstance(target, LanguageModel):
        draft_lm = draft if isinstance(draft, LanguageModel) else draft.language_model
        target_lm = target if isinstance(target, LanguageModel) else target.language_model
        return identity_map(draft_lm.vocab_size, target_lm.vocab_size)
    mapping = bridge_vocabularies(
        draft.tokenizer, target.tokenizer, draft_vocab_size=draft.language_model.vocab_size,
        target_vocab_size=target.language_model.vocab_size, draft_eos=draft.eos_token_ids,
        target_eos=target.eos_token_ids, mode=bridge,  # type: ignore[arg-type]
    )
    if not isinstance(mapping, TokenMap):
        raise ConfigError("this head reads the draft's states position by position: draft and target need one "
                          "tokenizer (a token map), not a text bridge", parameters=("bridge",))
    return mapping


# ----------------------------------------------------------------------------- evspec spec --draft adapter:RUN


def adapter_run_path(draft: str) -> Path | None:
    """RUN of a ``--draft adapter:RUN`` (None for other drafts)."""
    if not draft.startswith(DRAFT_PREFIX):
        return None
    text = draft.removeprefix(DRAFT_PREFIX)
    if not text:
        raise ConfigError("draft adapter:RUN needs the folder of an align train run or of a head", parameters=("draft",))
    return Path(text)


def adapter_model_names(draft: str) -> list[str]:
    """The registry names ``adapter:RUN`` loads besides the target: the model its head reads (the
    draft of the store it was trained on), if it reads one."""
    path = adapter_run_path(draft)
    if path is None:
        return []
    run = read_adapter_run(path)
    if not run.needs_draft:
        return []
    if run.draft_model is None:
        raise ConfigError(f"adapter run {run.path}: the {run.adapter} head reads a draft model, but neither "
                          f"{CONFIG_NAME} of the run (the store's draft) nor the head's {CONFIG_NAME} (draft_model) "
                          "names it", parameters=("draft",))
    return [run.draft_model]


def build_adapter_proposer(
    draft: str, target: VisionLanguageModel, loader: Any, draft_device: torch.device, dtype: torch.dtype, *,
    cache: str = "eager", bridge: str = "auto",
) -> AdapterProposer:
    """The proposer of ``--draft adapter:RUN`` for ``target``: its head over the target's embedding
    and LM head, and the draft model it reads loaded by ``loader(name, device, dtype)``."""
    from evspec.run.shared import state_factory_for

    path = adapter_run_path(draft)
    if path is None:
        raise ConfigError(f"draft {draft!r} is not adapter:RUN", parameters=("draft",))
    names = adapter_model_names(draft)
    model = loader(names[0], draft_device, dtype) if names else None
    factory = state_factory_for(cache, model.language_model) if model is not None else EagerState
    return AdapterProposer.from_folder(path, target, draft=model, bridge=bridge, state_factory=factory, name=draft)


def adapter_summary(draft: str, gamma: int) -> dict[str, Any]:
    """What an ``adapter:RUN`` run adds to its summary: the run's SIMULATED (offline) acceptance at
    ``gamma`` (None when it recorded none), shown beside the live one in the report."""
    path = adapter_run_path(draft)
    if path is None:
        return {}
    run = read_adapter_run(path)
    return {"adapter": {"run": str(run.path), "head": str(run.head_folder), "adapter": run.adapter,
                        "trained_for_target": run.target_model, "draft_model": run.draft_model},
            "simulated_acceptance": simulated_acceptance(run, gamma)}
