"""The one training loop: every model evspec trains goes through :func:`train`.

A :class:`Task` supplies what is model-specific (its parameters, ``batch -> (loss, counts)``, an
evaluation, the final export); the loop owns the rest:

- the example order: epoch ``e`` visits a permutation seeded by ``(seed, e)``, and step ``s``
  takes the next ``batch_size`` positions of that endless stream, so the order from any step on
  is fixed by the seed alone (a resumed run sees exactly the batches an uninterrupted one saw);
- AdamW with linear warm-up and cosine decay, gradient clipping, bf16 autocast on CUDA;
- ``state.pt`` (weights, optimizer, schedule, step, RNG) every ``checkpoint_every`` steps, written
  atomically: a killed run rerun with the same folder resumes from it and loses at most one
  interval; ``metrics.jsonl`` rows past the checkpoint are dropped on resume, so the file never
  holds a step twice;
- evaluation every ``eval_every`` steps and at the end, ``metrics.jsonl`` and plots;
- data parallelism: under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the process group
  is started from the environment if the caller has not (gloo on the CPU, NCCL on CUDA) and the
  task's loss runs through :class:`~torch.nn.parallel.DistributedDataParallel` (gradients averaged
  across ranks). Each step's global batch (the same ``batch_indices`` as one process) is cut into
  ``world_size`` contiguous slices, rank r taking slice r, so ``batch_size`` must be divisible by the
  world size. A task that names ``loss_weight_key`` (the count its mean loss is a mean over, e.g.
  tokens) gets its per-rank loss rescaled by its share of that count, so the averaged gradient is
  the gradient of the global batch's mean, as in one process; the logged loss and counts are summed
  over ranks. Rank 0 alone evaluates, writes ``state.pt``, ``metrics.jsonl``, plots and the export
  (the other ranks wait for it at their next collective). One process runs the code it ran before.
- ``fsdp=True`` (under torchrun): the same data parallelism, but the task's module is sharded with
  FSDP2's ``fully_shard`` instead of replicated by DDP, so each rank holds 1/N of the weights, the
  gradients and AdamW's state (for a module that would not fit one device). The module's forward
  gathers the weights; around an evaluation every rank gathers them too (``unshard``) while rank 0
  evaluates; ``state.pt`` and the export get full, unsharded tensors (gathered on every rank, written
  by rank 0), so a sharded run resumes under any world size and exports what one process would.

Progress goes to a :class:`TrainProgress` (the CLI's bar); library code prints nothing.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from evspec.errors import ConfigError

STATE_NAME = "state.pt"
METRICS_NAME = "metrics.jsonl"


@dataclass(frozen=True)
class LoopConfig:
    """How to optimise, whatever the task. ``steps`` counts optimizer steps."""

    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 500
    checkpoint_every: int = 200
    log_every: int = 10
    fsdp: bool = False  # under torchrun: shard the module (FSDP2) instead of replicating it (DDP)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or not self.grad_clip > 0:
            raise ConfigError("warmup_steps and weight_decay must be >= 0 and grad_clip > 0")


class Task(Protocol):
    """What the loop needs from a model it trains.

    Optional: ``loss_weight_key`` (a key of ``loss``'s counts: what its mean loss averages over, so
    data-parallel ranks weigh their losses by it) and ``plot(rows, out_dir) -> list[Path]`` (the
    task's own plots of ``metrics.jsonl``'s rows, drawn beside the loop's).
    """

    def module(self) -> nn.Module:
        """Every trained parameter, as one module (put in train/eval mode by the loop)."""

    def n_examples(self) -> int:
        """Size of the training set; batches are lists of indices below it."""

    def loss(self, batch: Sequence[int]) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss of the batch, and counts to log (summed over a logging window)."""

    def evaluate(self, step: int) -> dict[str, Any]:
        """Metrics on held-out data (run without gradients, module in eval mode)."""

    def export(self) -> None:
        """Write the trained model where the task's output goes.

        A task trained with ``fsdp`` takes ``export(weights)``: its module's full state dict (the
        module's own parameters are shards then)."""


class TrainProgress(Protocol):
    def start(self, total: int, done: int) -> None: ...
    def advance(self, step: int, metrics: dict[str, Any]) -> None: ...
    def status(self, text: str) -> None: ...


class SilentProgress:
    def start(self, total: int, done: int) -> None:
        pass

    def advance(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def status(self, text: str) -> None:
        pass


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    steps: int
    resumed_from: int
    final_eval: dict[str, Any]
    seconds: float


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run (rank 0 of 1 for a plain process)."""

    rank: int = 0
    world_size: int = 1
    started_here: bool = False  # the loop started the process group (and so ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_size_from_env() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 outside torchrun)."""
    import os

    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} is not an integer") from None


def check_batch_split(batch_size: int, world_size: int) -> int:
    """The per-rank batch: ``batch_size / world_size``; a ConfigError unless it divides evenly."""
    if batch_size % world_size:
        raise ConfigError(f"batch_size={batch_size} is not divisible by the world size {world_size}: the global batch "
                          f"is kept and split evenly across processes (use a multiple of {world_size})",
                          parameters=["batch_size"])
    return batch_size // world_size


def end_distributed() -> None:
    """Leave the process group. The DDP wrapper sits in reference cycles (its reducer's hooks), so
    only the cyclic collector frees it; left to interpreter exit, that can happen after the group is
    gone, and gloo's threads then abort the process ("terminate called without an active
    exception": seen once in CI, a rank of a finished run). Collect first, then destroy."""
    import gc

    import torch.distributed as dist

    gc.collect()
    dist.destroy_process_group()


def start_distributed(device: torch.device) -> Distributed:
    """Join the torchrun process group (starting it from the environment when nobody has: gloo on
    the CPU, NCCL on CUDA); rank 0 of 1 outside torchrun."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Distributed(dist.get_rank(), dist.get_world_size(), False)
    if world_size_from_env() == 1:
        return Distributed()
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch has no torch.distributed")
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), True)


class _LossModule(nn.Module):
    """The task's loss as a module's forward, so DistributedDataParallel (which syncs gradients of
    the parameters its forward used) wraps any task; the task's module is its only submodule."""

    def __init__(self, task: Task, module: nn.Module) -> None:
        super().__init__()
        self.task = task
        self.inner = module

    def forward(self, batch: Sequence[int]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.task.loss(batch)


def _data_parallel(task: Task, module: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    # unused parameters are allowed: a task's module may hold some its loss never reaches (a vision
    # tower's last layer when features come from the one before)
    return DistributedDataParallel(_LossModule(task, module), device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True)


def _fully_shard(task: Task, module: nn.Module, device: torch.device) -> nn.Module:
    """FSDP2 over the task's loss (the same wrapper DDP gets): the forward, which is the task's
    whole loss, runs on gathered weights; the module's own parameters become this rank's shards."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    return fully_shard(_LossModule(task, module), mesh=mesh)


_PREFIX = "inner."  # the task's module inside _LossModule


def _full_model_state(sharded: nn.Module) -> dict[str, Any]:
    """Every rank calls this (it gathers); rank 0 gets the whole model state dict on the CPU, keyed
    by the task's module's own names, the other ranks an empty one."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {key.removeprefix(_PREFIX): value for key, value in state.items()}


def _grad_norm(norm: torch.Tensor) -> float:
    full = getattr(norm, "full_tensor", None)  # a DTensor under FSDP (every rank calls this)
    return float(full() if full is not None else norm)


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The example indices of optimizer step ``step`` (0-based): positions
    ``[step * batch_size, (step + 1) * batch_size)`` of the stream of seeded epoch permutations."""
    if n < 1:
        raise ConfigError("the training set is empty")
    start = step * batch_size
    out: list[int] = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        take = min(batch_size - len(out), n - offset)
        out.extend(order[offset : offset + take].tolist())
    return out


def learning_rate(config: LoopConfig, step: int) -> float:
    """Linear warm-up to ``lr``, then cosine decay to 10% of it at ``steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _optimizer(module: nn.Module, config: LoopConfig, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW; ``fused`` (plain CUDA parameters): one kernel for all parameters' update instead of a
    few per parameter, which dominate a small model's step on a GPU."""
    # No weight decay on norms, biases and embeddings' 1-D vectors (the usual AdamW split).
    decay = [p for p in module.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), fused=fused or None)


def _rng_state() -> dict[str, Any]:
    """Torch's generators: the only randomness a training step uses (the data order is derived
    from the seed and the step, not drawn)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, step: int,
               sharded: nn.Module | None = None, write: bool = True) -> None:
    """Atomically: a kill during the write leaves the previous state whole. Under FSDP (``sharded``)
    every rank calls it (the whole tensors are gathered, so any world size can resume) and the one
    with ``write`` writes."""
    from evspec.data.events import atomic_path

    if sharded is None:
        model, optim = module.state_dict(), optimizer.state_dict()
    else:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        model = _full_model_state(sharded)
        optim = get_optimizer_state_dict(sharded, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if write:
        with atomic_path(path) as tmp:
            torch.save({"step": step, "model": model, "optimizer": optim, "rng": _rng_state(), "sharded": sharded is not None}, tmp)


def load_state(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, sharded: nn.Module | None = None) -> int:
    """Restore a ``state.pt`` (``weights_only``: tensors and plain containers, no code) -> its step.
    Under FSDP every rank reads the whole state and keeps its shards."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if sharded is None:
            module.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        else:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

            options = StateDictOptions(full_state_dict=True)
            set_model_state_dict(sharded, {_PREFIX + key: value for key, value in state["model"].items()}, options=options)
            set_optimizer_state_dict(sharded, optimizer, state["optimizer"], options=options)
        _set_rng_state(state["rng"])
        return int(state["step"])
    except Exception as error:  # a torn or foreign file: say which, never half-resume
        raise ConfigError(f"{path}: cannot resume from this training state ({type(error).__name__}: {error}); "
                          "use force=True to start over", parameters=["force"]) from error


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line; rows past ``keep_until`` are dropped on open
    (they belong to work the resumed run redoes), and a torn last line with them."""

    def __init__(self, path: Path, keep_until: int) -> None:
        self.path = path
        rows = []
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
                    break
                if not (isinstance(row, dict) and isinstance(row.get("step"), int)):
                    break  # not a row this loop wrote: what follows is not trusted either
                if row["step"] <= keep_until:
                    rows.append(row)
        from evspec.data.events import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        self.rows = rows

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def _autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA (the weights stay fp32, as the optimizer wants them); none on CPU,
    where bf16 matmuls are slow and training must reproduce bit for bit."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def train(task: Task, config: LoopConfig, out_dir: Path, device: torch.device,
          progress: TrainProgress | None = None) -> TrainResult:
    """Train ``task`` (resuming from ``out_dir/state.pt`` if there), evaluate, export. Under
    torchrun, every rank calls this with the same arguments (the module docstring says the rest);
    a plain process is rank 0 of 1, for which every collective below is skipped and the loss is
    the task's own (so one process computes exactly what it computed before data parallelism)."""
    import torch.distributed as dist

    progress = progress or SilentProgress()
    began = time.perf_counter()
    parallel = start_distributed(device)
    several = parallel.world_size > 1
    per_rank = check_batch_split(config.batch_size, parallel.world_size)
    main = parallel.is_main
    if not main:
        progress = SilentProgress()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        module = task.module()
        sharded = _fully_shard(task, module, device) if several and config.fsdp else None
        optimizer = _optimizer(module, config, fused=device.type == "cuda" and sharded is None)  # over the shards, when sharded
        state_path = out_dir / STATE_NAME
        start = load_state(state_path, module, optimizer, sharded) if state_path.is_file() else 0
        if start == 0:
            torch.manual_seed(config.seed)
        log = MetricsLog(out_dir / METRICS_NAME, keep_until=start) if main else None
        n = task.n_examples()
        loss_of = sharded if sharded is not None else _data_parallel(task, module, device) if several else task.loss
        weight_key = getattr(task, "loss_weight_key", None) if several else None
        mine = slice(parallel.rank * per_rank, (parallel.rank + 1) * per_rank)
        progress.start(config.steps, start)
        window: dict[str, float] = {}
        window_start = time.perf_counter()
        final_eval: dict[str, Any] = {}
        for step in range(start, config.steps):
            module.train()
            lr = learning_rate(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with _autocast(device):
                loss, counts = loss_of(batch_indices(n, config.batch_size, config.seed, step)[mine])
            global_loss, scale = _global_loss(loss, counts, weight_key, parallel.world_size, device)
            if not math.isfinite(global_loss):
                raise ConfigError(f"the loss became {global_loss} at step {step + 1}; lower lr", parameters=["lr"])
            optimizer.zero_grad(set_to_none=True)
            (loss * scale if several else loss).backward()
            grad_norm = _grad_norm(nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip))
            optimizer.step()
            window["loss_sum"] = window.get("loss_sum", 0.0) + global_loss
            window["batches"] = window.get("batches", 0.0) + 1
            for key, value in counts.items():
                window[key] = window.get(key, 0.0) + value
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                batches, loss_sum = window.pop("batches"), window.pop("loss_sum")
                if several:  # every rank's counts, summed
                    keys = sorted(window)
                    window = dict(zip(keys, _all_reduce_sum([window[k] for k in keys], device)))
                row = {"step": done, "loss": loss_sum / batches, "lr": lr, "grad_norm": grad_norm,
                       "seconds": time.perf_counter() - window_start, **window}
                if several:
                    row["world_size"] = parallel.world_size
                if log is not None:
                    log.append(row)
                progress.advance(done, row)
                window, window_start = {}, time.perf_counter()
            else:
                progress.advance(done, {"loss": global_loss})
            if done % config.eval_every == 0 or done == config.steps:
                with _gathered(sharded):
                    if main:
                        progress.status(f"evaluating at step {done}")
                        module.eval()
                        with torch.no_grad(), _autocast(device):
                            final_eval = task.evaluate(done)
                        log.append({"step": done, "eval": final_eval})  # type: ignore[union-attr]
            if (main or sharded is not None) and (done % config.checkpoint_every == 0 or done == config.steps):
                save_state(state_path, module, optimizer, done, sharded, write=main)
        module.eval()
        weights = _full_model_state(sharded) if sharded is not None else None
        with _gathered(sharded):
            if main:
                if start >= config.steps:  # everything was done before: evaluate again for the result
                    with torch.no_grad(), _autocast(device):
                        final_eval = task.evaluate(config.steps)
                progress.status("writing the checkpoint")
                if weights is None:
                    task.export()
                else:
                    task.export(weights)  # type: ignore[call-arg]
                _plot(task, log.rows, out_dir)  # type: ignore[union-attr]
        if several:
            dist.barrier()  # every rank returns once rank 0's files are written
        return TrainResult(out_dir, config.steps, start, final_eval, time.perf_counter() - began)
    finally:
        loss_of = sharded = None  # the DDP / FSDP wrapper: unreferenced before end_distributed collects it
        if parallel.started_here:
            end_distributed()


@contextmanager
def _gathered(sharded: nn.Module | None) -> Iterator[None]:
    """Around work rank 0 does with the module outside its forward (evaluation, export): every rank
    gathers the sharded weights (a collective), rank 0 works, all wait, all drop the gathered copy.
    Nothing without FSDP."""
    if sharded is None:
        yield
        return
    import torch.distributed as dist

    sharded.unshard()  # type: ignore[operator]
    try:
        yield
    finally:
        dist.barrier()
        sharded.reshard()  # type: ignore[operator]


def _global_loss(loss: torch.Tensor, counts: dict[str, float], weight_key: str | None, world_size: int,
                 device: torch.device) -> tuple[float, float]:
    """The global batch's loss, and the factor this rank's loss is scaled by before backward.
    DDP averages gradients over ranks: scaled by this rank's share of the weight (its count of
    ``weight_key``, e.g. answer tokens), the average is the gradient of the global batch's weighted
    mean loss. One process: its own loss, unscaled."""
    if world_size == 1:
        return float(loss.detach()), 1.0
    weight = float(counts[weight_key]) if weight_key else 1.0
    total_weight, weighted_loss = _all_reduce_sum([weight, float(loss.detach()) * weight], device)
    if total_weight <= 0:
        return 0.0, 0.0
    return weighted_loss / total_weight, world_size * weight / total_weight


def _plot(task: Task, rows: Sequence[dict[str, Any]], out_dir: Path) -> None:
    plot_metrics(rows, out_dir)
    task_plot = getattr(task, "plot", None)
    if task_plot is not None:
        task_plot(rows, out_dir)


def plot_metrics(rows: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """``loss.png`` (training loss by step) and ``eval.png`` (each eval metric by step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    train_rows = [r for r in rows if "loss" in r]
    if train_rows:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows])
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (answer tokens)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "loss.png", dpi=120)
        plt.close(fig)
        written.append(out_dir / "loss.png")
    evals = [r for r in rows if isinstance(r.get("eval"), dict)]
    series: dict[str, list[tuple[int, float]]] = {}
    for r in evals:
        for key, value in _flat(r["eval"]).items():
            if key.startswith("exact_match"):
                series.setdefault(key, []).append((r["step"], value))
    if series:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key, points in sorted(series.items()):
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
        ax.set_xlabel("step")
        ax.set_ylabel("exact match (held-out)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "eval.png", dpi=120)
        plt.close(fig)
        written.append(out_dir / "eval.png")
    return written


def _flat(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out
