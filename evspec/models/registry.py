"""Model names -> loaded models.

Names: ``tiny-eventgpt``, ``tiny-videollava``, ``tiny-llava`` (seeded random checkpoints built once
and cached, see :mod:`evspec.models.tiny`), ``random-7b-eventgpt|videollava|llava`` (real shapes,
random weights, built in memory: for speed measurements without checkpoints), or ``FAMILY:PATH`` with FAMILY one of ``eventgpt``,
``videollava``, ``llava`` and PATH a local checkpoint folder. A tiny name resolves to its cached
folder and then takes exactly the path a real checkpoint takes.

The registry sits on top: it imports the families, which take their shared loading helpers from
:mod:`evspec.models.loading` (below them). An unknown name is a ``ModelError``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from evspec.errors import ConfigError, ModelError
from evspec.models.loading import LoadOptions, quiet_transformers

if TYPE_CHECKING:
    from evspec.models.base import VisionLanguageModel

FAMILIES = ("eventgpt", "videollava", "llava")
TINY_NAMES = {"tiny-eventgpt": "eventgpt", "tiny-videollava": "videollava", "tiny-llava": "llava"}

# --------------------------------------------------------------------------- names


def parse_name(name: str) -> tuple[str, Path | None]:
    """``tiny-*`` -> (family, None); ``family:PATH`` -> (family, PATH)."""
    if name in TINY_NAMES:
        return TINY_NAMES[name], None
    family, sep, path = name.partition(":")
    if sep and family in FAMILIES and path:
        return family, Path(path).expanduser()
    raise ModelError(
        f"unknown model {name!r}: use one of {', '.join(TINY_NAMES)}, random-7b-FAMILY (real shapes, random "
        f"weights), or FAMILY:PATH with FAMILY in {', '.join(FAMILIES)}"
    )


def check_model_name(name: str) -> None:
    """A ``ModelError`` now, before any work, for a name no loader takes (folders are checked on load)."""
    from evspec.models.tiny import RANDOM_NAMES

    if name not in RANDOM_NAMES:
        parse_name(name)


def load_model(
    name: str, *, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32", quantize: str | None = None
) -> VisionLanguageModel:
    """Load a model by name (module docstring) on ``device`` in ``dtype``, optionally 4-/8-bit."""
    from evspec.models.tiny import RANDOM_NAMES, random_model

    options = LoadOptions.resolve(device, dtype, quantize)
    if name in RANDOM_NAMES:
        if quantize is not None:
            raise ConfigError(f"{name} has random weights: quantising them measures nothing real")
        return random_model(name, options.device, options.torch_dtype)
    family, folder = parse_name(name)
    if folder is None:
        from evspec.models.tiny import tiny_checkpoint

        with quiet_transformers():
            folder = tiny_checkpoint(name)
    if family == "eventgpt":
        from evspec.models.eventgpt import load_eventgpt

        return load_eventgpt(folder, options, name=name)
    from evspec.models.llava import load_llava, load_videollava

    loader = load_videollava if family == "videollava" else load_llava
    return loader(folder, options, name=name)
