"""`evspec data ...`: synthesise, render, inspect and check event + video data."""

from __future__ import annotations

from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from evspec.cli import err_console
from evspec.cli.output import print_json, print_line, print_table
from evspec.errors import ConfigError, InputError

app = typer.Typer(help="Synthesise, render, inspect and check event + video data.", no_args_is_help=True,
                  rich_markup_mode=None)  # plain help, as the main app's (evspec/cli/__init__.py)
console = Console(highlight=False)


class RenderStyle(str, Enum):
    eventgpt = "eventgpt"
    histogram = "histogram"
    voxel = "voxel"


def synth_config(**options: object):
    """A SynthConfig from CLI options, with pydantic's complaints turned into one line."""
    from evspec.data.synth.builder import SynthConfig

    try:
        return SynthConfig(**options)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "config"
        raise ConfigError(f"invalid synth option {field}: {first['msg']}") from None


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Dataset folder to write (resumed if it exists)."),
    clips: int = typer.Option(100, "--clips", help="Number of clips."),  # no -n: elsewhere -n is --max-samples
    seed: int = typer.Option(0, help="Seed: the same seed gives the same dataset."),
    size: str = typer.Option("640x480", help="Frame and sensor size WIDTHxHEIGHT (even numbers)."),
    fps: int = typer.Option(20, help="Video frame rate."),
    duration: float = typer.Option(1.0, help="Clip length in seconds."),
    contrast_threshold: float = typer.Option(0.2, help="ESIM contrast threshold C (log intensity)."),
    threshold_sigma: float = typer.Option(0.02, help="Per-pixel threshold noise (std of C)."),
    refractory_us: float = typer.Option(0.0, help="Refractory period per pixel, microseconds."),
    shot_noise_hz: float = typer.Option(0.0, help="Shot-noise events per pixel per second."),
    pan_probability: float = typer.Option(0.2, help="Probability of a slow camera pan per clip."),
    test_fraction: float = typer.Option(0.2, help="Share of clips in the test split."),
    workers: int = typer.Option(1, "--workers", help="Processes building clips (the dataset is the same for any number)."),
) -> None:
    """Build a synthetic paired event + video dataset with questions and ground-truth answers."""
    from evspec.data.synth.builder import build_dataset, parse_size

    config = synth_config(
        clips=clips, seed=seed, size=parse_size(size), fps=fps, duration_s=duration,
        contrast_threshold=contrast_threshold, threshold_sigma=threshold_sigma, refractory_us=refractory_us,
        shot_noise_hz=shot_noise_hz, pan_probability=pan_probability, test_fraction=test_fraction,
    )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is an existing file; give a folder for the dataset")
    out.mkdir(parents=True, exist_ok=True)
    with _progress() as progress:
        task = progress.add_task("synthesising clips", total=clips)
        summary = build_dataset(out, config, progress=lambda done, total: progress.update(task, completed=done),
                                workers=workers)
    console.print(
        f"[green]wrote[/] {escape(str(summary.dataset_json))}: {summary.clips} clips ({summary.built} built, "
        f"{summary.skipped} already done), {summary.n_events:,} events, {summary.seconds:.1f} s"
    )
    _print_dataset_summary(out)


