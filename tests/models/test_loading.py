"""Checkpoint loading: EventGPT's upstream layout (with and without tower keys, .bin), and clear
failures on wrong layouts, unsafe pickles and missing files."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from evspec.errors import ModelError, UnsafeFileError
from evspec.models.loading import LoadOptions
from evspec.models.registry import load_model
from evspec.models.tiny import tiny_checkpoint
from tests.models.conftest import visual_input

CPU = LoadOptions.resolve("cpu", "float32")


def _copy(name: str, dest: Path) -> Path:
    folder = dest / name
    shutil.copytree(tiny_checkpoint(name), folder)
    return folder


def _rewrite_weights(folder: Path, edit) -> None:
    state = load_file(folder / "model.safetensors")
    save_file(edit(state), folder / "model.safetensors", metadata={"format": "pt"})


def _answer(model, seed: int = 4) -> list[int]:
    prepared = model.preprocess(visual_input(model, seed), "Which way does each object move?")
    return model.generate(prepared, max_new_tokens=6, min_new_tokens=6).token_ids


def test_tiny_eventgpt_is_saved_in_upstream_key_layout(tiny_cache: str) -> None:
    keys = set(load_file(tiny_checkpoint("tiny-eventgpt") / "model.safetensors"))
    assert {"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight", "model.feature_adaptor.weight",
            "model.feature_adaptor.bias", "model.visual_projector.0.weight", "model.visual_projector.2.bias"} <= keys
    assert any(k.startswith("model.layers.1.") for k in keys)
    assert any(k.startswith("model.visual_tower.visual_tower.vision_model.encoder.") for k in keys)
    config = json.loads((tiny_checkpoint("tiny-eventgpt") / "config.json").read_text())
    assert config["model_type"] == "EventChat_llama" and "visual_tower_config" not in config


def test_eventgpt_without_tower_keys_takes_the_tower_from_mm_visual_tower(tiny_models: dict, tmp_path: Path) -> None:
    from evspec.models.eventgpt import load_eventgpt

    folder = _copy("tiny-eventgpt", tmp_path)
    _rewrite_weights(folder, lambda s: {k: v for k, v in s.items() if not k.startswith("model.visual_tower.")})
    loaded = load_eventgpt(folder, CPU)
    assert _answer(loaded) == _answer(tiny_models["eventgpt"])


def test_eventgpt_loads_pytorch_bin_weights(tiny_models: dict, tmp_path: Path) -> None:
    from evspec.models.eventgpt import load_eventgpt

    folder = _copy("tiny-eventgpt", tmp_path)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    assert _answer(load_eventgpt(folder, CPU)) == _answer(tiny_models["eventgpt"])


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_bin_that_would_run_code_is_refused_unopened(tiny_cache: str, tmp_path: Path, zip_format: bool) -> None:
    from evspec.models.eventgpt import load_eventgpt

    folder = _copy("tiny-eventgpt", tmp_path)
    (folder / "model.safetensors").unlink()
    exploit = _Exploit()
    exploit.target = str(tmp_path / "pwned")
    state = {"model.norm.weight": exploit}
    if zip_format:
        torch.save(state, folder / "pytorch_model.bin")
    else:
        with open(folder / "pytorch_model.bin", "wb") as f:
            pickle.dump(state, f, protocol=2)
    with pytest.raises(UnsafeFileError, match="pytorch_model.bin"):
        load_eventgpt(folder, CPU)
    assert not (tmp_path / "pwned").exists()


def test_a_renamed_key_names_both_sides(tiny_cache: str, tmp_path: Path) -> None:
    from evspec.models.eventgpt import load_eventgpt

    folder = _copy("tiny-eventgpt", tmp_path)

    def rename(state: dict) -> dict:
        state["model.mm_projector.0.weight"] = state.pop("model.visual_projector.0.weight")
        return state

    _rewrite_weights(folder, rename)
    with pytest.raises(ModelError) as error:
        load_eventgpt(folder, CPU)
    text = str(error.value)
    assert str(folder) in text
    assert "1 missing key(s): model.visual_projector.0.weight" in text
    assert "1 unexpected key(s): model.mm_projector.0.weight" in text


def test_a_missing_projector_is_a_clear_error(tiny_cache: str, tmp_path: Path) -> None:
    from evspec.models.eventgpt import load_eventgpt

    folder = _copy("tiny-eventgpt", tmp_path)
    _rewrite_weights(folder, lambda s: {k: v for k, v in s.items() if "visual_projector" not in k})
    with pytest.raises(ModelError, match=r"4 missing key\(s\): model\.visual_projector\.0\.bias"):
        load_eventgpt(folder, CPU)


def test_eventgpt_tower_nowhere_to_be_found(tiny_cache: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from evspec.models.eventgpt import load_eventgpt

    monkeypatch.delenv("EVSPEC_VISUAL_TOWER", raising=False)
    folder = _copy("tiny-eventgpt", tmp_path)
    shutil.rmtree(folder / "clip_tower")
    with pytest.raises(ModelError, match="mm_visual_tower.*EVSPEC_VISUAL_TOWER"):
        load_eventgpt(folder, CPU)
    # The override points at a CLIP folder elsewhere: loading works again.
    monkeypatch.setenv("EVSPEC_VISUAL_TOWER", str(tiny_checkpoint("tiny-eventgpt") / "clip_tower"))
    assert load_eventgpt(folder, CPU).n_visual_tokens(5) == 22


def test_eventgpt_tower_folder_without_weights_when_the_file_has_none(tiny_cache: str, tmp_path: Path) -> None:
    from evspec.models.eventgpt import load_eventgpt

    folder = _copy("tiny-eventgpt", tmp_path)
    _rewrite_weights(folder, lambda s: {k: v for k, v in s.items() if not k.startswith("model.visual_tower.")})
    (folder / "clip_tower" / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no vision-tower weights"):
        load_eventgpt(folder, CPU)


def test_wrong_model_type_is_refused(tiny_cache: str, tmp_path: Path) -> None:
    from evspec.models.eventgpt import load_eventgpt
    from evspec.models.llava import load_videollava

    with pytest.raises(ModelError, match="model_type 'llava', expected 'EventChat_llama'"):
        load_eventgpt(tiny_checkpoint("tiny-llava"), CPU)
    with pytest.raises(ModelError, match="expected 'video_llava'"):
        load_videollava(tiny_checkpoint("tiny-eventgpt"), CPU)


@pytest.mark.parametrize("name", ["tiny-videollava", "tiny-llava"])
def test_llava_family_with_a_missing_tensor_fails_instead_of_random_init(tiny_cache: str, tmp_path: Path, name: str) -> None:
    folder = _copy(name, tmp_path)
    state = load_file(folder / "model.safetensors")
    dropped = next(k for k in state if "multi_modal_projector.linear_1.weight" in k)
    _rewrite_weights(folder, lambda s: {k: v for k, v in s.items() if k != dropped})
    family = name.removeprefix("tiny-")
    with pytest.raises(ModelError, match=r"missing key\(s\):.*multi_modal_projector\.linear_1\.weight"):
        load_model(f"{family}:{folder}")


@pytest.mark.parametrize("name", ["tiny-eventgpt", "tiny-videollava", "tiny-llava"])
def test_missing_tokenizer_files(tiny_cache: str, tmp_path: Path, name: str) -> None:
    folder = _copy(name, tmp_path)
    for f in ("tokenizer.json", "tokenizer.model"):
        (folder / f).unlink(missing_ok=True)
    with pytest.raises(ModelError, match="no tokenizer files"):
        load_model(f"{name.removeprefix('tiny-')}:{folder}")


def test_missing_weights(tiny_cache: str, tmp_path: Path) -> None:
    folder = _copy("tiny-eventgpt", tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no weights"):
        load_model(f"eventgpt:{folder}")


def test_family_path_names_load_real_folders(tiny_models: dict, tmp_path: Path) -> None:
    folder = _copy("tiny-videollava", tmp_path)
    model = load_model(f"videollava:{folder}")
    assert model.name == f"videollava:{folder}" and model.family == "videollava"
    assert _answer(model) == _answer(tiny_models["videollava"])
