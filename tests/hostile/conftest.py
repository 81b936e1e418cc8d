"""Hostile-input tests: an isolated model cache, and the corpus run once per module."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def hostile_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``EVSPEC_CACHE`` in a fresh folder, so the tiny checkpoints the corpus damages are built here."""
    cache = str(tmp_path_factory.mktemp("evspec-hostile-cache"))
    old = os.environ.get("EVSPEC_CACHE")
    os.environ["EVSPEC_CACHE"] = cache
    yield cache
    if old is None:
        os.environ.pop("EVSPEC_CACHE", None)
    else:
        os.environ["EVSPEC_CACHE"] = old
