"""One ``evspec train`` run: its folder, identity and resume, the memory check, then the loop.

``OUT`` ends up as a checkpoint folder of the family; ``OUT/training/`` holds the run:
``config.json`` (identity: the :class:`VLMTrainConfig`; plus environment and command line),
``state.pt``, ``metrics.jsonl``, ``loss.png``, ``eval.png`` and the untrained ``init/`` checkpoint.
Rerun with the same config, it resumes; with another config it is refused unless ``force``, which
starts over. Under ``torchrun`` every rank calls :func:`run_training`: rank 0 claims the folder and
builds the initial checkpoint, then every rank trains (the loop's data parallelism). A folder that
holds something else (a checkpoint not made here, a file) is refused.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from evspec.errors import ConfigError
from evspec.run.rundir import check_or_reset, write_run_config
from evspec.training.loop import (
    TrainProgress,
    TrainResult,
    check_batch_split,
    end_distributed,
    start_distributed,
    train,
    world_size_from_env,
)
from evspec.training.vlm import RUN_FOLDER, VLMTrainConfig, ensure_init_checkpoint, init_source, prepare_task

IDENTITY_FIELDS = ("family", "dataset", "size", "loop", "eval_questions", "max_new_tokens", "event_canvas",
                   "init_seed", "init_from", "save_dtype", "mirror", "reverse", "pixel_cache_dtype", "colour_context")


def _check_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out {out} is a file, not a folder", parameters=["out"])
    if out.is_dir() and any(out.iterdir()) and not (out / RUN_FOLDER).is_dir():
        raise ConfigError(f"{out} is not empty and holds no evspec training run; choose another out",
                          parameters=["out"])


def _start_over(out: Path) -> None:
    shutil.rmtree(out / RUN_FOLDER, ignore_errors=True)
    for child in out.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def estimated_bytes(n_params: int, pixel_bytes: int) -> int:
    """Weights, gradients and AdamW's two moments in fp32, plus the clips' pixels as cached; the
    activations of a small model's batch are comfortably inside a 2x margin on top."""
    return 2 * (16 * n_params + pixel_bytes)


def check_memory(config: VLMTrainConfig, device: torch.device, n_clips: int) -> None:
    """Refuse a size the device cannot hold, before building anything, with the estimate."""
    from evspec.memory import format_bytes, require_memory
    from evspec.models.tiny import model_size
    from evspec.training.vlm import DTYPES

    size = model_size(config.size)
    llama, clip = size.llama, size.clip
    d, f, layers = llama["hidden_size"], llama["intermediate_size"], llama["num_hidden_layers"]
    n_params = layers * (4 * d * d + 3 * d * f) + 2 * 1024 * d
    frames = {"videollava": 8, "eventgpt": 5, "llava": 1}[config.family]
    n_pixels = n_clips * frames * 3 * clip["image_size"] ** 2
    need = estimated_bytes(n_params, n_pixels * DTYPES[config.pixel_cache_dtype].itemsize)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if need > free:
            raise ConfigError(f"training {config.family} at size {config.size} on {n_clips} clips needs about "
                              f"{format_bytes(need)}; {device} has {format_bytes(free)} free")
    else:
        require_memory(need, f"training {config.family} at size {config.size} on {n_clips} clips")


def run_training(config: VLMTrainConfig, out: str | Path, *, device: str = "cpu", workers: int = 1,
                 force: bool = False, progress: TrainProgress | None = None, command: str | None = None) -> TrainResult:
    from evspec.data.dataset import load_dataset
    from evspec.models.loading import resolve_device

    out = Path(out)
    dev = resolve_device(device)
    check_batch_split(config.loop.batch_size, world_size_from_env())
    _check_folder(out)
    init_source(config)  # a bad init_from is refused before anything is written
    parallel = start_distributed(dev)  # under torchrun: rank 0 claims the folder, every rank trains
    try:
        if parallel.world_size > 1 and dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        run_dir = out / RUN_FOLDER
        identity = config.identity()
        try:
            check_or_reset(run_dir, identity, IDENTITY_FIELDS, False, ())
        except ConfigError:
            if not force:
                raise  # on every rank alike
            if parallel.is_main:
                _start_over(out)  # another config: its weights go too, not only the run's own files
        n_clips = len(load_dataset(config.dataset, allow_outside_root=config.allow_outside_root))
        check_memory(config, dev, n_clips)
        barrier = _barrier(parallel.world_size)
        barrier()
        if parallel.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            for stale in (*out.glob(".export-*"), *run_dir.glob(".init-*")):  # a killed run's half-made folders
                shutil.rmtree(stale, ignore_errors=True)
            write_run_config(run_dir, identity=identity, config=identity, device=str(dev), command=command)
            ensure_init_checkpoint(config, out)
        barrier()
        report: Callable[[str, int, int], None] | None = getattr(progress, "stage", None) if parallel.is_main else None
        task = prepare_task(config, out, dev, workers=workers, progress=report)
        return train(task, config.loop, run_dir, dev, progress)
    finally:
        if parallel.started_here:
            end_distributed()


def _barrier(world_size: int) -> Callable[[], None]:
    if world_size == 1:
        return lambda: None
    import torch.distributed as dist

    return dist.barrier
