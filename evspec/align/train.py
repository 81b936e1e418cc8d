"""``evspec align train``: one adapter or head (:data:`evspec.align.heads.ADAPTERS`) trained on an
alignment store through the one training loop (:mod:`evspec.training.loop`), as :class:`AlignTask`.

Data. The loop owns the order: step ``s`` takes ``batch_indices(n, batch_size, seed, s)``, a seeded
permutation per epoch, so a resumed run (and every rank of a data-parallel one) sees exactly the
batches an uninterrupted single process sees. A batch's rows are read by index from the
memory-mapped store (:meth:`~evspec.align.store.AlignStore.rows`: grouped by shard, one shard open
at a time), so memory holds one batch of rows, never a shard's worth or the store; the cost is
reopening a shard's header when a batch spans shards (cheap: safetensors maps, it does not read).
The store's streaming epochs (:meth:`~evspec.align.store.AlignStore.stream`) would give up the
loop's exact, index-addressed order (resume, equal data across world sizes) for nothing here.
With ``online`` (``--online``) there is no store: :class:`~evspec.align.online.OnlineRows`
computes the rows a batch asks for with the extraction's own code, the same rows a store holds.

Hold-out. A seeded split of the store's samples (``holdout`` of them, at least one; its own
``holdout_seed``, so runs of different training seeds are judged on the same rows) is never
trained on; each evaluation reports on it the losses, cosine similarity to the target's features,
top-1 agreement with the target's token, and SIMULATED acceptance (:mod:`evspec.align.simulate`)
at gamma 1..``max_gamma``.

The target. A head reuses the target's embedding and LM head: they are taken from the target the
store's index names, loaded through :func:`evspec.models.registry.load_model` (and, for the
TokenAdapter, the draft's LM head from the draft it names), not copied into the run: a head is only
ever used with that target. The run's ``config.json`` records the target's name and a sha256 of
those weights; a later run into the same folder whose target weights differ is refused, and
``--draft adapter:RUN`` over a target whose weights differ warns (the head loads, its acceptance is another's).

The run folder ``OUT``: ``config.json`` (identity: store, its identity and shards, adapter, head
sizes, loop, hold-out), ``state.pt``, ``metrics.jsonl``, ``loss.png``, ``align.png`` and the
trained head in ``OUT/head`` (:func:`~evspec.align.heads.save_head`; what a proposer loads).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from evspec.align.heads import (
    ADAPTERS,
    Head,
    HeadBatch,
    HeadConfig,
    build_adapter,
    collate_rows,
    save_head,
    trainable_parameters,
    weights_sha256,
)
from evspec.align.extract import ExtractConfig
from evspec.align.online import OnlineRows
from evspec.align.simulate import LABEL, SimulatedAcceptance, simulate_batch
from evspec.align.store import AlignStore
from evspec.errors import ConfigError
from evspec.training.loop import LoopConfig, TrainProgress, TrainResult

if TYPE_CHECKING:
    from evspec.models.base import VisionLanguageModel

RowSource = AlignStore | OnlineRows  # where a run's rows come from: a store, or computed as asked
HEAD_FOLDER = "head"
KIND = "evspec-align-train"
RUN_OUTPUTS = ("state.pt", "metrics.jsonl", "loss.png", "eval.png", "align.png")
SIZE_FIELDS = ("bottleneck", "wide_bottleneck", "stacked_blocks", "token_rank", "num_heads", "ffn_size",
               "visual_queries", "rope_theta", "feature_loss_weight", "token_loss_weight")
"""The HeadConfig fields a run may set (the rest are the target's, the draft's and the store's)."""


@dataclass(frozen=True)
class AlignTrainConfig:
    """Everything that decides an alignment training run (its identity for resume)."""

    store: str  # an alignment store's folder ("" when training online)
    adapter: str
    loop: LoopConfig = field(default_factory=LoopConfig)
    head: dict[str, Any] = field(default_factory=dict)  # HeadConfig sizes (SIZE_FIELDS) over its defaults
    holdout: float = 0.1  # fraction of the store's samples held out for evaluation (at least one)
    holdout_seed: int = 0
    max_gamma: int = 8  # simulated acceptance at gamma 1..max_gamma
    eval_rows: int = 256  # most held-out rows per evaluation
    eval_batch_size: int = 16
    online: dict[str, Any] | None = None  # ExtractConfig fields: rows computed in the loop, no store (online.py)

    def __post_init__(self) -> None:
        if self.adapter not in ADAPTERS:
            raise ConfigError(f"adapter {self.adapter!r} is unknown: use one of {', '.join(ADAPTERS)}",
                              parameters=["adapter"])
        unknown = sorted(set(self.head) - set(SIZE_FIELDS))
        if unknown:
            raise ConfigError(f"head sizes {', '.join(unknown)} cannot be set: use {', '.join(SIZE_FIELDS)}",
                              parameters=["head"])
        if not (math.isfinite(self.holdout) and 0 <= self.holdout < 1):
            raise ConfigError(f"holdout must be in [0, 1), got {self.holdout}", parameters=["holdout"])
        for name in ("max_gamma", "eval_rows", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}", parameters=[name])
        if bool(self.store) == (self.online is not None):
            raise ConfigError("give a store or online extraction settings (not both, not neither)",
                              parameters=["store", "online"])
        if self.online is not None:
            ExtractConfig(**self.online)  # its own checks, here rather than after loading anything

    def identity(self) -> dict[str, Any]:
        config = asdict(self)
        if config["online"] is None:  # runs made before --online keep their identity
            del config["online"]
        return json.loads(json.dumps({**config, "kind": KIND}))


# ----------------------------------------------------------------------------- the split


def holdout_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) row indices of a store of ``n`` samples, both sorted: a seeded permutation's
    first ``ceil(fraction * n)`` (at least one when ``fraction`` > 0) are held out."""
    if fraction == 0:
        return list(range(n)), []
    held = max(1, math.ceil(fraction * n))
    if held >= n:
        raise ConfigError(f"the store has {n} sample(s): holding out {held} leaves none to train on "
                          "(use a larger store or holdout=0)", parameters=["holdout"])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[held:]), sorted(order[:held])


# ----------------------------------------------------------------------------- the task


def batch_on(batch: HeadBatch, device: torch.device) -> HeadBatch:
    """On the device, the store's 16-bit features as float32 (the head's weights are float32;
    on CUDA the loop's bf16 autocast picks the matmul precision)."""
    def moved(x: torch.Tensor) -> torch.Tensor:
        return x.to(device, torch.float32) if x.is_floating_point() else x.to(device)

    return replace(batch, **{f.name: moved(getattr(batch, f.name)) for f in fields(batch) if getattr(batch, f.name) is not None})


