"""Video I/O: MP4 round trip through H.264, uniform sampling, image folders, broken inputs."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from evspec.data.video import (
    probe_video,
    read_image,
    read_video_frames,
    uniform_frame_indices,
    write_mp4,
)
from evspec.errors import InputError

H, W = 48, 64


def smooth_frames(n: int, seed: int = 0) -> np.ndarray:
    """Low-frequency frames (codec-friendly) whose mean brightness encodes the frame index."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W] / 16.0
    base = 60 + 20 * np.sin(xx + rng.uniform(0, 6)) * np.cos(yy)
    frames = np.empty((n, H, W, 3), np.uint8)
    for i in range(n):
        level = base + 8 * i
        frames[i] = np.stack([level, level * 0.8, level * 0.6], -1).clip(0, 255).astype(np.uint8)
    return frames


@pytest.fixture(scope="module")
def mp4(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    frames = smooth_frames(12)
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_mp4(frames, path, fps=20)
    return path, frames


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 500), st.integers(1, 40))
def test_uniform_indices_match_video_llava(n_total: int, n: int) -> None:
    idx = uniform_frame_indices(n_total, n)
    assert np.array_equal(idx, np.linspace(0, n_total - 1, n).astype(int))
    assert idx[0] == 0 and idx[-1] == (n_total - 1 if n > 1 else 0)
    assert np.all(np.diff(idx) >= 0) and idx.max() < n_total


def test_uniform_indices_reject_bad_counts() -> None:
    with pytest.raises(InputError, match=">= 1"):
        uniform_frame_indices(10, 0)
    with pytest.raises(InputError, match="0 frames"):
        uniform_frame_indices(0, 3)


def test_probe_reads_metadata(mp4: tuple[Path, np.ndarray]) -> None:
    path, frames = mp4
    info = probe_video(path)
    assert (info.n_frames, info.width, info.height) == (12, W, H)
    assert info.fps == pytest.approx(20.0)
    assert info.duration_s == pytest.approx(12 / 20, abs=0.051)
    assert info.path == path


def test_round_trip_frames_close_to_written(mp4: tuple[Path, np.ndarray]) -> None:
    path, frames = mp4
    got = read_video_frames(path, n=5)
    want = frames[uniform_frame_indices(12, 5)]
    assert got.shape == (5, H, W, 3) and got.dtype == np.uint8
    err = np.abs(got.astype(int) - want.astype(int))
    assert err.mean() < 3.0, err.mean()
    # Each sampled frame is the right one: brightness steps by 8 per frame, far above codec error.
    means = got.reshape(5, -1).mean(1)
    assert np.allclose(means, want.reshape(5, -1).mean(1), atol=2.0)


def test_more_samples_than_frames_repeat(mp4: tuple[Path, np.ndarray]) -> None:
    path, _ = mp4
    got = read_video_frames(path, n=20)
    idx = uniform_frame_indices(12, 20)
    assert got.shape[0] == 20
    for a, b in zip(range(19), range(1, 20)):
        if idx[a] == idx[b]:
            assert np.array_equal(got[a], got[b])


def test_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    write_mp4(smooth_frames(3), tmp_path / "sub" / "a.mp4")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.mp4"]


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((2, 47, 64, 3), np.uint8), "even"),
        (np.zeros((2, 48, 64, 3), np.float32), "uint8"),
        (np.zeros((48, 64, 3), np.uint8), r"\[T, H, W, 3\]"),
        (np.zeros((0, 48, 64, 3), np.uint8), "no frames"),
    ],
)
def test_write_rejects_bad_frames(tmp_path: Path, frames: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        write_mp4(frames, tmp_path / "x.mp4")
    assert info.value.path == tmp_path / "x.mp4"
    assert not any(tmp_path.iterdir())


def encode(path: Path, frames: np.ndarray, *, format: str, codec: str, options: dict[str, str] | None = None) -> None:
    """Frames straight through PyAV, for containers and codecs evspec's own writer does not make."""
    with av.open(str(path), "w", format=format, options=options or {}) as container:
        stream = container.add_stream(codec, rate=Fraction(20))
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_probe_counts_packets_when_container_has_no_frame_count(tmp_path: Path) -> None:
    """Matroska stores no per-stream frame count: probe must fall back to demuxing."""
    path = tmp_path / "clip.mkv"
    frames = smooth_frames(7)
    encode(path, frames, format="matroska", codec="mpeg4")
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 0  # the premise of this test
    info = probe_video(path)
    assert info.n_frames == 7
    assert read_video_frames(path, 7).shape == (7, H, W, 3)


def write_folder(folder: Path, n: int, suffix: str = ".png") -> np.ndarray:
    folder.mkdir(parents=True)
    frames = smooth_frames(n)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:05d}{suffix}")
    return frames


