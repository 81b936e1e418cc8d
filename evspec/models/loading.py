"""The loading helpers every model family shares: devices, dtypes, quantisation, checkpoint-folder
and weight-layout checks, and a checked ``from_pretrained``.

This module sits below the families (``eventgpt``, ``llava``, ``tiny``) and imports none of them;
the registry (:mod:`evspec.models.registry`, names -> models) sits above them.

Every way a load can go wrong ends in one typed error that names the file and the problem: a
missing folder/config/weights, weights whose keys do not match the model's layout
(:func:`check_state_dict_keys`), a device that is not there, a dtype the device cannot do, a
quantisation without CUDA or bitsandbytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from evspec.errors import ConfigError, ModelError, UnsafeFileError

if TYPE_CHECKING:
    from torch import nn

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
QUANTIZE = ("4bit", "8bit")
# Buffers older transformers releases saved with the weights; harmless when present.
IGNORABLE_SUFFIXES = ("rotary_emb.inv_freq", "embeddings.position_ids")
_SHOWN = 5


# --------------------------------------------------------------------------- options


def resolve_device(device: str | torch.device) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; CUDA must be present and N must exist."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from error
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ConfigError(f"unsupported device {device!r}: use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but CUDA is not available here (torch {torch.__version__})")
    index = 0 if dev.index is None else dev.index
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    return torch.device("cuda", index)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``float32``, ``float16`` or ``bfloat16`` (or that torch dtype); bfloat16 on a GPU needs
    compute capability >= 8.0."""
    if isinstance(dtype, torch.dtype):
        dtype = next((name for name, value in DTYPES.items() if value == dtype), str(dtype))
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if dtype == "bfloat16" and device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            raise ConfigError(
                f"bfloat16 needs a GPU of compute capability >= 8.0; {device} has {major}.{minor}: use float16"
            )
    return DTYPES[dtype]


@dataclass(frozen=True)
class LoadOptions:
    """Where and how to load: a validated device, dtype and optional bitsandbytes quantisation."""

    device: torch.device
    torch_dtype: torch.dtype
    quantize: str | None = None

    @classmethod
    def resolve(
        cls, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32", quantize: str | None = None
    ) -> LoadOptions:
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        if quantize is not None:
            if quantize not in QUANTIZE:
                raise ConfigError(f"unknown quantisation {quantize!r}: use one of {', '.join(QUANTIZE)}")
            if dev.type != "cuda":
                raise ConfigError(f"{quantize} quantisation (bitsandbytes) needs a CUDA device, got {dev}")
            try:
                import bitsandbytes
            except ImportError as error:
                raise ConfigError(
                    f"{quantize} quantisation needs bitsandbytes: pip install 'evspec[quant]'"
                ) from error
        return cls(dev, torch_dtype, quantize)

    def from_pretrained_kwargs(self, skip_modules: Iterable[str] = ()) -> dict[str, Any]:
        """Keyword arguments for ``from_pretrained``: offline, weights-only, dtype and quantisation.
        ``skip_modules`` stay unquantised (vision tower, projector, LM head)."""
        kwargs: dict[str, Any] = {"dtype": self.torch_dtype, "local_files_only": True, "weights_only": True}
        if self.quantize is not None:
            from transformers import BitsAndBytesConfig

            skip = list(skip_modules)
            if self.quantize == "4bit":
                kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_compute_dtype=self.torch_dtype, llm_int8_skip_modules=skip
                )
            else:
                kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
            kwargs["device_map"] = {"": self.device}
        return kwargs

    def place(self, model: nn.Module) -> nn.Module:
        """Move to the device (quantised models were placed while loading) and switch to eval."""
        if self.quantize is None:
            model = model.to(self.device)
        return model.eval()


# --------------------------------------------------------------------------- checkpoint checks


def require_checkpoint_folder(path: str | Path) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelError(f"{folder}: checkpoint folder does not exist")
    if not folder.is_dir():
        raise ModelError(f"{folder}: expected a checkpoint folder, got a file")
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder}: no config.json in the checkpoint folder")
    return folder


