"""The hook timer measures the vision tower inside generate() without changing its output."""

from __future__ import annotations

import pytest

from evspec.errors import ConfigError
from evspec.models.hooks import TowerTimer, measure_hook_overhead
from tests.models.conftest import visual_input


@pytest.mark.parametrize(("family", "calls"), [("videollava", 1), ("llava", 1), ("eventgpt", 5)])
def test_hooks_time_the_tower_and_leave_tokens_alone(tiny_models: dict, family: str, calls: int) -> None:
    model = tiny_models[family]
    prepared = model.preprocess(visual_input(model, 5), "How many objects are moving?")
    plain = model.reference_generate(prepared, 8, 8)
    with TowerTimer(model.vision_tower, model.device) as timer:
        hooked = model.reference_generate(prepared, 8, 8)
    assert hooked == plain
    seconds = timer.seconds()
    assert len(seconds) == calls and all(s > 0 for s in seconds)
    assert not model.vision_tower._forward_hooks and not model.vision_tower._forward_pre_hooks


def test_no_tower_call_outside_the_block(tiny_models: dict) -> None:
    model = tiny_models["llava"]
    prepared = model.preprocess(visual_input(model, 1), "What objects are in the scene?")
    with TowerTimer(model.vision_tower) as timer:
        pass
    model.encode(prepared)
    assert timer.seconds() == []


def test_overhead_report(tiny_models: dict) -> None:
    model = tiny_models["videollava"]
    prepared = model.preprocess(visual_input(model, 2), "What objects are in the scene?")
    report = measure_hook_overhead(model.vision_tower, lambda: model.reference_generate(prepared, 4, 4), repeats=2)
    assert report.same_tokens and report.tower_calls == 1
    assert report.tower_s > 0 and 0 < report.tower_fraction < 1
    assert report.generate_s > 0 and report.overhead_s == report.generate_hooked_s - report.generate_s
    with pytest.raises(ConfigError, match="repeats must be >= 1"):
        measure_hook_overhead(model.vision_tower, list, repeats=0)
