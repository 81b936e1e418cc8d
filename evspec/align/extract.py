"""Extraction: what the drafting heads train on, from the target and the draft, per sample.

As EAGLE regenerates its data with the target, the target answers each sample greedily (through
``evspec.runtime.decode``'s prefill and decode, the path the benchmark runs) and that answer is the
training sequence. Both models then run it teacher-forced once, through their own stages (``load``
-> ``preprocess`` -> ``encode`` -> ``splice``, then the language model's ``body`` with
``output_hidden_states``): the target's last layer and one low and one middle layer (EAGLE-3's
fusion), the draft's last layer on the same text, and the visual features the heads are conditioned
on (the event model's encoded event features; the target's visual tokens for a ViSpec-like head).

:func:`extract_sample` is one sample (training may call it online, with no store);
:func:`extract_store` writes a resumable, rank-aware store (:mod:`evspec.align.store`).
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from evspec.align.store import (
    STORE_DTYPES,
    STORE_OUTPUTS,
    AlignRow,
    RankWriter,
    check_store_weights,
    claim_store,
    merge_index,
    read_parts,
    sample_ranks,
)
from evspec.align.heads import weights_sha256
from evspec.errors import ConfigError, InputError

if TYPE_CHECKING:
    from evspec.data.dataset import Sample
    from evspec.models.base import Prepared, VisionLanguageModel, VisualFeatures
    from evspec.run.shared import Reporter
    from evspec.spec.vocab import TextBridge, TokenMap


# ----------------------------------------------------------------------------- the config


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that decides a store's rows (its identity for resume) plus how it is cut into shards."""

    target: str
    draft: str
    dataset: str
    split: str | None = None
    max_samples: int | None = None
    max_new_tokens: int = 64
    layers: tuple[int, int] | None = None  # the target's (low, middle) hidden-state indices; None: EAGLE-3's
    dtype: str = "auto"  # the models' compute dtype
    store_dtype: str = "bfloat16"  # the stored hidden states' and features' dtype (16-bit)
    shard_rows: int = 64  # rows per shard: what a killed run redoes at most, per rank
    target_visual: bool = True  # store the target's visual tokens (the ViSpec-like head's conditioning)
    event_canvas: str = "auto"
    allow_outside_root: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}", parameters=["max_new_tokens"])
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"max_samples must be >= 1, got {self.max_samples}", parameters=["max_samples"])
        if self.shard_rows < 1:
            raise ConfigError(f"shard_rows must be >= 1, got {self.shard_rows}", parameters=["shard_rows"])
        if self.store_dtype not in STORE_DTYPES:
            raise ConfigError(f"store_dtype must be one of {', '.join(STORE_DTYPES)} (16-bit), got {self.store_dtype!r}",
                              parameters=["store_dtype"])
        if self.layers is not None and (len(self.layers) != 2 or any(int(k) < 0 for k in self.layers)):
            raise ConfigError(f"layers must be two hidden-state indices >= 0 (low, middle), got {self.layers}",
                              parameters=["layers"])

    def identity(self, dtype: torch.dtype) -> dict[str, Any]:
        """What a resumed extraction must share with the store (``shard_rows`` only cuts files)."""
        import evspec

        return {"target": self.target, "draft": self.draft, "dataset": self.dataset, "split": self.split,
                "max_samples": self.max_samples, "max_new_tokens": self.max_new_tokens,
                "layers": list(self.layers) if self.layers is not None else "auto",
                "dtype": str(dtype).removeprefix("torch."), "store_dtype": self.store_dtype,
                "target_visual": self.target_visual, "event_canvas": self.event_canvas, "evspec": evspec.__version__}


# ----------------------------------------------------------------------------- layers


def n_layers(model: VisionLanguageModel) -> int:
    return int(model.language_model.body.config.num_hidden_layers)


