"""Model names -> loaded models.

Names: ``demo-videollava``, ``demo-eventgpt`` (the trained pair shipped in the package, loaded like
any checkpoint folder), ``tiny-eventgpt``, ``tiny-videollava``, ``tiny-llava`` (seeded random checkpoints built once
and cached, see :mod:`evspec.models.tiny`), ``random-7b-eventgpt|videollava|llava`` (real shapes,
random weights made decisive, built in memory: for speed measurements without checkpoints),
``random-0.2b-eventgpt`` (a small random draft for the oracle at those shapes), or ``FAMILY:PATH`` with FAMILY one of ``eventgpt``,
``videollava``, ``llava`` and PATH a local checkpoint folder. A tiny name resolves to its cached
folder and then takes exactly the path a real checkpoint takes.

The registry sits on top: it imports the families, which take their shared loading helpers from
:mod:`evspec.models.loading` (below them). An unknown name is a ``ModelError``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from evspec.errors import ConfigError, ModelError

if TYPE_CHECKING:  # torch and the loaders are imported when a model loads: the CLI's help starts fast
    import torch

    from evspec.models.base import VisionLanguageModel

FAMILIES = ("eventgpt", "videollava", "llava")
TINY_NAMES = {"tiny-eventgpt": "eventgpt", "tiny-videollava": "videollava", "tiny-llava": "llava"}
DEMO_NAMES = {"demo-videollava": "videollava", "demo-eventgpt": "eventgpt"}
DEMO_DIR = Path(__file__).resolve().parent / "demo"
"""The trained demo pair shipped in the package (``evspec/models/demo/``, made by
``python -m evspec.training.demo``; ``MANIFEST.json`` beside them says how)."""
NAME_FORMS: dict[str, str] = {
    ", ".join(DEMO_NAMES): "the trained demo pair shipped with evspec (target, draft)",
    ", ".join(TINY_NAMES): "tiny seeded checkpoints, built once and cached",
    ", ".join(f"random-7b-{f}" for f in FAMILIES): "real 7B shapes, random weights made decisive, built in memory (speed only)",
    "random-0.2b-eventgpt": "EventGPT's tower with a ~0.2B LLaMA, random weights: the oracle's draft at 7B shapes",
    "FAMILY:PATH": f"a checkpoint folder, FAMILY one of {', '.join(FAMILIES)}",
}
"""Every form a model name takes, with what it is: the one list help texts and errors show."""


def model_names_help() -> str:
    """The model-name forms in one line, for ``--help`` texts and error messages."""
    return "; ".join(f"{forms} ({what})" for forms, what in NAME_FORMS.items())

# --------------------------------------------------------------------------- names


def parse_name(name: str) -> tuple[str, Path | None]:
    """``tiny-*`` -> (family, None); ``demo-*`` -> (family, its folder in the package);
    ``family:PATH`` -> (family, PATH)."""
    if name in TINY_NAMES:
        return TINY_NAMES[name], None
    if name in DEMO_NAMES:
        folder = DEMO_DIR / name
        if not (folder / "config.json").is_file():
            raise ModelError(f"{name}: the demo weights are not in {folder}; build them with "
                             "'python -m evspec.training.demo' (see its MANIFEST.json)")
        return DEMO_NAMES[name], folder
    family, sep, path = name.partition(":")
    if sep and family in FAMILIES and path:
        return family, Path(path).expanduser()
    raise ModelError(f"unknown model {name!r}: use {model_names_help()}")


def check_model_name(name: str) -> None:
    """A ``ModelError`` now, before any work, for a name no loader takes or a ``FAMILY:PATH`` whose
    folder is not a checkpoint folder (missing, a file, no ``config.json``); weights are checked on load."""
    from evspec.models.tiny import RANDOM_NAMES

    if name in RANDOM_NAMES:
        return
    _, folder = parse_name(name)
    if folder is not None:
        from evspec.models.loading import require_checkpoint_folder

        require_checkpoint_folder(folder)


def context_length_of(name: str) -> int:
    """The most positions (prompt + answer) model ``name`` takes, read from its config without
    loading the model (a ``FAMILY:PATH`` folder is checked as :func:`check_model_name` does)."""
    from evspec.models import tiny

    if name in tiny.RANDOM_NAMES:
        return int(tiny.VICUNA_7B["max_position_embeddings"])
    _, folder = parse_name(name)
    if folder is None:
        return tiny.CONTEXT
    from evspec.models.loading import read_config_dict, require_checkpoint_folder

    raw = read_config_dict(require_checkpoint_folder(folder))
    text = raw["text_config"] if isinstance(raw.get("text_config"), dict) else raw
    value = text.get("max_position_embeddings", 2048)  # LlamaConfig's default when the key is absent
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ModelError(f"{folder / 'config.json'}: max_position_embeddings must be an integer >= 2, got {value!r}")
    return value


def check_token_budget(name: str, max_new_tokens: int, min_new_tokens: int = 0) -> None:
    """A ConfigError before any model is loaded when a token count cannot fit ``name``'s context
    even after a one-token prompt (decoding would stop short, or generate() run on past it)."""
    context = context_length_of(name)
    for option, value in (("max_new_tokens", max_new_tokens), ("min_new_tokens", min_new_tokens)):
        if value > context:
            raise ConfigError(
                f"{option}={value} exceeds what {name} can generate: its context holds {context} tokens, prompt included"
            )


def check_model_event_canvas(value: str | None) -> str | None:
    """A model's event canvas option: ``auto`` (or None) -> None, the checkpoint's own; else a
    canvas name, checked."""
    if value is None or value == "auto":
        return None
    from evspec.data.render import check_event_canvas

    return check_event_canvas(value)


def load_model(
    name: str, *, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32", quantize: str | None = None,
    event_canvas: str | None = "auto",
) -> VisionLanguageModel:
    """Load a model by name (module docstring) on ``device`` in ``dtype``, optionally 4-/8-bit.
    ``event_canvas``: how EventGPT draws its event frames (``upstream``'s per-chunk canvas or
    ``sensor``; ``auto`` or None: what the checkpoint was trained with where it says, else
    ``upstream``); other families have none."""
    from evspec.models.loading import LoadOptions, quiet_transformers
    from evspec.models.tiny import RANDOM_NAMES, random_model

    event_canvas = check_model_event_canvas(event_canvas)
    options = LoadOptions.resolve(device, dtype, quantize)
    if name in RANDOM_NAMES:
        if quantize is not None:
            raise ConfigError(f"{name} has random weights: quantising them measures nothing real")
        model = random_model(name, options.device, options.torch_dtype)
        if model.family == "eventgpt":
            model.event_canvas = event_canvas or "upstream"  # type: ignore[attr-defined]
        return model
    family, folder = parse_name(name)
    if folder is None:
        from evspec.models.tiny import tiny_checkpoint

        with quiet_transformers():
            folder = tiny_checkpoint(name)
    if family == "eventgpt":
        from evspec.models.eventgpt import load_eventgpt

        return load_eventgpt(folder, options, name=name, event_canvas=event_canvas)
    from evspec.models.llava import load_llava, load_videollava

    loader = load_videollava if family == "videollava" else load_llava
    return loader(folder, options, name=name)
