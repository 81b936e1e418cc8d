"""Recordings from the field's cameras: iniVation ``.aedat4``, Prophesee ``.raw`` (EVT 2.0 / 2.1 /
3.0) and ``.dat``, read into an :class:`~evspec.data.events.EventStream` through faery.

Why faery (``pip install 'evspec[cameras]'``): it reads all four formats with one call, keeps the
sensor size and the absolute time base from the file header, writes them too (the tests make their
files with it), and it was the one candidate correct on every format in
``benchmarks/bench_camera_readers.py`` (docs/BENCHMARKS.md): expelliarmus decodes EVT 3.0
timestamps of spec-conformant files 4096 us off once the time's high bits change (its own writer
makes files only it reads back; a decoder written from the documented layout agrees with faery),
aedat reads ``.aedat4`` only, and evlib failed on the ``.aedat4`` and ``.dat`` files. faery decoded
20-60 M events/s on one core; expelliarmus is 3-16x faster on EVT 2.0 and DAT, which does not
outweigh a wrong EVT 3.0.

faery is optional: without it, these files fail with one line naming the extra to install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from evspec.data.events import EventStream, _build
from evspec.errors import ConfigError, InputError

CAMERA_SUFFIXES: dict[str, str] = {
    ".aedat4": "iniVation AEDAT 4",
    ".raw": "Prophesee EVT (.raw)",
    ".dat": "Prophesee DAT",
}
EXTRA = "cameras"


def _faery() -> Any:
    """The faery module, or a ConfigError naming the extra that installs it."""
    try:
        import faery
    except ImportError:
        raise ConfigError(
            f"reading camera recordings ({', '.join(CAMERA_SUFFIXES)}) needs faery: pip install 'evspec[{EXTRA}]'"
        ) from None
    return faery


def is_camera_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in CAMERA_SUFFIXES


def read_camera_file(
    path: str | Path, sensor_size: tuple[int, int] | None = None, *, t0_us: int | None = None, t1_us: int | None = None,
) -> EventStream:
    """Events of a ``.aedat4`` / ``.raw`` / ``.dat`` file (its first event stream), optionally only
    [t0_us, t1_us), t in the file's own microseconds (absolute: header offsets applied).

    ``sensor_size``: (width, height) when the header has none (``.raw``/``.dat`` without geometry);
    a header that states one wins, and events outside it are an error as for every reader."""
    path = Path(path)
    kind = CAMERA_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"not a camera recording ({', '.join(CAMERA_SUFFIXES)})", path)
    faery = _faery()
    kwargs: dict[str, Any] = {}
    if sensor_size is not None:
        kwargs["dimensions_fallback"] = (int(sensor_size[0]), int(sensor_size[1]))
    try:
        stream = faery.events_stream_from_file(path, **kwargs)
        width, height = stream.dimensions()
        if t0_us is not None or t1_us is not None:
            start, end = stream.time_range()
            lo = start if t0_us is None else faery.Time(microseconds=int(t0_us))
            hi = end if t1_us is None else faery.Time(microseconds=int(t1_us))
            if not lo < hi:
                none = np.zeros(0, dtype=np.int64)
                return _build(none, none, none, none, (width, height), path)
            stream = stream.time_slice(lo, hi)
        events = stream.to_array()
    except Exception as error:  # the library boundary: faery raises bare Exceptions on damaged files
        raise InputError(f"cannot read this {kind} file ({type(error).__name__}: {error})", path) from None
    return _build(events["x"], events["y"], events["t"], events["on"], (width, height), path)