class AlignTask:
    """:class:`evspec.training.loop.Task` for one head on a store's training rows."""

    loss_weight_key = "positions"  # the head's loss is a mean over counted positions

    def __init__(self, config: AlignTrainConfig, store: RowSource, head: Head, train_rows: list[int],
                 eval_rows: list[int], out: Path, device: torch.device, draft_lm_head: nn.Linear | None = None) -> None:
        self.config = config
        self.store = store
        self.head = head
        self.train_rows = train_rows
        self.eval_rows = eval_rows
        self.out = out
        self.device = device
        self.draft_lm_head = draft_lm_head

    def module(self) -> nn.Module:
        return self.head

    def n_examples(self) -> int:
        return len(self.train_rows)

    def batch(self, rows: Sequence[int]) -> HeadBatch:
        """Store rows -> a padded batch on the device."""
        read = self.store.rows(list(rows))
        return batch_on(collate_rows(read, self.head, draft_lm_head=self.draft_lm_head), self.device)

    def loss(self, batch: Sequence[int]) -> tuple[torch.Tensor, dict[str, float]]:
        head_batch = self.batch([self.train_rows[i] for i in batch])
        return self.head.loss(head_batch, self.head(head_batch))

    def evaluate(self, step: int) -> dict[str, Any]:
        return evaluate_head(self.head, [self.batch(chunk) for chunk in self._eval_chunks()], self.config.max_gamma,
                             rows=len(self.eval_rows[: self.config.eval_rows]))

    def _eval_chunks(self) -> list[list[int]]:
        rows, size = self.eval_rows[: self.config.eval_rows], self.config.eval_batch_size
        return [rows[i : i + size] for i in range(0, len(rows), size)]

    def export(self, weights: dict[str, torch.Tensor] | None = None) -> None:
        save_head(self.head, self.out / HEAD_FOLDER, weights)

    def plot(self, rows: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
        return plot_align(rows, out_dir, self.head.name)


@torch.no_grad()
def evaluate_head(head: Head, batches: Sequence[HeadBatch], max_gamma: int, rows: int) -> dict[str, Any]:
    """Held-out metrics: per counted position, the loss and its two terms, cosine similarity to the
    target's features and top-1 agreement with the target's token; and simulated acceptance."""
    if not batches:
        return {}
    was_training = head.training
    head.eval()
    try:
        sums: dict[str, float] = {}
        simulated = SimulatedAcceptance(max_gamma)
        for batch in batches:
            _, metrics = head.loss(batch, head(batch))
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
            simulated = simulated.merge(simulate_batch(head, batch, max_gamma))
    finally:
        head.train(was_training)
    n = max(sums["positions"], 1.0)
    feature, token = sums["feature_loss_sum"] / n, sums["token_loss_sum"] / n
    config = head.config
    loss = config.feature_loss_weight * feature + config.token_loss_weight * token if head.regresses_features else token
    return {"rows": rows, "positions": int(sums["positions"]), "loss": loss, "feature_loss": feature,
            "token_loss_kl": token, "cosine": sums["cosine_sum"] / n, "top1_agree": sums["top1_agree"] / n,
            "simulated": simulated.as_dict()}


# ----------------------------------------------------------------------------- plots


def plot_align(rows: Sequence[dict[str, Any]], out_dir: Path, adapter: str) -> list[Path]:
    """``align.png``: training and held-out loss; held-out cosine and top-1 agreement; simulated
    acceptance rate and mean acceptance length against gamma (first and last evaluation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [r for r in rows if isinstance(r.get("eval"), dict) and r["eval"]]
    train = [r for r in rows if "loss" in r]
    if not evals and not train:
        return []
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    ax = axes[0][0]
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="training")
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval"]["loss"] for r in evals], marker="o", label="held-out")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title=f"{adapter}: loss")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    for key, label in (("cosine", "cosine to the target's feature"), ("top1_agree", "top-1 agreement with the target")):
        ax.plot([r["step"] for r in evals], [r["eval"][key] for r in evals], marker="o", label=label)
    ax.set(xlabel="step", ylim=(-0.05, 1.05), title="held-out")
    ax.legend(fontsize=8)
    for ax, key, ylabel in ((axes[1][0], "acceptance_rate", "acceptance rate"),
                            (axes[1][1], "mean_acceptance_length", "mean acceptance length (+1 bonus)")):
        for r in ([evals[0], evals[-1]] if len(evals) > 1 else evals):
            values = r["eval"]["simulated"][key]
            gammas = sorted(values, key=int)
            ax.plot([int(g) for g in gammas], [values[g] for g in gammas], marker="o", label=f"step {r['step']}")
        ax.set(xlabel="gamma (drafts per round)", ylabel=ylabel, title="SIMULATED (offline), held-out")
        ax.legend(fontsize=8)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle(LABEL, fontsize=8)
    fig.tight_layout()
    path = out_dir / "align.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


# ----------------------------------------------------------------------------- setup


def head_config(config: AlignTrainConfig, store: RowSource, target_embedding: nn.Embedding, target_lm_head: nn.Linear,
                draft_lm_head: nn.Linear | None) -> HeadConfig:
    """The head's sizes: the target's width and vocabulary, the draft's and the visual features'
    widths from the store's fields, the rest from ``config.head`` over HeadConfig's defaults."""
    cls = ADAPTERS[config.adapter]
    hidden = int(target_lm_head.in_features)
    stored = store.field_width("target_hidden")
    if stored != hidden:
        raise ConfigError(f"{store.path}: its target features are {stored} wide but {store.identity.get('target')} "
                          f"is {hidden} wide now: the store was made by another target", parameters=["store"])
    sizes: dict[str, Any] = {"hidden_size": hidden, "vocab_size": int(target_lm_head.out_features)}
    if {"draft_hidden", "draft_logits"} & cls.reads:
        sizes["draft_hidden_size"] = store.field_width("draft_hidden") or 0
    if draft_lm_head is not None:
        sizes["draft_vocab_size"] = int(draft_lm_head.out_features)
    if cls.visual_field is not None:
        width = store.field_width(cls.visual_field)
        if width is None:
            raise ConfigError(f"{store.path} holds no {cls.visual_field}, which {config.adapter} is conditioned on "
                              "(extract the store with it)", parameters=["store", "adapter"])
        sizes["visual_size"] = width
    return HeadConfig(**sizes, **config.head)


def check_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out {out} is a file, not a folder", parameters=["out"])
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise ConfigError(f"{out} is not empty and holds no alignment training run; choose another out",
                          parameters=["out"])


def _start_over(out: Path) -> None:
    for name in (*RUN_OUTPUTS, "config.json"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / HEAD_FOLDER, ignore_errors=True)


def claim_run(out: Path, identity: dict[str, Any], force: bool) -> None:
    """Refuse a folder holding a run of another config (or anything else), unless ``force`` starts over."""
    from evspec.run.rundir import check_or_reset

    check_folder(out)
    try:
        check_or_reset(out, identity, sorted(identity), False, ())
    except ConfigError:
        if not force:
            raise
        _start_over(out)


def require_store_weights(store: RowSource, role: str, model: VisionLanguageModel, *,
                          loaded_sha256: str | None = None) -> None:
    """A :class:`ConfigError` if the store's rows were extracted with other weights of its target or
    draft than ``model`` (loaded here in float32; compared at the extraction's compute dtype): a head
    would learn the states of one model and draft through the embedding and LM head of another.
    ``loaded_sha256``: the model's ``weights_sha256`` as loaded, when the caller has it (a float32
    store compares it as it is: hashing 7B weights twice costs tens of seconds)."""
    recorded = store.config.get(f"{role}_weights_sha256") if isinstance(store, AlignStore) else None
    if recorded is None:  # a store from before weights were recorded, or rows computed online now
        return
    compute_dtype = getattr(torch, str(store.identity.get("dtype", "float32")))
    if loaded_sha256 is not None and compute_dtype == torch.float32:
        at_compute_dtype = loaded_sha256
    else:
        at_compute_dtype = weights_sha256(model.trainable_module, rounded_to=compute_dtype)
    if at_compute_dtype != recorded:
        raise ConfigError(f"{store.path} was extracted with other weights of {store.identity.get(role)} than those loaded "
                          f"now ({role}_weights_sha256 differs: rebuilt since?); extract it again",
                          parameters=["store"])


def prepare_align_task(config: AlignTrainConfig, out: Path, device: torch.device) -> tuple[AlignTask, dict[str, Any]]:
    """The store, its split, the target's embedding and LM head (and the draft's LM head for the
    TokenAdapter), a freshly initialised head (seeded by ``config.loop.seed``) -> (task, run identity)."""
    from evspec.models.registry import load_model

    store: RowSource = AlignStore(config.store) if config.online is None else OnlineRows(ExtractConfig(**config.online), device)
    train_rows, eval_rows = holdout_split(len(store), config.holdout, config.holdout_seed)
    target = load_model(str(store.identity["target"]), device=device, dtype="float32")
    require_store_weights(store, "target", target)
    embedding, lm_head = target.language_model.embed_tokens, target.language_model.lm_head
    draft_lm_head, draft_weights = None, {}
    if ADAPTERS[config.adapter].reads_draft_model():
        # which draft weights made the store's draft states and event features: a head over a
        # rebuilt draft is told so when it loads (AdapterProposer.from_folder)
        draft = load_model(str(store.identity["draft"]), device=device, dtype="float32")
        draft_sha256 = weights_sha256(draft.trainable_module)
        require_store_weights(store, "draft", draft, loaded_sha256=draft_sha256)
        draft_weights = {"draft_weights_sha256": draft_sha256}
        if "draft_logits" in ADAPTERS[config.adapter].reads:
            draft_lm_head = draft.language_model.lm_head
    sizes = head_config(config, store, embedding, lm_head, draft_lm_head)
    identity = {**config.identity(), "store_identity": store.identity,
                "store_shards_sha256": store.fingerprint,
                "target": store.identity.get("target"),
                "target_weights_sha256": weights_sha256(embedding, lm_head, draft_lm_head), **draft_weights,
                "head_config": asdict(sizes)}
    torch.manual_seed(config.loop.seed)  # the head's initial weights
    head = build_adapter(config.adapter, sizes, embedding, lm_head).to(device)
    return AlignTask(config, store, head, train_rows, eval_rows, out, device, draft_lm_head), identity


def _barrier(world_size: int) -> Any:
    if world_size == 1:
        return lambda: None
    import torch.distributed as dist

    return dist.barrier


def run_align_training(config: AlignTrainConfig, out: str | Path, *, device: str = "auto", force: bool = False,
                       progress: TrainProgress | None = None, command: str | None = None) -> TrainResult:
    """Train ``config.adapter`` on ``config.store`` into ``out`` (resuming a run of the same config).
    Under torchrun every rank calls this; rank 0 claims the folder and writes the files."""
    import evspec.training.loop as loop
    from evspec.run.rundir import write_run_config
    from evspec.run.shared import resolve_device

    out = Path(out)
    dev = resolve_device(device)
    loop.check_batch_split(config.loop.batch_size, loop.world_size_from_env())
    if config.store:
        config = replace(config, store=str(Path(config.store).resolve()))
    check_folder(out)
    parallel = loop.start_distributed(dev)
    try:
        if parallel.world_size > 1 and dev.type == "cuda" and dev.index is None:
            import os

            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        task, identity = prepare_align_task(config, out, dev)
        barrier = _barrier(parallel.world_size)
        if not force:  # every rank refuses a foreign folder alike, before anything is written
            claim_run(out, identity, False)
        barrier()
        if parallel.is_main:
            claim_run(out, identity, force)
            out.mkdir(parents=True, exist_ok=True)
            write_run_config(out, identity=identity, device=str(dev), command=command,
                             config={**identity, "train_rows": len(task.train_rows), "eval_rows": len(task.eval_rows),
                                     "trainable_parameters": trainable_parameters(task.head),
                                     "world_size": parallel.world_size})
        barrier()  # the folder is claimed (and config.json written) before any rank reads state.pt
        return loop.train(task, config.loop, out, dev, progress)
    finally:
        if parallel.started_here:
            loop.end_distributed()