def read_config_dict(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: not a readable JSON config ({error})") from error
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return raw


def _index_keys(path: Path) -> set[str]:
    try:
        return set(json.loads(path.read_text(encoding="utf-8"))["weight_map"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{path}: unreadable weight index ({error})") from error


def _bin_keys(path: Path) -> set[str]:
    """Keys of a PyTorch ``.bin`` state dict, loaded with ``weights_only=True`` (no code runs)."""
    import pickle
    import zipfile

    try:
        # mmap reads only the pickled index of a zip-format file; legacy files load whole.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        raise UnsafeFileError(f"refused to unpickle: the file holds more than tensors ({error})", path) from error
    except (OSError, RuntimeError, EOFError) as error:
        raise ModelError(f"{path}: unreadable PyTorch weights ({error})") from error
    if not isinstance(state, dict):
        raise ModelError(f"{path}: expected a state dict, got {type(state).__name__}")
    return set(state)


def checkpoint_keys(folder: Path) -> set[str]:
    """The tensor names stored in a folder's weights (safetensors or .bin, sharded or not),
    read without loading the tensors."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            return _index_keys(folder / index)
    shards = sorted(folder.glob("*.safetensors"))
    if shards:
        from safetensors import safe_open

        keys: set[str] = set()
        for shard in shards:
            try:
                with safe_open(str(shard), framework="pt") as f:
                    keys.update(f.keys())
            except Exception as error:
                raise ModelError(f"{shard}: unreadable safetensors file ({error})") from error
        return keys
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bins:
        return set().union(*(_bin_keys(b) for b in bins))
    raise ModelError(f"{folder}: no weights (model.safetensors, pytorch_model.bin or a sharded index)")


def _examples(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def _layout_error(folder: Path, missing: set[str], unexpected: set[str], mismatched: Iterable[str] = ()) -> ModelError:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_examples(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_examples(unexpected)}")
    mismatched = list(mismatched)
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatch(es): {_examples(mismatched)}")
    return ModelError(f"{folder}: weights do not match the model's layout; " + "; ".join(parts))


def check_state_dict_keys(expected: set[str], found: set[str], folder: Path, *, allowed_missing: set[str] = frozenset()) -> None:
    """Fail with the first few missing/unexpected keys (and their counts) unless they agree."""
    found = {k for k in found if not k.endswith(IGNORABLE_SUFFIXES)}
    missing = expected - found - set(allowed_missing)
    unexpected = found - expected
    if missing or unexpected:
        raise _layout_error(folder, missing, unexpected)


def check_loading_info(
    info: dict[str, Any], folder: Path, *, allowed_missing: set[str] = frozenset(), ignored_prefixes: tuple[str, ...] = ()
) -> None:
    """``from_pretrained(output_loading_info=True)``'s report, held to the same standard.
    Unexpected keys starting with ``ignored_prefixes`` are parts of the file the model does not use."""
    missing = {k for k in info.get("missing_keys", ()) if k not in allowed_missing}
    unexpected = {
        k for k in info.get("unexpected_keys", ()) if not k.endswith(IGNORABLE_SUFFIXES) and not k.startswith(ignored_prefixes)
    }
    mismatched = [str(m[0] if isinstance(m, (tuple, list)) else m) for m in info.get("mismatched_keys", ())]
    if missing or unexpected or mismatched:
        raise _layout_error(folder, missing, unexpected, mismatched)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bars from transformers while loading (library code prints nothing)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def from_pretrained_checked(
    cls: type, folder: Path, options: LoadOptions, *, skip_modules: Iterable[str] = (),
    allowed_missing: set[str] = frozenset(), ignored_prefixes: tuple[str, ...] = (), **kwargs: Any,
) -> nn.Module:
    """``cls.from_pretrained`` offline and weights-only, failing on any missing, unexpected or
    mis-shaped tensor instead of leaving it randomly initialised."""
    try:
        with quiet_transformers():
            model, info = cls.from_pretrained(
                str(folder), output_loading_info=True, **options.from_pretrained_kwargs(skip_modules), **kwargs
            )
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise ModelError(f"{folder}: cannot load {cls.__name__} ({type(error).__name__}: {error})") from error
    check_loading_info(info, folder, allowed_missing=allowed_missing, ignored_prefixes=ignored_prefixes)
    return model


def ensure_prompt_fits(n_tokens: int, max_tokens: int, name: str) -> None:
    """A prompt (text + visual tokens) longer than the model takes is a ConfigError before any work."""
    if n_tokens > max_tokens:
        raise ConfigError(
            f"{name}: prompt of {n_tokens} tokens (text + visual) exceeds the {max_tokens} the model takes; "
            f"shorten the question or use fewer frames"
        )
