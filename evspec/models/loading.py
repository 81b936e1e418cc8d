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
import pickle
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub.errors import StrictDataclassError

from evspec.errors import ConfigError, ModelError, UnsafeFileError

if TYPE_CHECKING:
    from torch import nn

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
QUANTIZE = ("4bit", "8bit")
# What transformers' loaders raise on a damaged file (after evspec's own checks); each becomes a
# ModelError naming the folder. RecursionError: deeply nested JSON; UnpicklingError: a .bin
# refused by weights_only.
# ArithmeticError/AssertionError: config values that break module construction (0 heads, a
# negative vocabulary); StrictDataclassError: transformers 5's typed config fields.
LOADER_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError, IndexError, EOFError,
    RecursionError, UnicodeDecodeError, pickle.UnpicklingError, ArithmeticError, AssertionError, StrictDataclassError,
)
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
        kwargs: dict[str, Any] = {
            "dtype": self.torch_dtype, "local_files_only": True, "weights_only": True, "trust_remote_code": False,
        }
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
    refuse_custom_code(folder)
    check_config_sizes(folder)
    return folder


# Sizes a LLaMA/CLIP config states; each must be a positive integer before transformers builds modules.
SIZE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "vocab_size", "max_position_embeddings", "image_size", "patch_size", "projection_dim", "head_dim")
_SLACK_BYTES = 64 * 2**20


def _parameter_estimate(config: dict[str, Any]) -> int:
    """Parameters a transformer of this config holds (attention, MLP, embeddings and head), roughly."""
    hidden = config.get("hidden_size", 0)
    layers = config.get("num_hidden_layers", 0)
    inner = config.get("intermediate_size", 4 * hidden)
    return layers * (4 * hidden * hidden + 3 * hidden * inner) + 2 * config.get("vocab_size", 0) * hidden


