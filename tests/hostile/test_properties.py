"""Issue 15, as properties: random, truncated or bit-flipped bytes into each reader give an
``EvspecError`` and nothing else (or, for a flipped byte the format cannot notice, a result that
passed the same validation a good file does), and a random dataset JSON gives a valid dataset or
an ``EvspecError``."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evspec.data.dataset import Sample, load_dataset
from evspec.data.events import (
    DsecEventFile,
    EventStream,
    _load_rectify_map,
    read_events,
    write_dsec_h5,
    write_eventgpt_npy,
    write_npz,
    write_structured_npy,
)
from evspec.data.video import VideoInfo, probe_video, read_image, read_video_frames, write_mp4
from evspec.errors import EvspecError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_WORKDIR = Path(tempfile.mkdtemp(prefix="evspec-hostile-properties-"))


def _stream() -> EventStream:
    rng = np.random.default_rng(3)
    n = 300
    return EventStream.from_arrays(rng.integers(0, 64, n), rng.integers(0, 48, n),
                                   np.sort(rng.integers(0, 5000, n)), rng.integers(0, 2, n), (64, 48))


def _read_h5(path: Path) -> Any:
    with DsecEventFile(path, sensor_size=(64, 48)) as dsec:
        dsec.validate()
        return dsec.read_all()


def _read_checkpoint_weights(path: Path) -> Any:
    from evspec.models.loading import check_weight_files

    folder = path.parent
    return check_weight_files(folder)


def _read_checkpoint_config(path: Path) -> Any:
    from evspec.models.loading import read_config_dict, refuse_custom_code

    refuse_custom_code(path.parent)
    return read_config_dict(path.parent)


@cache
def _good(suffix: str) -> bytes:
    """A valid file of each kind, written by evspec's own writers (or the library's)."""
    folder = _WORKDIR / f"good{suffix.replace('/', '-')}"
    folder.mkdir(parents=True, exist_ok=True)
    stream = _stream()
    path = folder / "file"
    if suffix == ".npy":
        write_structured_npy(stream, path := folder / "e.npy")
    elif suffix == "eventgpt.npy":
        write_eventgpt_npy(stream, path := folder / "e.npy")
    elif suffix == ".npz":
        write_npz(stream, path := folder / "e.npz")
    elif suffix == ".h5":
        write_dsec_h5(stream, path := folder / "e.h5")
    elif suffix == ".png":
        from evspec.data.render import save_png

        save_png(np.full((12, 16, 3), 200, np.uint8), path := folder / "e.png")
    elif suffix == ".mp4":
        write_mp4(np.random.default_rng(0).integers(0, 255, (6, 16, 16, 3), dtype=np.uint8), path := folder / "e.mp4")
    elif suffix == "model.safetensors":
        import torch
        from safetensors.torch import save_file

        save_file({"w": torch.arange(64, dtype=torch.float32), "b": torch.ones(3)}, path := folder / "model.safetensors")
    elif suffix == "rectify.h5":
        from evspec.data.events import write_rectify_map

        grid = np.stack(np.meshgrid(np.arange(64), np.arange(48)), axis=-1).astype(np.float32)
        write_rectify_map(path := folder / "rectify.h5", grid)
    elif suffix == "config.json":
        (path := folder / "config.json").write_text(json.dumps({"model_type": "llava", "text_config": {"a": 1}}))
    return path.read_bytes()


READERS: dict[str, tuple[str, Callable[[Path], Any]]] = {
    "structured .npy": (".npy", lambda p: read_events(p, sensor_size=(64, 48))),
    "EventGPT .npy": ("eventgpt.npy", lambda p: read_events(p, sensor_size=(64, 48))),
    ".npz": (".npz", lambda p: read_events(p)),
    "DSEC .h5": (".h5", _read_h5),
    "DSEC rectify_map.h5": ("rectify.h5", lambda p: _load_rectify_map(p, (64, 48))),
    "PNG": (".png", read_image),
    "MP4 probe": (".mp4", probe_video),
    "MP4 frames": (".mp4", lambda p: read_video_frames(p, 4)),
    "safetensors": ("model.safetensors", _read_checkpoint_weights),
    "checkpoint config.json": ("config.json", _read_checkpoint_config),
}
MAGIC = {"rectify.h5": b"\x89HDF\r\n\x1a\n", ".npy": b"\x93NUMPY", "eventgpt.npy": b"\x93NUMPY\x01\x00", ".npz": b"PK\x03\x04", ".h5": b"\x89HDF\r\n\x1a\n",
         ".png": b"\x89PNG\r\n\x1a\n", ".mp4": b"\x00\x00\x00\x18ftypmp42", "model.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00",
         "config.json": b"{"}


def _file_name(suffix: str) -> str:
    return {"eventgpt.npy": "e.npy", "rectify.h5": "rectify.h5", "model.safetensors": "model.safetensors", "config.json": "config.json"}.get(
        suffix, f"e{suffix}")


def _run(reader: str, data: bytes) -> tuple[str, Any]:
    """("error", EvspecError) or ("ok", result); any other exception propagates and fails the test."""
    suffix, read = READERS[reader]
    folder = Path(tempfile.mkdtemp(dir=_WORKDIR))
    try:
        path = folder / _file_name(suffix)
        path.write_bytes(data)
        try:
            return "ok", read(path)
        except EvspecError as error:
            return "error", error
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, VideoInfo):  # read from two temporary copies: all but the path
        return isinstance(b, VideoInfo) and dataclasses.replace(a, path=b.path) == b
    if isinstance(a, EventStream):
        return isinstance(b, EventStream) and np.array_equal(a.events, b.events) and a.sensor_size == b.sensor_size
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    return a == b


@pytest.mark.parametrize("reader", READERS)
def test_a_good_file_reads(reader: str) -> None:
    """The baseline the properties compare against: each reader takes evspec's own good file."""
    kind, _ = _run(reader, _good(READERS[reader][0]))
    assert kind == "ok"


