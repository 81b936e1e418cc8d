"""Hostile-input tests: an isolated model cache, and the corpus run once per module."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network

from collections.abc import Iterator

import pytest

from tests.isolated_cache import isolated_evspec_cache


@pytest.fixture(scope="session")
def hostile_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``EVSPEC_CACHE`` in a fresh folder, so the tiny checkpoints the corpus damages are built here."""
    with isolated_evspec_cache(tmp_path_factory, "evspec-hostile-cache") as cache:
        yield cache