def check_config_sizes(folder: Path) -> None:
    """A ModelError naming config.json for sizes that are not positive integers, heads that do not
    divide the width, or a model far larger than the weights beside it (a config claiming 10^5
    layers would otherwise be built, and filled, before anything complained)."""
    path = folder / "config.json"
    raw = read_config_dict(folder)
    parts = [raw, *(v for v in raw.values() if isinstance(v, dict) and "hidden_size" in v)]
    for part in parts:
        for key in SIZE_KEYS:
            value = part.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ModelError(f"{path}: {key} must be a positive integer, got {repr(value)[:40]}")
        heads, kv_heads = part.get("num_attention_heads"), part.get("num_key_value_heads")
        if heads and part.get("hidden_size") and "head_dim" not in part and part["hidden_size"] % heads:
            raise ModelError(f"{path}: hidden_size {part['hidden_size']} is not a multiple of num_attention_heads {heads}")
        if heads and kv_heads and heads % kv_heads:
            raise ModelError(f"{path}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    weights = sum(f.stat().st_size for f in folder.iterdir() if f.suffix in (".safetensors", ".bin") and f.is_file())
    parameters = sum(_parameter_estimate(part) for part in parts)
    if weights and parameters // 2 > 4 * weights + _SLACK_BYTES:  # 4-bit weights are half a byte a parameter
        raise ModelError(
            f"{path}: describes a model of about {parameters:,} parameters, but the weights beside it hold "
            f"{weights:,} bytes; config and weights do not belong together"
        )


# The files through which transformers' Auto* loaders can be told to import a checkpoint's own
# Python code, and the keys that name a class to build.
CODE_NAMING_FILES = (
    "config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json",
    "video_preprocessor_config.json", "image_processor_config.json", "feature_extractor_config.json",
)
CLASS_KEYS = ("tokenizer_class", "image_processor_type", "feature_extractor_type", "processor_class",
              "video_processor_type")


def _read_json_file(path: Path, what: str = "file") -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: not a readable JSON {what} ({error})") from None
    except RecursionError:
        raise ModelError(f"{path}: not a readable JSON {what} (nested too deeply to parse)") from None


def _custom_code_request(raw: Any) -> str | None:
    """What in a loaded JSON file asks for code outside transformers, or None."""
    import transformers

    if not isinstance(raw, dict):
        return None
    for sub in (raw, *(v for v in raw.values() if isinstance(v, dict))):  # text_config, vision_config, ...
        if "auto_map" in sub:
            return f"an auto_map ({str(sub['auto_map'])[:120]})"
        for key in CLASS_KEYS:
            name = sub.get(key)
            if name is not None and not (isinstance(name, str) and name.isidentifier() and hasattr(transformers, name)):
                return f"{key} {str(name)[:80]!r}, which transformers does not define"
    return None


def refuse_custom_code(folder: Path) -> None:
    """A ModelError naming the file when a checkpoint asks transformers to run its own code
    (an ``auto_map``, or a tokenizer/processor class transformers does not have).

    evspec also passes ``trust_remote_code=False`` to every ``from_pretrained``, so transformers
    would refuse such a folder too (and never ask on stdin); this names the file up front."""
    for name in CODE_NAMING_FILES:
        path = folder / name
        if path.is_file():
            request = _custom_code_request(_read_json_file(path, "config" if name == "config.json" else "file"))
            if request is not None:
                raise ModelError(
                    f"{path}: asks for custom code ({request}); evspec never runs code from a checkpoint"
                )


def read_config_dict(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    raw = _read_json_file(path, "config")
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return raw


def _index_keys(path: Path) -> set[str]:
    raw = _read_json_file(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("weight_map"), dict):
        raise ModelError(f"{path}: unreadable weight index (expected an object with a weight_map object)")
    return set(raw["weight_map"])


def _bin_keys(path: Path) -> set[str]:
    """Keys of a PyTorch ``.bin`` state dict, loaded with ``weights_only=True`` (no code runs)."""
    import pickle
    import zipfile

    try:
        # mmap reads only the pickled index of a zip-format file; legacy files load whole.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        # torch's message is a page of advice; the line naming what the pickle asked for is the reason
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if "Unsupported" in line or "global" in line.lower()), lines[0] if lines else "")
        reason = reason.split(" Please use")[0]
        raise UnsafeFileError(f"refused to unpickle: the file holds more than tensors ({reason})", path) from None
    except (OSError, RuntimeError, EOFError, ValueError, TypeError, AttributeError, MemoryError, RecursionError) as error:
        raise ModelError(f"{path}: unreadable PyTorch weights ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict):
        raise ModelError(f"{path}: expected a state dict, got {type(state).__name__}")
    return set(state)


def _safetensors_keys(path: Path) -> set[str]:
    """Tensor names from a safetensors header; safetensors checks that the header's offsets fit
    the file, so a header claiming gigabytes the file does not hold is refused here."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return set(f.keys())
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelError(f"{path}: unreadable safetensors file ({error})") from None


def check_weight_files(folder: Path) -> None:
    """Open every weights file's header (every shard an index names, too) before transformers
    loads them: damaged files and pickles that hold more than tensors fail here, named."""
    checkpoint_keys(folder)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            shards = {str(v) for v in _read_json_file(folder / index)["weight_map"].values()}  # checked above
            for shard in sorted(shards):
                path = folder / shard
                if not path.resolve().is_relative_to(folder.resolve()) or not path.is_file():
                    raise ModelError(f"{folder / index}: names shard {shard!r}, which is not a file in the folder")
                if shard.endswith(".safetensors"):
                    _safetensors_keys(path)
                else:
                    _bin_keys(path)


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
            keys.update(_safetensors_keys(shard))
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
    """``cls.from_pretrained`` offline, weights-only and without remote code, failing on any
    missing, unexpected or mis-shaped tensor instead of leaving it randomly initialised.
    Custom-code requests and damaged weight files are refused before transformers sees them."""
    refuse_custom_code(folder)
    check_weight_files(folder)
    try:
        with quiet_transformers():
            model, info = cls.from_pretrained(
                str(folder), output_loading_info=True, **options.from_pretrained_kwargs(skip_modules), **kwargs
            )
    except LOADER_ERRORS as error:
        raise ModelError(f"{folder}: cannot load {cls.__name__} ({type(error).__name__}: {error})") from None
    check_loading_info(info, folder, allowed_missing=allowed_missing, ignored_prefixes=ignored_prefixes)
    return model


def _processed_size(image_processor: Any) -> tuple[int, int] | None:
    """(height, width) of the pixels an image processor hands the tower, None when not fixed."""
    size = getattr(image_processor, "crop_size", None) if getattr(image_processor, "do_center_crop", False) else None
    size = size or getattr(image_processor, "size", None)
    if isinstance(size, dict):  # older releases keep plain dicts, newer a SizeDict with attributes
        height, width = size.get("height"), size.get("width")
    else:
        height, width = getattr(size, "height", None), getattr(size, "width", None)
    return (int(height), int(width)) if height is not None and width is not None else None


def check_processor_size(image_processor: Any, image_size: int, config_file: Path) -> None:
    """A ModelError naming ``config_file`` unless the processor makes images of the tower's
    ``image_size`` square (else the first encode fails deep inside the vision tower)."""
    made = _processed_size(image_processor)
    if made != (image_size, image_size):
        what = f"makes {made[0]}x{made[1]} images" if made else "does not crop images to a fixed size"
        raise ModelError(f"{config_file}: the image processor {what}, but the vision tower takes {image_size}x{image_size}")


def ensure_prompt_fits(n_tokens: int, max_tokens: int, name: str) -> None:
    """A prompt (text + visual tokens) longer than the model takes is a ConfigError before any work."""
    if n_tokens > max_tokens:
        raise ConfigError(
            f"{name}: prompt of {n_tokens} tokens (text + visual) exceeds the {max_tokens} the model takes; "
            f"shorten the question or use fewer frames"
        )