@pytest.mark.parametrize("reader", READERS)
@SETTINGS
@given(data=st.data())
def test_truncated_files_give_an_evspec_error(reader: str, data: st.DataObject) -> None:
    good = _good(READERS[reader][0])
    cut = data.draw(st.integers(0, len(good) - 1), label="length kept")
    kind, result = _run(reader, good[:cut])
    if reader == "MP4 probe":  # container metadata only, by design: "MP4 frames" is the decoding check
        assert kind == "error" or isinstance(result, VideoInfo)
        return
    # a cut that only drops bytes the format does not need may still read: then it reads the same thing
    assert kind == "error" or _same(result, _run(reader, good)[1]), (cut, len(good))


@pytest.mark.parametrize("reader", READERS)
@SETTINGS
@given(noise=st.binary(max_size=3000), with_magic=st.booleans())
def test_random_bytes_give_an_evspec_error(reader: str, noise: bytes, with_magic: bool) -> None:
    data = (MAGIC[READERS[reader][0]] if with_magic else b"") + noise
    kind, result = _run(reader, data)
    # only JSON is dense enough for noise to be valid ("{}" is a config): then it is a plain dict
    assert kind == "error" or (reader == "checkpoint config.json" and isinstance(result, dict)), result


@pytest.mark.parametrize("reader", READERS)
@SETTINGS
@given(data=st.data())
def test_flipped_bytes_give_an_evspec_error_or_a_validated_result(reader: str, data: st.DataObject) -> None:
    """A flipped byte in a format without checksums can yield other valid values; what comes back
    has then passed the reader's validation. Anything but EvspecError escaping fails the test."""
    good = bytearray(_good(READERS[reader][0]))
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        at = data.draw(st.integers(0, len(good) - 1))
        good[at] ^= data.draw(st.integers(1, 255))
    kind, result = _run(reader, bytes(good))
    if kind == "ok" and isinstance(result, EventStream):
        EventStream(result.events, result.sensor_size)  # the validation a stream built by hand gets


# --------------------------------------------------------------------------- dataset JSON

_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                       st.text(max_size=12), st.sampled_from(["clip.npy", "../x.npy", "/etc/passwd", "[/x]", "a", ""]))
_json = st.recursive(_json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=20)
_FIELDS = ["id", "split", "query", "answer", "event_data", "event_image", "video_data", "scene", "conversations"]
_row = st.dictionaries(st.sampled_from(_FIELDS), _json, max_size=7)
_dataset_json = st.one_of(_json, st.lists(_row, max_size=5))


@SETTINGS
@given(rows=_dataset_json)
def test_a_random_dataset_json_is_a_valid_dataset_or_an_evspec_error(rows: Any) -> None:
    root = Path(tempfile.mkdtemp(dir=_WORKDIR))
    try:
        (root / "clip.npy").write_bytes(_good(".npy"))
        (root / "dataset.json").write_text(json.dumps(rows), encoding="utf-8")
        try:
            samples = load_dataset(root)
        except EvspecError:
            return
        assert samples and all(isinstance(s, Sample) and s.query for s in samples)
        assert len({s.id for s in samples}) == len(samples)
        real_root = root.resolve()
        for s in samples:
            for path in (s.event_path, s.video_path, *s.event_image_paths):
                assert path is None or path.resolve().is_relative_to(real_root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