def test_image_folder_fallback(tmp_path: Path) -> None:
    frames = write_folder(tmp_path / "seq", 10)
    (tmp_path / "seq" / "notes.txt").write_text("not an image")
    info = probe_video(tmp_path / "seq")
    assert (info.n_frames, info.width, info.height) == (10, W, H)
    assert np.isnan(info.fps)
    got = read_video_frames(tmp_path / "seq", n=4)
    assert np.array_equal(got, frames[uniform_frame_indices(10, 4)])  # PNG is lossless


def test_jpg_folder_reads(tmp_path: Path) -> None:
    frames = write_folder(tmp_path / "seq", 3, ".jpg")
    got = read_video_frames(tmp_path / "seq", n=3)
    assert np.abs(got.astype(int) - frames.astype(int)).mean() < 3


def test_folder_with_mixed_sizes_is_an_error(tmp_path: Path) -> None:
    write_folder(tmp_path / "seq", 2)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "seq" / "99999.png")
    with pytest.raises(InputError, match="differ in size"):
        read_video_frames(tmp_path / "seq", n=3)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files") as info:
        read_video_frames(tmp_path / "empty")
    assert info.value.path == tmp_path / "empty"


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    for fn in (probe_video, read_video_frames, read_image):
        with pytest.raises(InputError, match="does not exist"):
            fn(tmp_path / "nope.mp4")


def test_n_below_one_is_an_error(mp4: tuple[Path, np.ndarray]) -> None:
    with pytest.raises(InputError, match=">= 1") as info:
        read_video_frames(mp4[0], n=0)
    assert info.value.path == mp4[0]


def test_garbage_mp4_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match="not a readable video") as info:
        probe_video(path)
    assert info.value.path == path


def test_truncated_mp4_is_an_error(mp4: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    """moov atom at the end (the default): a cut file has no index and cannot open."""
    cut = tmp_path / "cut.mp4"
    data = mp4[0].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as info:
        read_video_frames(cut, n=4)
    assert info.value.path == cut


def test_truncated_faststart_mp4_is_an_error(tmp_path: Path) -> None:
    """moov first (faststart): metadata promises frames that the cut data cannot deliver."""
    full = tmp_path / "fast.mp4"
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (30, H, W, 3), dtype=np.uint8)  # noise: big frames
    encode(full, frames, format="mp4", codec="libx264", options={"movflags": "faststart"})
    cut = tmp_path / "cut.mp4"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    assert probe_video(cut).n_frames == 30  # the index survived the cut
    with pytest.raises(InputError, match="truncated|corrupt") as info:
        read_video_frames(cut, n=8)
    assert info.value.path == cut


def test_read_image_png_and_truncated(tmp_path: Path) -> None:
    img = smooth_frames(1)[0]
    path = tmp_path / "a.png"
    Image.fromarray(img).save(path)
    assert np.array_equal(read_image(path), img)
    Image.fromarray(img[..., 0]).save(tmp_path / "gray.png")
    assert read_image(tmp_path / "gray.png").shape == (H, W, 3)
    cut = tmp_path / "cut.png"
    cut.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(InputError, match="truncated") as info:
        read_image(cut)
    assert info.value.path == cut
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(InputError):
        read_image(junk)


def test_writing_the_same_frames_twice_gives_the_same_video(tmp_path: Path) -> None:
    """x264 on several threads encoded the same frames differently from run to run (4 different
    decodings in 6 writes here), so a synthetic dataset's video was not a function of its seed;
    one encoder thread makes it one."""
    rng = np.random.default_rng(0)
    frames = (rng.random((20, 120, 160, 3)) * 255).astype(np.uint8)
    frames[:, :60] = 30
    decoded = set()
    for i in range(6):
        write_mp4(frames, tmp_path / f"{i}.mp4")
        decoded.add(read_video_frames(tmp_path / f"{i}.mp4", 8).tobytes())
    assert len(decoded) == 1
