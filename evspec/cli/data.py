"""`evspec data ...`: synthesise, render, inspect and check event + video data."""

from __future__ import annotations

from collections import Counter
from enum import Enum
from pathlib import Path

import numpy as np
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from evspec.errors import ConfigError, InputError

app = typer.Typer(help="Synthesise, render, inspect and check event + video data.", no_args_is_help=True)
console = Console(highlight=False)


class RenderStyle(str, Enum):
    eventgpt = "eventgpt"
    histogram = "histogram"
    voxel = "voxel"


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' -> (640, 480)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"size must look like WIDTHxHEIGHT (e.g. 640x480), got {text!r}") from None
    return width, height


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
    clips: int = typer.Option(100, "--clips", "-n", help="Number of clips."),
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
) -> None:
    """Build a synthetic paired event + video dataset with questions and ground-truth answers."""
    from evspec.data.synth.builder import build_dataset

    config = synth_config(
        clips=clips, seed=seed, size=parse_size(size), fps=fps, duration_s=duration,
        contrast_threshold=contrast_threshold, threshold_sigma=threshold_sigma, refractory_us=refractory_us,
        shot_noise_hz=shot_noise_hz, pan_probability=pan_probability, test_fraction=test_fraction,
    )
    out.mkdir(parents=True, exist_ok=True)
    with _progress() as progress:
        task = progress.add_task("synthesising clips", total=clips)
        summary = build_dataset(out, config, progress=lambda done, total: progress.update(task, completed=done))
    console.print(
        f"[green]wrote[/] {summary.dataset_json}: {summary.clips} clips ({summary.built} built, "
        f"{summary.skipped} already done), {summary.n_events:,} events, {summary.seconds:.1f} s"
    )
    _print_dataset_summary(out)


@app.command()
def render(
    events: Path = typer.Argument(..., help="Events file: EventGPT .npy, structured .npy/.npz, or DSEC events.h5."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the PNGs (or .npy for voxel grids)."),
    frames: int = typer.Option(5, "--frames", "-f", help="Frames (eventgpt, histogram) or time bins (voxel)."),
    style: RenderStyle = typer.Option(RenderStyle.eventgpt, help="eventgpt | histogram | voxel."),
    t0: int | None = typer.Option(None, "--t0", help="Window start, microseconds (.h5 files)."),
    t1: int | None = typer.Option(None, "--t1", help="Window end, microseconds (.h5 files)."),
    sensor: str | None = typer.Option(None, help="Sensor size WIDTHxHEIGHT (default: from the file or 640x480)."),
    data_size: bool = typer.Option(False, help="eventgpt: size images to the data (upstream) instead of the sensor."),
) -> None:
    """Render an event stream as EventGPT frames, count histograms or a voxel grid."""
    from evspec.data.events import read_events
    from evspec.data.render import (
        histogram_to_image,
        render_eventgpt_frames,
        render_histogram,
        render_voxel_grid,
        save_png,
        voxel_to_image,
    )

    if frames < 1:
        raise ConfigError(f"--frames must be >= 1, got {frames}")
    stream = read_events(events, t0_us=t0, t1_us=t1, sensor_size=parse_size(sensor) if sensor else None)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if style is RenderStyle.eventgpt:
        for i, image in enumerate(render_eventgpt_frames(stream, frames, size="data" if data_size else "sensor")):
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
    console.print(f"[green]rendered[/] {len(stream):,} events ({style.value}) -> {len(written)} files in {out}")


@app.command()
def inspect(path: Path = typer.Argument(..., help="A dataset folder or JSON, an events file, or an MP4.")) -> None:
    """Summarise a dataset, an events file (.npy/.npz/.h5) or a video."""
    if not path.exists():
        raise InputError("no such file or folder", path)
    suffix = path.suffix.lower()
    if path.is_dir() or suffix == ".json":
        _print_dataset_summary(path)
    elif suffix in {".npy", ".npz", ".h5", ".hdf5"}:
        _print_events_summary(path)
    elif suffix in {".mp4", ".mkv", ".avi", ".mov", ".webm"}:
        _print_video_summary(path)
    else:
        raise InputError("unknown kind of file (expected a dataset, .npy/.npz/.h5 events or a video)", path)


@app.command()
def check(
    dataset: Path = typer.Argument(..., help="Dataset folder (or its JSON file)."),
    split: str | None = typer.Option(None, help="Only this split."),
) -> None:
    """Open every file a dataset references; list each missing, truncated or unreadable one."""
    from evspec.data.dataset import check_dataset, load_dataset

    n_samples = len(load_dataset(dataset, split=split))
    problems = check_dataset(dataset, split=split)
    if not problems:
        console.print(f"[green]OK[/]: {n_samples} samples, every referenced file opens")
        return
    table = Table(title=f"{len(problems)} problems in {dataset}")
    for column in ("sample", "file", "problem"):
        table.add_column(column)
    for problem in problems:
        table.add_row(problem.sample_id, str(problem.path), problem.message)
    console.print(table)
    raise typer.Exit(1)


# --------------------------------------------------------------------------- printing


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )


def _print_dataset_summary(path: Path) -> None:
    from evspec.data.dataset import load_dataset

    samples = load_dataset(path)
    table = Table(title=f"dataset {path}", show_header=False)
    table.add_row("samples", str(len(samples)))
    table.add_row("splits", ", ".join(f"{k}: {v}" for k, v in sorted(Counter(s.split or "-" for s in samples).items())))
    kinds = Counter((s.scene or {}).get("question_type", "-") for s in samples)
    table.add_row("question types", ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())))
    table.add_row("with events / images / video", " / ".join(
        str(sum(bool(x) for x in column)) for column in
        ([s.event_path for s in samples], [s.event_image_paths for s in samples], [s.video_path for s in samples])
    ))
    if samples:
        table.add_row("first question", samples[0].query)
        table.add_row("first answer", samples[0].answer or "-")
    console.print(table)


def _print_events_summary(path: Path) -> None:
    from evspec.data.events import DsecEventFile, read_events

    table = Table(title=f"events {path}", show_header=False)
    if path.suffix.lower() in {".h5", ".hdf5"}:
        with DsecEventFile(path) as dsec:
            table.add_row("format", "DSEC events.h5")
            table.add_row("events", f"{len(dsec):,}")
            table.add_row("time (file clock)", f"{dsec.t_first_us} .. {dsec.t_last_us} us")
            table.add_row("t_offset", f"{dsec.t_offset} us")
            table.add_row("sensor", "x".join(map(str, dsec.sensor_size)))
        console.print(table)
        return
    stream = read_events(path)
    duration = stream.duration_us
    table.add_row("events", f"{len(stream):,}")
    table.add_row("sensor", f"{stream.width}x{stream.height}")
    table.add_row("time", f"{int(stream.t[0])} .. {int(stream.t[-1])} us ({duration / 1e3:.1f} ms)")
    table.add_row("rate", f"{len(stream) / max(duration, 1):.2f} events/us")
    table.add_row("positive share", f"{float(np.mean(stream.p.astype(bool))):.3f}")
    table.add_row("x / y range", f"{int(stream.x.min())}..{int(stream.x.max())} / {int(stream.y.min())}..{int(stream.y.max())}")
    console.print(table)


def _print_video_summary(path: Path) -> None:
    from evspec.data.video import probe_video

    info = probe_video(path)
    table = Table(title=f"video {path}", show_header=False)
    table.add_row("frames", str(info.n_frames))
    table.add_row("fps", f"{info.fps:g}")
    table.add_row("duration", f"{info.duration_s:.3f} s")
    table.add_row("size", f"{info.width}x{info.height}")
    console.print(table)