@app.command()
def render(
    events: Path = typer.Argument(
        ..., help="Events file: EventGPT .npy, structured .npy/.npz, DSEC events.h5, or a camera's .aedat4/.raw/.dat.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the PNGs (or .npy for voxel grids)."),
    frames: int = typer.Option(5, "--frames", "-f", help="Frames (eventgpt, histogram) or time bins (voxel)."),
    style: RenderStyle = typer.Option(RenderStyle.eventgpt, help="eventgpt | histogram | voxel."),
    t0: int | None = typer.Option(None, "--t0", help="Window start, microseconds (.h5 files)."),
    t1: int | None = typer.Option(None, "--t1", help="Window end, microseconds (.h5 files)."),
    sensor: str | None = typer.Option(None, help="Sensor size WIDTHxHEIGHT (default: from the file or 640x480)."),
    event_canvas: str = typer.Option(
        "upstream", "--event-canvas",
        help="eventgpt: upstream (each chunk on its own canvas, as EventGPT is fed) or sensor (the sensor's size).",
    ),
    data_size: bool = typer.Option(
        False, help="eventgpt: one canvas for all frames, the whole stream's (y.max()+1, x.max()+1) (overrides --event-canvas).",
    ),
) -> None:
    """Render an event stream as EventGPT frames, count histograms or a voxel grid."""
    from evspec.data.events import read_events
    from evspec.data.render import (
        EVENT_CANVASES,
        check_event_canvas,
        histogram_to_image,
        render_eventgpt_frames,
        render_histogram,
        render_voxel_grid,
        save_png,
        voxel_to_image,
    )
    from evspec.data.synth.builder import parse_size

    if frames < 1:
        raise ConfigError(f"--frames must be >= 1, got {frames}")
    size = "data" if data_size else EVENT_CANVASES[check_event_canvas(event_canvas)]
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is an existing file; give a folder for the rendered files")
    stream = read_events(events, t0_us=t0, t1_us=t1, sensor_size=parse_size(sensor) if sensor else None)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if style is RenderStyle.eventgpt:
        for i, image in enumerate(render_eventgpt_frames(stream, frames, size=size)):
            written.append(out / f"frame_{i}.png")
            save_png(image, written[-1])
    elif style is RenderStyle.histogram:
        if frames > len(stream):
            raise InputError(f"cannot split {len(stream)} events into {frames} histograms", events)
        for i, chunk in enumerate(stream.split_count(frames)):
            written.append(out / f"histogram_{i}.png")
            save_png(histogram_to_image(render_histogram(chunk)), written[-1])
    else:
        voxel = render_voxel_grid(stream, frames)
        written.append(out / "voxel.npy")
        np.save(written[-1], voxel)
        written.append(out / "voxel.png")
        save_png(voxel_to_image(voxel), written[-1])
    console.print(f"[green]rendered[/] {len(stream):,} events ({style.value}) -> {len(written)} files in {escape(str(out))}")


