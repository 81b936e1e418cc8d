"""How much memory a request needs, checked before anything is allocated.

A file header, a sensor size or a frame count can ask for terabytes; NumPy would then either
raise MemoryError halfway through or, with Linux's overcommit, hand out pages until the kernel
kills the process. Readers and renderers call :func:`require_memory` with their estimate first.
"""

from __future__ import annotations

import os
from pathlib import Path

from evspec.errors import ConfigError, EvspecError, InputError

_GIB = 2**30


def available_memory_bytes() -> int:
    """Memory this machine can still hand out: ``MemAvailable`` from /proc/meminfo, else the free
    physical pages (``sysconf``), else a conservative 4 GiB where neither exists."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return 4 * _GIB


def format_bytes(n: int | float) -> str:
    """``1536`` -> ``'1.5 KiB'``; powers of 1024 up to TiB and beyond."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - the loop always returns


def require_memory(nbytes: int, what: str, path: str | Path | None = None) -> None:
    """Raise unless ``nbytes`` fits in the memory available now.

    The error is an :class:`InputError` naming ``path`` when a file asked for the memory (its
    header or table), a :class:`ConfigError` when options did (sensor size, frame count).
    """
    available = available_memory_bytes()
    if nbytes <= available:
        return
    message = (
        f"{what} needs about {format_bytes(nbytes)} of memory, more than the {format_bytes(available)} "
        "available here; refusing before allocating it"
    )
    error: EvspecError = InputError(message, path) if path is not None else ConfigError(message)
    raise error
