"""benchmarks/visual_token_spread.py: the spread of a model's visual tokens across clips, against a
model whose visual pathway is cut (its projector zeroed, so every clip gives the same tokens)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.benchmark_scripts import load_benchmark


def test_a_cut_visual_pathway_has_no_spread(tiny_cache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from evspec.data.synth.builder import SynthConfig, build_dataset
    from evspec.models import registry

    build_dataset(tmp_path / "d", SynthConfig(clips=4, size=(160, 120), seed=2))
    script = load_benchmark("visual_token_spread")
    seeing = script.main(["--models", "tiny-eventgpt", "--dataset", str(tmp_path / "d"), "-n", "4"])["tiny-eventgpt"]
    assert seeing["tokens"] == [5 + 17, 64] and seeing["ratio"] > 0.01

    load = registry.load_model

    def blind(name, **kwargs):  # noqa: ANN001, ANN003, ANN202
        model = load(name, **kwargs)
        last = model.model.model.visual_projector[-1]
        with torch.no_grad():
            last.weight.zero_()  # the tokens are the projector's bias whatever the clip shows
            last.bias.fill_(0.5)
        return model

    monkeypatch.setattr(script, "load_model", blind)
    cut = script.main(["--models", "tiny-eventgpt", "--dataset", str(tmp_path / "d"), "-n", "4"])["tiny-eventgpt"]
    assert cut["ratio"] < 1e-6
