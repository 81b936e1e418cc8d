"""Build a synthetic event + video clip dataset in the seeds' layout, deterministically from a seed.

Per clip ``i`` (sequence ``{prefix}_{i:04d}``, clip ``000000``):

    scene -> frames -> mp4/{seq}.mp4 -> ESIM events -> event_npy/{seq}/000000.npy
          -> event_image/{seq}/000000_{k}.png -> question + answers -> clips/{seq}.json

Every file is written to a temporary name and renamed into place, and the per-clip row
``clips/{seq}.json`` is written LAST: a clip is done exactly when its row exists and every file
the row names exists. A rerun on the same folder skips done clips and redoes the rest, so a
killed build loses nothing finished. ``synth_config.json`` pins the config: a rerun with another
config is refused. ``dataset.json`` is rebuilt from the rows at the end.

The event simulator sees the scene rendered ``esim_upsample`` times faster than the video's frame
rate (and up to the end of the clip), which gives events finer timestamps than 20 fps frames
would; the MP4 gets every ``esim_upsample``-th of those frames.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from evspec.data.dataset import ClipRecord, save_dataset_json
from evspec.data.events import EventStream, atomic_path, write_eventgpt_npy
from evspec.data.render import render_eventgpt_frames, save_png
from evspec.data.synth.esim import EsimConfig, simulate_events
from evspec.data.synth.questions import QUESTION_TYPES, all_qa, make_qa
from evspec.data.synth.scenes import SHAPES, SceneSpec, render_at, sample_scene
from evspec.data.video import write_mp4
from evspec.errors import ConfigError
from evspec.memory import require_memory

CONFIG_NAME = "synth_config.json"
CLIP_NAME = "000000"
STEPS = ("frames", "mp4", "esim", "npy", "images", "qa")

StepTimer = Callable[[str], AbstractContextManager[Any]]


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' -> (640, 480): a frame or sensor size as the command line writes it."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"size must look like WIDTHxHEIGHT (e.g. 640x480), got {text!r}") from None
    return width, height


class SynthConfig(BaseModel):
    """Everything that decides the dataset's content; stored as ``synth_config.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # inf seconds never ends

    clips: int = Field(100, ge=1)
    seed: int = 0
    size: tuple[int, int] = (640, 480)
    fps: int = Field(20, ge=1)
    duration_s: float = Field(1.0, gt=0)
    esim_upsample: int = Field(2, ge=1)
    contrast_threshold: float = Field(0.2, gt=0)
    threshold_sigma: float = Field(0.02, ge=0)
    refractory_us: float = Field(0.0, ge=0)
    shot_noise_hz: float = Field(0.0, ge=0)
    test_fraction: float = Field(0.2, ge=0, le=1)
    n_event_images: int = Field(5, ge=1)
    min_objects: int = Field(1, ge=1)
    max_objects: int = Field(3, ge=1, le=len(SHAPES))
    still_probability: float = Field(0.25, ge=0, le=1)
    pan_probability: float = Field(0.2, ge=0, le=1)
    question_types: tuple[str, ...] = QUESTION_TYPES
    crf: int = Field(23, ge=0, le=51)
    seq_prefix: str = "synth"

    @field_validator("size")
    @classmethod
    def _even(cls, size: tuple[int, int]) -> tuple[int, int]:
        if size[0] < 16 or size[1] < 16 or size[0] % 2 or size[1] % 2:
            raise ValueError(f"width and height must be even and >= 16 (H.264 yuv420p), got {size}")
        return size

    @field_validator("question_types")
    @classmethod
    def _known(cls, types: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(types) - set(QUESTION_TYPES)
        if not types or unknown:
            raise ValueError(f"question types must be a non-empty subset of {QUESTION_TYPES}")
        return types

    @model_validator(mode="after")
    def _object_range(self) -> SynthConfig:
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects {self.min_objects} > max_objects {self.max_objects}")
        return self

    @model_validator(mode="after")
    def _clip_fits_in_memory(self) -> SynthConfig:
        # A clip's frames are held at once (RGB and ESIM's upsampled float intensities: about 12
        # bytes a pixel a frame, measured 110 MB for 640x480 x 40); --size 65536x65536 is refused here.
        frames = int(self.fps * self.duration_s * self.esim_upsample) + 1
        width, height = self.size
        require_memory(frames * width * height * 12, f"one {width}x{height} clip of {frames} simulated frames")
        return self

    def esim_config(self, index: int) -> EsimConfig:
        seed = int(np.random.SeedSequence([self.seed, index, 1]).generate_state(1)[0])
        return EsimConfig(c_pos=self.contrast_threshold, c_neg=self.contrast_threshold,
                          sigma=self.threshold_sigma, refractory_us=self.refractory_us,
                          shot_noise_hz=self.shot_noise_hz, seed=seed)


@dataclass(frozen=True)
class BuildSummary:
    out_dir: Path
    clips: int
    built: int
    skipped: int
    n_events: int  # over all clips, built or skipped
    seconds: float
    dataset_json: Path


@dataclass(frozen=True)
class ClipPaths:
    """Paths of one clip, relative to the dataset root."""

    seq: str
    event_data: str
    event_image: tuple[str, ...]
    video_data: str
    row: str

    @property
    def id(self) -> str:
        return f"{self.seq}_{CLIP_NAME}"

    @property
    def files(self) -> tuple[str, ...]:
        return (self.video_data, self.event_data, *self.event_image)


def clip_paths(config: SynthConfig, index: int) -> ClipPaths:
    seq = f"{config.seq_prefix}_{index:0{max(4, len(str(config.clips - 1)))}d}"
    return ClipPaths(
        seq=seq,
        event_data=f"event_npy/{seq}/{CLIP_NAME}.npy",
        event_image=tuple(f"event_image/{seq}/{CLIP_NAME}_{k}.png"
                          for k in range(config.n_event_images)),
        video_data=f"mp4/{seq}.mp4",
        row=f"clips/{seq}.json",
    )


def held_out_indices(config: SynthConfig) -> set[int]:
    """Which clips form the test split: a seeded choice of round(test_fraction * clips)."""
    n_test = round(config.test_fraction * config.clips)
    perm = np.random.default_rng([config.seed, 2**32 - 1]).permutation(config.clips)
    return {int(i) for i in perm[:n_test]}


def clip_scene(config: SynthConfig, index: int) -> SceneSpec:
    rng = np.random.default_rng([config.seed, index, 0])
    return sample_scene(rng, config.size, config.duration_s,
                        n_objects=(config.min_objects, config.max_objects),
                        still_probability=config.still_probability,
                        pan_probability=config.pan_probability)


def clip_frames(config: SynthConfig, scene: SceneSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(video frames, simulator frames, simulator times in us). Simulator frames run from 0 to the
    end of the clip at ``fps * esim_upsample``; the video takes every ``esim_upsample``-th."""
    n_video = max(1, round(config.fps * config.duration_s))
    rate = config.fps * config.esim_upsample
    ticks = np.arange(n_video * config.esim_upsample + 1)
    sim = render_at(scene, ticks / rate, config.size)
    return sim[:-1:config.esim_upsample], sim, np.rint(ticks * (1e6 / rate)).astype(np.int64)


def _scene_dict(config: SynthConfig, scene: SceneSpec, stream: EventStream, qtype: str) -> dict:
    return {
        **scene.to_dict(),
        "fps": config.fps,
        "duration_s": config.duration_s,
        "sensor_size": list(config.size),
        "n_events": len(stream),
        "question_type": qtype,
        "qa": all_qa(scene),
    }


def build_clip(out_dir: str | Path, config: SynthConfig, index: int, split: str,
               step: StepTimer = lambda name: nullcontext()) -> ClipRecord:
    """Make every file of clip ``index`` and write its row last. ``step(name)`` wraps each stage
    (names in STEPS), so a benchmark can time the real pipeline from outside."""
    out = Path(out_dir)
    paths = clip_paths(config, index)
    for rel in (*paths.files, paths.row):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
    with step("frames"):
        scene = clip_scene(config, index)
        video, sim, sim_t = clip_frames(config, scene)
    with step("mp4"):
        write_mp4(video, out / paths.video_data, fps=config.fps, crf=config.crf)
    with step("esim"):
        stream = simulate_events(sim, times_us=sim_t, config=config.esim_config(index))
    with step("npy"):
        write_eventgpt_npy(stream, out / paths.event_data)
    with step("images"):
        # Upstream EventGPT's rendering (its chunking, each chunk on its own canvas): the images are
        # the dataset's EventGPT input, so they show what a checkpoint trained by upstream's code is
        # fed, and equal what EventGPT.load renders from the .npy with the default canvas.
        images = render_eventgpt_frames(stream, config.n_event_images, size="chunk", remainder="last")
        for image, rel in zip(images, paths.event_image):
            save_png(image, out / rel)
    with step("qa"):
        qtype = config.question_types[index % len(config.question_types)]
        qa = make_qa(scene, qtype)
        record = ClipRecord(
            id=paths.id, split=split, query=qa.question, answer=qa.answer,
            event_data=paths.event_data, event_image=list(paths.event_image),
            video_data=paths.video_data, scene=_scene_dict(config, scene, stream, qtype),
            event_visible_answer=qa.event_visible_answer, question_type=qtype,
        )
        _write_json(out / paths.row, record.model_dump(mode="json", exclude_none=True))
    return record


def _write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def finished_record(out_dir: Path, config: SynthConfig, index: int) -> ClipRecord | None:
    """The clip's row if the clip is complete (row present and parseable, every file present and
    non-empty), else None."""
    paths = clip_paths(config, index)
    try:
        record = ClipRecord.model_validate_json((out_dir / paths.row).read_text(encoding="utf-8"))
    except (OSError, ValueError, ValidationError):
        return None
    for rel in paths.files:
        f = out_dir / rel
        if not f.is_file() or f.stat().st_size == 0:
            return None
    return record


def _pin_config(out: Path, config: SynthConfig) -> None:
    """Write synth_config.json, or refuse if the folder holds another config or other data."""
    path = out / CONFIG_NAME
    if path.exists():
        try:
            old = SynthConfig.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, ValidationError) as exc:
            raise ConfigError(f"{path}: unreadable synth config ({exc}); use a new output folder") from exc
        if old != config:
            diff = ", ".join(f"{k}: {getattr(old, k)!r} -> {getattr(config, k)!r}"
                             for k in type(config).model_fields if getattr(old, k) != getattr(config, k))
            raise ConfigError(f"{out} was built with another config ({diff}); use a new output "
                              "folder or the same config to resume")
        return
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty and holds no {CONFIG_NAME}; refusing to mix a "
                          "synthetic dataset into it")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(path, config.model_dump(mode="json"))


_ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextmanager
def _children_single_threaded() -> Iterator[None]:
    """Spawned workers inherit the environment at start: one thread each, or NumPy's and
    PyAV's thread pools oversubscribe the cores."""
    saved = {k: os.environ.get(k) for k in _ONE_THREAD}
    os.environ.update(_ONE_THREAD)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _build_indexed(job: tuple[str, SynthConfig, int, str]) -> tuple[int, ClipRecord]:
    out, config, index, split = job
    return index, build_clip(out, config, index, split)


def build_dataset(out_dir: str | Path, config: SynthConfig,
                  progress: Callable[[int, int], None] | None = None, workers: int = 1) -> BuildSummary:
    """Build (or resume) the dataset under ``out_dir``; see the module docstring. ``workers`` > 1
    builds clips in that many processes: each clip depends only on (seed, index), so the dataset
    is the same whatever the number."""
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    start = time.perf_counter()
    out = Path(out_dir)
    _pin_config(out, config)
    test = held_out_indices(config)
    records: dict[int, ClipRecord] = {}
    pending = []
    for index in range(config.clips):
        record = finished_record(out, config, index)
        if record is None:
            pending.append((str(out), config, index, "test" if index in test else "train"))
        else:
            records[index] = record
    if progress is not None and records:
        progress(len(records), config.clips)  # clips a previous run finished
    if workers == 1:
        finished = map(_build_indexed, pending)
        for index, record in finished:
            records[index] = record
            if progress is not None:
                progress(len(records), config.clips)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with _children_single_threaded(), ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for index, record in pool.map(_build_indexed, pending, chunksize=4):
                records[index] = record
                if progress is not None:
                    progress(len(records), config.clips)
    ordered = [records[i] for i in range(config.clips)]
    dataset_json = out / "dataset.json"
    save_dataset_json(ordered, dataset_json)
    n_events = sum(int((r.scene or {}).get("n_events", 0)) for r in ordered)
    return BuildSummary(out, config.clips, len(pending), config.clips - len(pending), n_events,
                        time.perf_counter() - start, dataset_json)