@app.command()
def inspect(
    path: Path = typer.Argument(..., help="A dataset folder or JSON, an events file, or an MP4."),
    allow_outside_root: bool = typer.Option(
        False, "--allow-outside-root", help="Datasets: let rows name files outside the dataset folder."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document instead of a table."),
) -> None:
    """Summarise a dataset, an events file (.npy/.npz/.h5, camera .aedat4/.raw/.dat) or a video."""
    if not path.exists():
        raise InputError("no such file or folder", path)
    suffix = path.suffix.lower()
    if path.is_dir() or suffix == ".json":
        kind, summary = "dataset", _dataset_summary(path, allow_outside_root=allow_outside_root)
    elif suffix in {".npy", ".npz", ".h5", ".hdf5", ".aedat4", ".raw", ".dat"}:
        kind, summary = "events", _events_summary(path)
    elif suffix in {".mp4", ".mkv", ".avi", ".mov", ".webm"}:
        kind, summary = "video", _video_summary(path)
    else:
        raise InputError("unknown kind of file (expected a dataset, .npy/.npz/.h5/.aedat4/.raw/.dat events or a video)", path)
    if json_output:
        print_json({"kind": kind, "path": str(path), **summary})
    else:
        _print_summary(f"{kind} {path}", summary)


@app.command()
def check(
    dataset: Path = typer.Argument(..., help="Dataset folder (or its JSON file)."),
    split: str | None = typer.Option(None, help="Only this split (it must exist)."),
    allow_outside_root: bool = typer.Option(
        False, "--allow-outside-root", help="Let rows name files outside the dataset folder (symlinks resolved)."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document (every problem) instead of a table."),
) -> None:
    """Open every file a dataset references; list each missing, truncated or unreadable one."""
    from evspec.data.dataset import check_dataset, load_dataset

    n_samples = len(load_dataset(dataset, split=split, allow_outside_root=allow_outside_root))
    if n_samples == 0:  # an unknown split is refused by load_dataset; this is a dataset of no rows
        raise InputError("the dataset holds no rows" if split is None else f"no rows of split {split!r} in the dataset",
                         dataset)
    with _progress(err_console, transient=True) as progress:  # on stderr: stdout stays the result alone
        task = progress.add_task("opening every referenced file", total=n_samples)
        problems = check_dataset(dataset, split=split, allow_outside_root=allow_outside_root,
                                 progress=lambda done, total: progress.update(task, completed=done, total=total))
    if json_output:
        print_json({"dataset": str(dataset), "split": split, "n_samples": n_samples, "ok": not problems,
                    "problems": [{"sample": p.sample_id, "file": str(p.path), "problem": p.message} for p in problems]})
    elif not problems:
        print_line(f"OK: {n_samples} samples, every referenced file opens")
    else:
        table = Table(title=f"{len(problems)} problems in {escape(str(dataset))}")
        for column in ("sample", "file", "problem"):
            table.add_column(column)
        for problem in problems:
            table.add_row(escape(problem.sample_id), escape(str(problem.path)), escape(problem.message))
        print_table(table)
    if problems:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- printing


def _progress(on: Console | None = None, *, transient: bool = False) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=on or console, transient=transient,
    )


def _print_summary(title: str, summary: dict[str, Any]) -> None:
    """A summary as a two-column table (every key and value escaped: they come from files)."""
    table = Table(title=escape(title), show_header=False)
    for key, value in summary.items():
        table.add_row(escape(key), escape(_shown(value)))
    print_table(table)


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return " .. ".join(str(v) for v in value)
    return "-" if value is None else str(value)


def _dataset_summary(path: Path, *, allow_outside_root: bool = False) -> dict[str, Any]:
    from evspec.data.dataset import load_dataset

    samples = load_dataset(path, allow_outside_root=allow_outside_root)
    kinds = Counter(str((s.scene or {}).get("question_type", "-")) for s in samples)  # a free dict: any JSON
    return {
        "samples": len(samples),
        "splits": dict(sorted(Counter(s.split or "-" for s in samples).items())),
        "question_types": dict(sorted(kinds.items())),
        "with_events": sum(s.event_path is not None for s in samples),
        "with_event_images": sum(bool(s.event_image_paths) for s in samples),
        "with_video": sum(s.video_path is not None for s in samples),
        "first_question": samples[0].query if samples else None,
        "first_answer": samples[0].answer if samples else None,
    }


def _events_summary(path: Path) -> dict[str, Any]:
    from evspec.data.events import DsecEventFile, read_events

    if path.suffix.lower() in {".h5", ".hdf5"}:
        with DsecEventFile(path) as dsec:
            dsec.validate()  # every event and ms_to_idx entry, as the other formats' readers check theirs
            return {
                "format": "DSEC events.h5", "events": len(dsec),
                "time_us_file_clock": [int(dsec.t_first_us), int(dsec.t_last_us)], "t_offset_us": int(dsec.t_offset),
                "sensor": "x".join(map(str, dsec.sensor_size)),
                "checked": "every event on the sensor, t sorted and >= 0, p in {0, 1}, ms_to_idx exact",
            }
    stream = read_events(path)
    duration = stream.duration_us
    return {
        "events": len(stream),
        "sensor": f"{stream.width}x{stream.height}",
        "time_us": [int(stream.t[0]), int(stream.t[-1])],
        "duration_ms": round(duration / 1e3, 3),
        "events_per_us": round(len(stream) / max(duration, 1), 4),
        "positive_share": round(float(np.mean(stream.p.astype(bool))), 4),
        "x_range": [int(stream.x.min()), int(stream.x.max())],
        "y_range": [int(stream.y.min()), int(stream.y.max())],
    }


def _video_summary(path: Path) -> dict[str, Any]:
    from evspec.data.video import probe_video

    info = probe_video(path)
    return {"frames": info.n_frames, "fps": info.fps, "duration_s": round(info.duration_s, 3),
            "size": f"{info.width}x{info.height}"}


def _print_dataset_summary(path: Path) -> None:
    """The dataset table ``synth`` prints after building."""
    _print_summary(f"dataset {path}", _dataset_summary(path))
