"""Names, devices, dtypes and quantisation: every wrong option is one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evspec.errors import ConfigError, ModelError
from evspec.models.loading import LoadOptions, resolve_device, resolve_dtype
from evspec.models.registry import load_model, parse_name
from tests.models.conftest import visual_input


@pytest.mark.parametrize("name", ["tiny-gpt", "gpt2", "eventgpt:", "blip:/some/path", "videollava"])
def test_unknown_names(name: str) -> None:
    with pytest.raises(ModelError, match="unknown model"):
        load_model(name)


def test_names_parse_to_family_and_path() -> None:
    assert parse_name("tiny-videollava") == ("videollava", None)
    assert parse_name("llava:/ckpt/llava-1.5") == ("llava", Path("/ckpt/llava-1.5"))
    assert parse_name("eventgpt:~/EventGPT-7b")[1] == Path("~/EventGPT-7b").expanduser()


@pytest.mark.parametrize("family", ["eventgpt", "videollava", "llava"])
def test_missing_folder_and_missing_config(family: str, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="checkpoint folder does not exist"):
        load_model(f"{family}:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_model(f"{family}:{tmp_path / 'empty'}")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelError, match="got a file"):
        load_model(f"{family}:{tmp_path / 'file'}")


def test_unreadable_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="config.json: not a readable JSON config"):
        load_model(f"eventgpt:{tmp_path}")


@pytest.mark.parametrize("dtype", ["float8", "fp32", "int8", "auto"])
def test_bad_dtype(dtype: str) -> None:
    with pytest.raises(ConfigError, match="unknown dtype"):
        load_model("tiny-llava", dtype=dtype)


@pytest.mark.parametrize("device", ["tpu", "gpu", "mps", "cuda:x"])
def test_bad_device(device: str) -> None:
    with pytest.raises(ConfigError, match="device"):
        resolve_device(device)


def test_cuda_when_there_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        load_model("tiny-llava", device="cuda")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda:1")


def test_cuda_index_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="only 2 CUDA device"):
        resolve_device("cuda:2")


def test_bfloat16_on_a_gpu_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    with pytest.raises(ConfigError, match="bfloat16 needs a GPU of compute capability >= 8.0"):
        resolve_dtype("bfloat16", torch.device("cuda", 0))
    assert resolve_dtype("float16", torch.device("cuda", 0)) == torch.float16
    assert resolve_dtype(torch.bfloat16, torch.device("cpu")) == torch.bfloat16


def test_quantisation_needs_cuda_and_bitsandbytes(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="unknown quantisation"):
        LoadOptions.resolve("cpu", "float16", "3bit")
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        load_model("tiny-llava", quantize="4bit")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setitem(__import__("sys").modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match="needs bitsandbytes"):
        LoadOptions.resolve("cuda", "float16", "8bit")


def test_torch_dtypes_and_devices_are_accepted(tiny_cache: str) -> None:
    """The benchmark runner passes torch.device / torch.dtype objects."""
    model = load_model("tiny-eventgpt", device=torch.device("cpu"), dtype=torch.float16)
    assert model.dtype == torch.float16 and model.device == torch.device("cpu")


@pytest.mark.parametrize("family", ["eventgpt", "videollava", "llava"])
def test_prompt_too_long_is_refused_at_preprocess(tiny_models: dict, family: str) -> None:
    model = tiny_models[family]
    with pytest.raises(ConfigError, match="exceeds the .* the model takes"):
        model.preprocess(visual_input(model, 0), "Which way does each object move? " * 150)
    model.preprocess(visual_input(model, 0), "Which way does each object move? " * 5)  # still fine
