"""Video I/O: probe, sample and decode MP4s (PyAV), image folders, and atomic H.264 writing.

Frames are always ``uint8`` RGB arrays ``[n, H, W, 3]``. Sampling follows Video-LLaVA: ``n`` frame
indices spread uniformly over the whole video with ``np.linspace(0, n_total - 1, n).astype(int)``.
MP4s are decoded sequentially (no seeking: seeking in H.264 lands on key frames and is easy to get
subtly wrong) and decoding stops right after the last wanted frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from evspec.data.events import atomic_path
from evspec.errors import InputError
from evspec.memory import require_memory

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds, read from metadata. For an image folder ``fps`` and ``duration_s`` are
    ``nan``: a folder stores no timing."""

    path: Path
    n_frames: int
    fps: float
    duration_s: float
    width: int
    height: int


def uniform_frame_indices(n_total: int, n: int) -> np.ndarray:
    """Video-LLaVA's sampling: ``n`` indices from first to last frame, evenly spaced (repeats when
    ``n > n_total``)."""
    if n < 1:
        raise InputError(f"number of frames to sample must be >= 1, got {n}")
    if n_total < 1:
        raise InputError(f"cannot sample frames from a video with {n_total} frames")
    return np.linspace(0, n_total - 1, n).astype(int)


def _require_exists(path: Path) -> None:
    if not path.exists():
        raise InputError("does not exist", path)


def _image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"folder holds no image files ({', '.join(IMAGE_SUFFIXES)})", folder)
    return files


def read_image(path: str | Path) -> np.ndarray:
    """Read a PNG/JPG as ``HxWx3`` uint8 RGB; a corrupt or truncated file is an InputError (PIL
    would otherwise hand back a partly decoded image only if told to, and we never tell it)."""
    path = Path(path)
    _require_exists(path)
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"unreadable or truncated image ({exc})", path) from exc
    return np.asarray(rgb, dtype=np.uint8)


def _why(exc: BaseException) -> str:
    """FFmpeg errors repeat the file name in str(exc); the reason alone reads better."""
    return getattr(exc, "strerror", None) or str(exc)


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise InputError(f"not a readable video container ({_why(exc)})", path) from exc


def _probe_folder(folder: Path) -> VideoInfo:
    files = _image_files(folder)
    try:
        with Image.open(files[0]) as img:
            width, height = img.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"unreadable image ({exc})", files[0]) from exc
    return VideoInfo(folder, len(files), float("nan"), float("nan"), width, height)


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, rate, duration and size from container metadata, without decoding. When the
    container does not store a frame count, packets are counted by demuxing (still no decoding)."""
    path = Path(path)
    _require_exists(path)
    if path.is_dir():
        return _probe_folder(path)
    container = _open(path)
    try:
        if not container.streams.video:
            raise InputError("holds no video stream", path)
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else float("nan")
        n_frames = int(stream.frames or 0)
        if n_frames == 0:
            try:
                n_frames = sum(1 for pkt in container.demux(stream) if pkt.size > 0)
            except av.FFmpegError as exc:
                raise InputError(f"corrupt video stream ({_why(exc)})", path) from exc
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = n_frames / fps if math.isfinite(fps) and fps > 0 else float("nan")
        codec = stream.codec_context
        if codec is None:  # FFmpeg found a stream but no decoder for it (damaged or unknown codec)
            raise InputError("video stream has no usable codec; damaged or unsupported file", path)
        width, height = codec.width, codec.height
    finally:
        container.close()
    if n_frames < 1 or width < 1 or height < 1:
        raise InputError(f"video stream is empty ({n_frames} frames, {width}x{height})", path)
    return VideoInfo(path, n_frames, fps, duration, width, height)


def _decode_indices(path: Path, wanted: np.ndarray) -> dict[int, np.ndarray]:
    """Decode frames 0..max(wanted) in order, keeping only the wanted ones."""
    targets = set(int(i) for i in wanted)
    last = max(targets)
    frames: dict[int, np.ndarray] = {}
    container = _open(path)
    try:
        stream = container.streams.video[0]
        for index, frame in enumerate(container.decode(stream)):
            if index in targets:
                frames[index] = frame.to_ndarray(format="rgb24")
            if index >= last:
                break
    except av.FFmpegError as exc:
        raise InputError(f"corrupt video data ({_why(exc)})", path) from exc
    finally:
        container.close()
    if len(frames) != len(targets):
        got = max(frames, default=-1) + 1
        raise InputError(
            f"video is truncated: needed frame {last} but only {got} frame(s) decode", path
        )
    return frames


def read_video_frames(path: str | Path, n: int = 8) -> np.ndarray:
    """``n`` uniformly sampled frames ``[n, H, W, 3]`` uint8 RGB from an MP4 (or any container
    PyAV reads) or from a folder of images sorted by name."""
    path = Path(path)
    if n < 1:
        raise InputError(f"number of frames to sample must be >= 1, got {n}", path)
    info = probe_video(path)
    # the header's size decides what decoding allocates: n RGB frames, and one being converted
    require_memory((n + 1) * info.height * info.width * 3, f"{n} frames of {info.width}x{info.height}", path)
    indices = uniform_frame_indices(info.n_frames, n)
    if path.is_dir():
        files = _image_files(path)
        images = [read_image(files[i]) for i in indices]
        shapes = {img.shape for img in images}
        if len(shapes) != 1:
            raise InputError(f"images in the folder differ in size: {sorted(shapes)}", path)
        return np.stack(images)
    decoded = _decode_indices(path, indices)
    return np.stack([decoded[int(i)] for i in indices])


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 20, crf: int = 23) -> None:
    """Write ``[T, H, W, 3]`` uint8 RGB frames as H.264 / yuv420p MP4. Written to a temporary file
    in the same folder and renamed into place (``events.atomic_path``), so a crash never leaves a
    half MP4 under ``path``.
    yuv420p halves chroma resolution, hence even width and height are required."""
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(
            f"frames must be a uint8 array [T, H, W, 3], got {frames.dtype} {frames.shape}", path
        )
    n, height, width, _ = frames.shape
    if n < 1:
        raise InputError("no frames to write", path)
    if height % 2 or width % 2:
        raise InputError(f"H.264 yuv420p needs even width and height, got {width}x{height}", path)
    if fps <= 0:
        raise InputError(f"fps must be > 0, got {fps}", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "threads": "1"}
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
