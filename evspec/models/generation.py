"""A checkpoint's own ``generation_config.json``: read, reported, and applied when asked.

evspec decodes greedily unless told otherwise (its speed figures and lossless checks need a fixed
rule); a checkpoint's ``generation_config.json`` says how its authors sampled. Runs record that
file (``config.json`` of a run folder), and ``--generation-config checkpoint`` decodes with its
``do_sample``/``temperature``/``top_p`` instead. Keys evspec's sampler does not implement (top_k,
repetition penalty, beams, ...) are listed as not applied, never silently dropped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from evspec.errors import ConfigError, EvspecError, ModelError

GenerationSource = Literal["evspec", "checkpoint"]
GENERATION_SOURCES: tuple[str, ...] = ("evspec", "checkpoint")
FILE_NAME = "generation_config.json"
APPLIED_KEYS = ("do_sample", "temperature", "top_p")
# Keys that say nothing about how tokens are chosen (ids, bookkeeping) or that evspec sets itself.
NEUTRAL_KEYS = frozenset({
    "_from_model_config", "transformers_version", "bos_token_id", "eos_token_id", "pad_token_id", "use_cache",
    "output_attentions", "output_hidden_states", "return_dict_in_generate", "output_scores", "output_logits",
    "max_length", "max_new_tokens", "min_length", "min_new_tokens",
})
# transformers' values when a key is absent; a key at its default changes nothing.
DEFAULTS: dict[str, Any] = {"top_k": 50, "num_beams": 1, "repetition_penalty": 1.0, "typical_p": 1.0,
                            "no_repeat_ngram_size": 0, "num_beam_groups": 1, "min_p": None, "epsilon_cutoff": 0.0,
                            "eta_cutoff": 0.0, "length_penalty": 1.0, "diversity_penalty": 0.0}


def check_generation_source(source: str) -> GenerationSource:
    if source not in GENERATION_SOURCES:
        raise ConfigError(f"unknown generation_config {source!r}: use {' or '.join(GENERATION_SOURCES)}",
                          parameters=["generation_config"])
    return source  # type: ignore[return-value]


def read_generation_config(folder: Path) -> dict[str, Any] | None:
    """``folder/generation_config.json`` as a dict; None when the checkpoint has none."""
    path = Path(folder) / FILE_NAME
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:  # Recursion: nested too deeply
        raise ModelError(f"{path}: not a readable JSON generation config ({type(error).__name__}: {error})") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: expected a JSON object")
    for key in ("temperature", "top_p"):
        try:
            _number(raw, key)
        except ModelError as error:
            raise ModelError(f"{path}: {str(error).removeprefix('generation_config.json: ')}") from None
    return raw


def checkpoint_folder(name: str) -> Path | None:
    """The folder a model name loads from (a tiny name's cached folder is built if missing);
    None for ``random-7b-*`` names, which have no files."""
    from evspec.models.loading import quiet_transformers
    from evspec.models.registry import parse_name
    from evspec.models.tiny import RANDOM_NAMES, tiny_checkpoint

    if name in RANDOM_NAMES:
        return None
    _, folder = parse_name(name)
    if folder is not None:
        return folder
    with quiet_transformers():
        return tiny_checkpoint(name)


def checkpoint_generation_configs(names: Sequence[str], *, strict: bool = True) -> dict[str, dict[str, Any] | None]:
    """Each named model's ``generation_config.json`` (None where there is none), for run records.
    ``strict=False``: a name or file that cannot be resolved is recorded as None (the run's own
    checks report it), for runs that only record the files."""
    out: dict[str, dict[str, Any] | None] = {}
    for name in names:
        try:
            folder = checkpoint_folder(name)
            out[name] = None if folder is None else read_generation_config(folder)
        except EvspecError:
            if strict:
                raise
            out[name] = None
    return out


def sampling_settings(raw: dict[str, Any] | None) -> tuple[float, float, list[str]]:
    """(temperature, top_p, keys not applied) that decode as ``raw`` says, within evspec's sampler.

    No file, or ``do_sample`` false/absent: greedy (temperature 0), as transformers does.
    Otherwise transformers' defaults for absent keys (temperature 1.0, top_p 1.0)."""
    if not raw or not raw.get("do_sample", False):
        return 0.0, 1.0, [] if not raw else _not_applied(raw, sampling=False)
    return _number(raw, "temperature"), _number(raw, "top_p"), _not_applied(raw, sampling=True)


def _number(raw: dict[str, Any], key: str) -> float:
    """``raw[key]`` as a float (1.0, transformers' default, when absent or null); anything but a
    finite number is a damaged file, not a value to guess from."""
    value = raw.get(key)
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ModelError(f"generation_config.json: {key} must be a finite number, got {str(value)[:40]!r}")
    return float(value)


def _not_applied(raw: dict[str, Any], *, sampling: bool) -> list[str]:
    """Keys of ``raw`` that would change the output but that evspec's sampler does not implement.
    transformers applies top_k=50 whenever it samples, so a sampling config lists it unless it is 0."""
    skipped = sorted(
        k for k, v in raw.items()
        if k not in APPLIED_KEYS and k not in NEUTRAL_KEYS and DEFAULTS.get(k, object()) != v
        and not (k == "top_k" and v in (0, None))
    )
    if sampling and "top_k" not in raw:
        skipped.append("top_k (transformers' default 50)")
    return skipped