def default_layers(n: int) -> tuple[int, int]:
    """EAGLE-3's (SpecForge's) low and middle layers, the outputs of layers 1 and n/2 - 1 (0-based),
    as hidden-state indices (0: the embeddings, k: the output of the first k layers), kept below n."""
    return min(2, n - 1), min(max(n // 2, 1), n - 1)


def resolve_layers(layers: Sequence[int] | None, n: int) -> tuple[int, int]:
    if layers is None:
        return default_layers(n)
    low, mid = (int(k) for k in layers)
    for k in (low, mid):
        if not 0 <= k < n:
            raise ConfigError(
                f"layers must be hidden-state indices in 0..{n - 1} for a target of {n} layers (0: the embeddings, "
                f"k: the output of layer k; the last layer is always stored), got {low},{mid}", parameters=["layers"])
    return low, mid


# ----------------------------------------------------------------------------- one sample


def pair_bridge(draft: VisionLanguageModel, target: VisionLanguageModel) -> TokenMap | TextBridge:
    """How the target's answer becomes the draft's ids: the same ids for a shared vocabulary
    (evspec's families share LLaMA's), else the text re-encoded (:mod:`evspec.spec.vocab`)."""
    from evspec.spec.vocab import bridge_vocabularies

    return bridge_vocabularies(
        draft.tokenizer, target.tokenizer, draft_vocab_size=draft.language_model.vocab_size,
        target_vocab_size=target.language_model.vocab_size, draft_eos=draft.eos_token_ids, target_eos=target.eos_token_ids)


def draft_answer_ids(bridge: TokenMap | TextBridge, target: VisionLanguageModel, draft: VisionLanguageModel,
                     answer: Sequence[int], stopped_on_eos: bool) -> list[int]:
    from evspec.spec.vocab import TokenMap

    if isinstance(bridge, TokenMap):
        return bridge.to_draft(answer)
    text = target.decode_text(answer[:-1] if stopped_on_eos else answer)
    ids = list(draft.tokenizer.encode(text, add_special_tokens=False))  # type: ignore[attr-defined]
    return ids + ([draft.eos_token_ids[0]] if stopped_on_eos else [])


def _visual(model: VisionLanguageModel, sample: Sample) -> tuple[Prepared, VisualFeatures, torch.Tensor]:
    """The model's own stages up to the prompt: prepared inputs, visual features, spliced prompt."""
    prepared = model.preprocess(model.load(sample), sample.query)
    features = model.encode(prepared)
    return prepared, features, model.splice(prepared, features)


def teacher_forced(model: VisionLanguageModel, prompt_embeds: torch.Tensor, answer: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """Every hidden state of the prompt followed by ``answer``, one pass: ``hidden_states[k]`` is
    [1, L, D], k = 0 the embeddings, k = 1..n-1 the output of layer k, n the last layer after the
    final norm. The answer enters as token ids through the language model's embedding, as in decoding."""
    lm = model.language_model
    ids = torch.tensor([list(answer)], dtype=torch.long, device=prompt_embeds.device)
    embeds = torch.cat([prompt_embeds, lm.embed_tokens(ids).to(prompt_embeds.dtype)], dim=1)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    out = lm.body(inputs_embeds=embeds, attention_mask=mask, use_cache=False, output_hidden_states=True)
    # the last entry is taken from last_hidden_state: after the final norm whatever a config's
    # tie_last_hidden_states says (transformers' capture may otherwise give the last layer's raw output)
    return (*out.hidden_states[:-1], out.last_hidden_state)


def _copy(tensor: torch.Tensor, dtype: torch.dtype | None, device: torch.device | None) -> torch.Tensor:
    """A plain tensor (not an inference-mode one, so training can use it) in ``dtype`` on ``device``."""
    return tensor.to(device=device or tensor.device, dtype=dtype or tensor.dtype, copy=True)


def extract_sample(
    target: VisionLanguageModel,
    draft: VisionLanguageModel,
    sample: Sample,
    *,
    max_new_tokens: int,
    layers: Sequence[int] | None = None,
    bridge: TokenMap | TextBridge | None = None,
    store_dtype: torch.dtype | None = None,
    device: torch.device | str | None = "cpu",
    target_visual: bool = True,
    answer: tuple[Sequence[int], bool] | None = None,
) -> AlignRow:
    """One sample's row (:class:`~evspec.align.store.AlignRow`): the target's greedy answer and both
    models' hidden states on it. ``store_dtype``/``device``: where the tensors go (None: as computed,
    e.g. for training online on the models' device). The tensors are ordinary (not inference-mode).
    ``answer``: the target's greedy answer ids and whether it stopped on EOS, when already known
    (training online decodes each sample once); otherwise it is decoded here."""
    from evspec.runtime.decode import decode, prefill

    low, mid = resolve_layers(layers, n_layers(target))
    bridge = bridge if bridge is not None else pair_bridge(draft, target)
    with torch.inference_mode():
        target_prepared, target_features, target_prompt = _visual(target, sample)
        n_prompt = target_prompt.shape[1]
        room = target.language_model.context_length - n_prompt  # the teacher-forced pass feeds the last token too
        if room < 1:
            raise ConfigError(f"sample {sample.id}: the target's prompt of {n_prompt} tokens fills its context")
        if answer is None:
            greedy = decode(prefill(target.language_model, target_prompt), max_new_tokens=min(max_new_tokens, room),
                            eos_token_ids=target.eos_token_ids)
            answer = (greedy.token_ids, greedy.stopped_on_eos)
        ids, stopped_on_eos = list(answer[0]), answer[1]
        states = teacher_forced(target, target_prompt, ids)
        rows = slice(n_prompt - 1, n_prompt + len(ids))

        draft_prepared, draft_features, draft_prompt = _visual(draft, sample)
        n_draft = draft_prompt.shape[1]
        draft_ids = draft_answer_ids(bridge, target, draft, ids, stopped_on_eos)
        draft_ids = draft_ids[: max(draft.language_model.context_length - n_draft, 0)]
        draft_hidden = teacher_forced(draft, draft_prompt, draft_ids)[-1][0, n_draft - 1:]
        first_ids = last_prompt_id(target, target_prepared, target_prompt), last_prompt_id(draft, draft_prepared, draft_prompt)
    dtype, out = store_dtype, None if device is None else torch.device(device)
    ids_device = out or target.device
    target_ids = torch.tensor([first_ids[0], *ids], dtype=torch.long, device=ids_device)
    loss_mask = torch.ones(len(ids) + 1, dtype=torch.bool, device=ids_device)
    loss_mask[-1] = False  # the last position's next token is not in the row
    return AlignRow(
        sample_id=sample.id,
        target_ids=target_ids,
        loss_mask=loss_mask,
        target_hidden=_copy(states[-1][0, rows], dtype, out),
        target_low=_copy(states[low][0, rows], dtype, out),
        target_mid=_copy(states[mid][0, rows], dtype, out),
        draft_ids=torch.tensor([first_ids[1], *draft_ids], dtype=torch.long, device=ids_device),
        draft_hidden=_copy(draft_hidden, dtype, out),
        draft_visual=_copy(draft_features.embeds, dtype, out),
        target_visual=_copy(target_features.embeds, dtype, out) if target_visual else None,
    )


def last_prompt_id(model: VisionLanguageModel, prepared: Prepared, prompt_embeds: torch.Tensor) -> int:
    """The token at the prompt's last position: the last prompt id (prompts end with the template's
    answer cue), checked against the spliced prompt, so row 0's id is the token the row's state saw."""
    token = int(prepared.input_ids[0, -1])
    lm = model.language_model
    if token < 0 or not torch.equal(prompt_embeds[0, -1], lm.embed_tokens.weight[token].to(prompt_embeds.dtype)):
        raise ConfigError(f"{model.name}: the spliced prompt does not end with its last prompt token; cannot align rows")
    return token


# ----------------------------------------------------------------------------- the store


@dataclass
class ExtractSummary:
    """What one process did, and (rank 0) the merged store: what ``evspec align extract`` prints."""

    out: str
    rank: int
    world_size: int
    extracted: int  # samples this process extracted in this session
    already_done: int  # its samples found in the store
    seconds: float  # this session's extraction time (model loading excluded)
    model_load_s: float
    rows: int | None = None  # the merged store's (rank 0)
    bytes: int | None = None
    bytes_per_sample: float | None = None
    store_samples_per_second: float | None = None
    complete: bool | None = None

    @property
    def samples_per_second(self) -> float | None:
        return self.extracted / self.seconds if self.extracted and self.seconds > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "samples_per_second": self.samples_per_second}


def _no_barrier() -> None:
    return None


def distributed_barrier(world_size: int) -> Callable[[], None]:
    """``torch.distributed``'s barrier for several processes (it must be initialised: torchrun)."""
    if world_size == 1:
        return _no_barrier
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError(f"world_size={world_size} needs torch.distributed initialised (run under torchrun)",
                          parameters=["world_size"])
    if dist.get_world_size() != world_size:
        raise ConfigError(f"world_size={world_size} but torch.distributed has {dist.get_world_size()} processes",
                          parameters=["world_size"])
    return dist.barrier


def samples_fingerprint(samples: Sequence[Sample]) -> str:
    """sha256 of the samples' ids and questions, in order: a dataset rebuilt or edited at the same
    path (other rows, other questions) is another store, not a place to resume."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps([[s.id, s.query] for s in samples]).encode()).hexdigest()


def load_samples(config: ExtractConfig) -> list[Sample]:
    from evspec.data.dataset import load_dataset

    samples = load_dataset(config.dataset, split=config.split, max_samples=config.max_samples,
                           allow_outside_root=config.allow_outside_root)
    if not samples:
        raise InputError(f"no samples{f' in split {config.split!r}' if config.split else ''}", config.dataset)
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise InputError(f"sample id {duplicate!r} appears more than once; a store's rows are keyed by id", config.dataset)
    return samples


def field_shapes(target: VisionLanguageModel, draft: VisionLanguageModel, store_dtype: str, target_visual: bool) -> dict[str, Any]:
    dt, dd = target.language_model.hidden_size, draft.language_model.hidden_size
    shapes: dict[str, Any] = {
        "target_ids": ("int64", ["T"]), "loss_mask": ("bool", ["T"]),
        "target_hidden": (store_dtype, ["T", dt]), "target_low": (store_dtype, ["T", dt]),
        "target_mid": (store_dtype, ["T", dt]), "draft_ids": ("int64", ["Td"]),
        "draft_hidden": (store_dtype, ["Td", dd]), "draft_visual": (store_dtype, ["Nd", dd]),
    }
    if target_visual:
        shapes["target_visual"] = (store_dtype, ["Nt", dt])
    return {k: {"dtype": d, "shape": s} for k, (d, s) in shapes.items()}


def load_pair(config: ExtractConfig, device: torch.device, dtype: torch.dtype,
            models: tuple[VisionLanguageModel, VisionLanguageModel] | None) -> tuple[VisionLanguageModel, VisionLanguageModel]:
    """The (target, draft) pair: loaded by name, or the ones given, checked against the config."""
    from evspec.models.registry import load_model

    if models is None:
        return (load_model(config.target, device=device, dtype=dtype, event_canvas=config.event_canvas),
                load_model(config.draft, device=device, dtype=dtype, event_canvas=config.event_canvas))
    target, draft = models
    if (target.name, draft.name) != (config.target, config.draft):
        raise ConfigError(f"the models given are {target.name} and {draft.name}, the config names {config.target} "
                          f"and {config.draft}", parameters=["models"])
    if target.dtype != dtype or draft.dtype != dtype:
        raise ConfigError(f"the models given compute in {target.dtype} and {draft.dtype}, the config in {dtype}",
                          parameters=["models", "dtype"])
    return target, draft


def extract_store(
    config: ExtractConfig,
    out: str | Path,
    *,
    device: str = "auto",
    rank: int = 0,
    world_size: int = 1,
    force: bool = False,
    reporter: Reporter | None = None,
    command: str | None = None,
    models: tuple[VisionLanguageModel, VisionLanguageModel] | None = None,
) -> ExtractSummary:
    """Extract every sample of the dataset (this rank's share: :func:`~evspec.align.store.sample_ranks`) into ``out``.

    Resumable: samples in finished shards are kept, those of an unfinished shard redone. Under
    several processes (torch.distributed initialised) rank 0 checks the folder first, every rank
    writes its own shards and index part, and rank 0 merges ``index.json`` after a barrier.
    ``models``: the (target, draft) already loaded, as ``config`` names them (else they are loaded here).
    """
    from evspec.models.registry import check_model_name
    from evspec.run.rundir import environment, write_run_config
    from evspec.run.shared import SilentReporter, resolve_device, resolve_dtype

    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}",
                          parameters=["rank", "world_size"])
    reporter = reporter or SilentReporter()
    out = Path(out)
    torch_device = resolve_device(device)
    dtype = resolve_dtype(config.dtype, torch_device)
    store_dtype = STORE_DTYPES[config.store_dtype]
    config = replace(config, dataset=str(Path(config.dataset).resolve()))
    check_model_name(config.target)
    check_model_name(config.draft)
    samples = load_samples(config)
    identity = {**config.identity(dtype), "samples_sha256": samples_fingerprint(samples)}
    barrier = distributed_barrier(world_size)
    if out.exists() and not out.is_dir():
        raise InputError("is a file, not a store folder", out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for problem in claim_store(out, identity, force=force):
            reporter.warn(problem)
    elif not force and out.is_dir():  # every rank refuses a foreign store alike (rank 0 would otherwise wait alone)
        from evspec.run.rundir import check_or_reset

        check_or_reset(out, identity, sorted(identity), False, STORE_OUTPUTS)
    barrier()

    done = {sample_id for part in read_parts(out) for s in part.shards for sample_id in s.sample_ids}
    mine = [i for i, owner in enumerate(sample_ranks(len(samples), world_size)) if owner == rank]
    todo = [i for i in mine if samples[i].id not in done]
    model_load_s = 0.0
    if todo:  # a finished store is only merged again: no models loaded
        reporter.status(f"loading {config.target} and {config.draft}")
        started = time.perf_counter()
        target, draft = load_pair(config, torch_device, dtype, models)
        model_load_s = time.perf_counter() - started
        weights = {"target_weights_sha256": weights_sha256(target.trainable_module),
                   "draft_weights_sha256": weights_sha256(draft.trainable_module)}
        check_store_weights(out, weights)
        layers = resolve_layers(config.layers, n_layers(target))
        bridge = pair_bridge(draft, target)
        full_config = {**asdict(config), "layers": list(layers), "target_layers": n_layers(target),
                       "n_samples": len(samples), "bridge": bridge.kind, "device": str(torch_device),
                       "fields": field_shapes(target, draft, config.store_dtype, config.target_visual), **weights}
        if rank == 0:
            write_run_config(out, identity=identity, config=full_config, device=str(torch_device), command=command)
        writer = RankWriter(out, rank, world_size, identity, full_config, config.shard_rows)
    reporter.start(len(mine), len(mine) - len(todo))
    session_start = time.perf_counter()
    for i in todo:
        reporter.status(f"extracting {samples[i].id}")
        row = extract_sample(target, draft, samples[i], max_new_tokens=config.max_new_tokens, layers=layers,
                             bridge=bridge, store_dtype=store_dtype, device="cpu", target_visual=config.target_visual)
        writer.add(row, i)
        reporter.advance(row)
    if todo:
        writer.flush()
    seconds = time.perf_counter() - session_start
    summary = ExtractSummary(out=str(out), rank=rank, world_size=world_size, extracted=len(todo),
                             already_done=len(mine) - len(todo), seconds=seconds, model_load_s=model_load_s)
    barrier()
    if rank == 0:
        index = merge_index(out, n_samples=len(samples), extra={
            "environment": environment(str(torch_device)), "command": command or shlex.join(sys.argv)})
        store = index["summary"]
        summary.rows, summary.bytes, summary.complete = index["rows"], store["bytes"], index["complete"]
        summary.bytes_per_sample, summary.store_samples_per_second = store["bytes_per_sample"], store["samples_per_second"]
    return summary

