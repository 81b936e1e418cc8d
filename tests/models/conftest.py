"""Tiny models for the model tests, built once per session into an isolated cache."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network

from collections.abc import Iterator

import numpy as np
import pytest

from tests.isolated_cache import isolated_evspec_cache

from evspec.models.base import VisionLanguageModel, VisualInput

N_FRAMES = {"eventgpt": 5, "videollava": 8, "llava": 1}


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``EVSPEC_CACHE`` pointing at a fresh folder, so each session exercises the build path."""
    with isolated_evspec_cache(tmp_path_factory, "evspec-cache") as cache:
        yield cache


@pytest.fixture(scope="session")
def tiny_models(tiny_cache: str) -> dict[str, VisionLanguageModel]:
    from evspec.models.registry import load_model

    return {m.family: m for m in (load_model(n) for n in ("tiny-eventgpt", "tiny-videollava", "tiny-llava"))}


def random_frames(n: int, seed: int, shape: tuple[int, int] = (48, 64)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(n)]


def visual_input(model: VisionLanguageModel, seed: int, n: int | None = None) -> VisualInput:
    return VisualInput(model.modality, random_frames(n or N_FRAMES[model.family], seed))
