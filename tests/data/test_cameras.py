"""Camera recordings (.aedat4, Prophesee .raw EVT 2.0/3.0, .dat) read into EventStream via faery.

Files come from faery's own writer (all four formats) and, for EVT 2.0 and 3.0, from bytes encoded
here after Prophesee's documented word layouts (docs.prophesee.ai, "EVT 2.0 Format" and "EVT 3.0
Format"), so the reader is checked against the format, not only against its own writer. The test
for the missing-library error runs whether or not faery is installed; the others need it (it is
in the ``test`` extra) and say so when skipped.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from evspec.cli import main
from evspec.data.cameras import read_camera_file
from evspec.data.events import read_events
from evspec.errors import ConfigError, InputError

try:
    import faery
except ImportError:  # the extra is not installed: only the clear-error test can run
    faery = None

needs_faery = pytest.mark.skipif(faery is None, reason="faery (pip install 'evspec[cameras]') is not installed")
SIZE = (32, 16)
T = np.array([5_000_000, 5_000_010, 5_000_010, 5_004_200, 5_090_001, 6_000_000], dtype=np.int64)
X = np.array([1, 2, 31, 3, 0, 17], dtype=np.uint16)
Y = np.array([4, 5, 15, 6, 0, 9], dtype=np.uint16)
P = np.array([1, 0, 1, 1, 0, 0], dtype=np.uint8)


def _faery_file(path: Path, version: str | None) -> Path:
    events = np.zeros(T.size, dtype=faery.EVENTS_DTYPE)
    events["t"], events["x"], events["y"], events["on"] = T, X, Y, P.astype(bool)
    faery.events_stream_from_array(events, SIZE).to_file(path, version=version)
    return path


def _header(version: str) -> bytes:
    return (f"% evt {version}\n% format EVT{version[0]};width={SIZE[0]};height={SIZE[1]}\n"
            f"% geometry {SIZE[0]}x{SIZE[1]}\n% end\n").encode()


def evt2_bytes() -> bytes:
    """EVT 2.0: 32-bit little-endian words; [31:28] type (CD_OFF 0, CD_ON 1, EVT_TIME_HIGH 8);
    CD words carry the 6 low time bits in [27:22], x in [21:11], y in [10:0]; TIME_HIGH carries
    the upper 28 bits of the time."""
    words, high = [], None
    for t, x, y, p in zip(T.tolist(), X.tolist(), Y.tolist(), P.tolist()):
        if t >> 6 != high:
            high = t >> 6
            words.append((0x8 << 28) | high)
        words.append((p << 28) | ((t & 0x3F) << 22) | (x << 11) | y)
    return _header("2.0") + struct.pack(f"<{len(words)}I", *words)


def evt3_bytes() -> bytes:
    """EVT 3.0: 16-bit little-endian words; [15:12] type: EVT_ADDR_Y 0x0 (y), EVT_TIME_HIGH 0x8
    (time bits 23..12), EVT_TIME_LOW 0x6 (time bits 11..0), EVT_ADDR_X 0x2 (polarity in bit 11,
    x below: emits one event at the current y and time)."""
    words, high, low = [], None, None
    for t, x, y, p in zip(T.tolist(), X.tolist(), Y.tolist(), P.tolist()):
        if t >> 12 != high:
            high = t >> 12
            words.append((0x8 << 12) | (high & 0xFFF))
        if t & 0xFFF != low:
            low = t & 0xFFF
            words.append((0x6 << 12) | low)
        words.append((0x0 << 12) | y)
        words.append((0x2 << 12) | (p << 11) | x)
    return _header("3.0") + struct.pack(f"<{len(words)}H", *words)


def _assert_events(stream) -> None:
    assert stream.sensor_size == SIZE
    assert np.array_equal(stream.t, T) and np.array_equal(stream.x, X)
    assert np.array_equal(stream.y, Y) and np.array_equal(stream.p, P)


@needs_faery
@pytest.mark.parametrize(("name", "version"), [
    ("rec.aedat4", None), ("rec_evt2.raw", "evt2"), ("rec_evt3.raw", "evt3"), ("rec.dat", "dat2"),
])
def test_files_written_by_faery_read_back_exactly(tmp_path: Path, name: str, version: str | None) -> None:
    path = _faery_file(tmp_path / name, version)
    _assert_events(read_events(path))  # absolute times: the header's t0 is applied
    window = read_events(path, t0_us=5_000_010, t1_us=5_090_001)
    assert window.t.tolist() == [5_000_010, 5_000_010, 5_004_200]
    assert read_camera_file(path, t0_us=5_004_200).t.tolist() == [5_004_200, 5_090_001, 6_000_000]


@needs_faery
@pytest.mark.parametrize("encode", [evt2_bytes, evt3_bytes])
def test_documented_evt_bytes_decode_to_the_encoded_events(tmp_path: Path, encode) -> None:
    path = tmp_path / "camera.raw"
    path.write_bytes(encode())
    _assert_events(read_events(path))  # includes times past 4096 us and 2^18 us (high bits change)


@needs_faery
def test_damaged_and_off_sensor_files_fail_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "noise.aedat4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match=r"noise\.aedat4.*cannot read this iniVation AEDAT 4 file"):
        read_events(bad)
    # a header narrower than the events: caught by evspec's own validation, naming the file
    data = evt3_bytes().replace(b"width=32", b"width=30").replace(b"geometry 32x16", b"geometry 30x16")
    (tmp_path / "narrow.raw").write_bytes(data)
    with pytest.raises(InputError, match=r"narrow\.raw"):
        read_events(tmp_path / "narrow.raw")


@needs_faery
def test_data_inspect_and_render_take_camera_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _faery_file(tmp_path / "rec.aedat4", None)
    assert main(["data", "inspect", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["events"] == T.size and summary["sensor"] == "32x16"
    assert summary["time_us"] == [int(T[0]), int(T[-1])]
    raw = tmp_path / "rec.raw"
    raw.write_bytes(evt3_bytes())
    assert main(["data", "render", str(raw), "--out", str(tmp_path / "frames"), "--frames", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["frame_0.png", "frame_1.png"]
    # upstream's canvas by default (each chunk's own extent); --event-canvas sensor: the header's 32x16
    from PIL import Image

    sizes = [Image.open(tmp_path / "frames" / f"frame_{i}.png").size for i in range(2)]
    assert sizes == [(32, 16), (18, 10)]  # chunks: events 0-2 reach x=31, y=15; events 3-5 reach x=17, y=9
    assert main(["data", "render", str(raw), "--out", str(tmp_path / "sensor"), "--frames", "2",
                 "--event-canvas", "sensor"]) == 0
    assert {Image.open(p).size for p in (tmp_path / "sensor").iterdir()} == {(32, 16)}


def test_without_faery_the_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """Runs with or without faery installed: the import is made to fail here."""
    monkeypatch.setitem(sys.modules, "faery", None)  # import faery -> ImportError
    path = tmp_path / "rec.raw"
    path.write_bytes(evt3_bytes())
    with pytest.raises(ConfigError, match=r"needs faery: pip install 'evspec\[cameras\]'"):
        read_events(path)
    assert main(["data", "inspect", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'evspec[cameras]'" in err
