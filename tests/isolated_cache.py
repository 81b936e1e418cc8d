"""``EVSPEC_CACHE`` pointed at a fresh folder for a test session (the model conftests share it)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def isolated_evspec_cache(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[str]:
    """A fresh cache folder as ``EVSPEC_CACHE`` while the context lasts; the old value after."""
    cache = str(tmp_path_factory.mktemp(name))
    old = os.environ.get("EVSPEC_CACHE")
    os.environ["EVSPEC_CACHE"] = cache
    try:
        yield cache
    finally:
        if old is None:
            os.environ.pop("EVSPEC_CACHE", None)
        else:
            os.environ["EVSPEC_CACHE"] = old
