"""evspec.models.clip_pixels: the image processor's exact pixels, by the lookup path where it applies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from evspec.models.clip_pixels import clip_pixel_values, fast_path_applies  # noqa: E402

CONFIGS = {
    # the demo draft's tower: a fixed 128x128 resize, no crop
    "fixed": dict(size={"height": 128, "width": 128}, crop_size={"height": 128, "width": 128}, do_center_crop=False),
    # upstream EventGPT's CLIP: shortest edge, then a centre crop
    "shortest-edge": dict(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48}),
    # other constants: the table must be built from the processor's own
    "other-constants": dict(size={"height": 40, "width": 56}, do_center_crop=False, rescale_factor=1 / 127.0,
                            image_mean=[0.1, 0.9, 0.5], image_std=[0.7, 0.05, 0.3], resample=2),
}


def _pil_processor(**kwargs):
    cls = getattr(transformers, "CLIPImageProcessorPil", None)
    if cls is None:
        pytest.skip("this transformers has no separate PIL image-processor backend: the fast path is off there")
    return cls(**kwargs)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("seed", range(4))
def test_the_lookup_gives_the_processor_s_pixels_bit_for_bit(name: str, seed: int) -> None:
    processor = _pil_processor(**CONFIGS[name])
    rng = np.random.default_rng(seed)
    height, width = [(120, 160), (61, 97), (480, 640), (50, 50)][seed]
    frames = [rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) for _ in range(3)]
    frames[0][: height // 2] = 0  # event frames are mostly one colour: flat regions too
    assert fast_path_applies(processor, frames)  # the comparison below is of the lookup, not of a fallback
    expected = processor(list(frames), return_tensors="pt")["pixel_values"]
    got = clip_pixel_values(processor, frames)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert torch.equal(got, expected)


def test_inputs_it_does_not_cover_go_through_the_processor() -> None:
    processor = _pil_processor(**CONFIGS["fixed"])
    rng = np.random.default_rng(0)
    floats = [rng.random((30, 40, 3), dtype=np.float32) for _ in range(2)]
    rgba = [rng.integers(0, 256, size=(30, 40, 4), dtype=np.uint8)]
    for frames in (floats, rgba):
        assert not fast_path_applies(processor, frames)
        assert torch.equal(clip_pixel_values(processor, frames), processor(list(frames), return_tensors="pt")["pixel_values"])
    no_normalise = _pil_processor(**CONFIGS["fixed"], do_normalize=False)
    frames = [rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)]
    assert not fast_path_applies(no_normalise, frames)
    assert torch.equal(clip_pixel_values(no_normalise, frames), no_normalise(frames, return_tensors="pt")["pixel_values"])


def test_eventgpt_keeps_the_pil_backend_where_transformers_would_pick_torchvision(monkeypatch) -> None:
    """With torchvision installed, transformers' ``CLIPImageProcessor`` is the torchvision backend
    (other pixels than the training machine's); EventGPT loads the PIL twin by name instead."""
    _pil_processor()  # skips where transformers has no separate PIL backend

    class TorchvisionStandIn:
        def __init__(self, *args, **kwargs):
            raise AssertionError("the torchvision-backed CLIPImageProcessor was used")

        from_pretrained = classmethod(__init__)

    import sys

    from evspec.models.registry import load_model

    load_model("tiny-eventgpt")  # transformers swaps its lazy module object on first use: patch the live one
    monkeypatch.setattr(sys.modules["transformers"], "CLIPImageProcessor", TorchvisionStandIn)
    for name in ("demo-eventgpt", "tiny-eventgpt"):
        processor = load_model(name).image_processor
        assert processor.backend == "pil", name


def test_llava_keeps_the_pil_backend_where_transformers_would_pick_torchvision(monkeypatch) -> None:
    """``LlavaProcessor.from_pretrained`` takes the image processor transformers picks (torchvision's
    where it is installed); LLaVA-1.5 is loaded with the PIL twin in its place, its sizes the folder's."""
    _pil_processor()
    from transformers import LlavaProcessor

    from evspec.models.registry import load_model

    expected = load_model("tiny-llava").processor.image_processor
    original = LlavaProcessor.from_pretrained.__func__

    def with_torchvision_backend(cls, *args, **kwargs):
        processor = original(cls, *args, **kwargs)
        processor.image_processor = type("TorchvisionStandIn", (), {"backend": "torchvision"})()
        return processor

    monkeypatch.setattr(LlavaProcessor, "from_pretrained", classmethod(with_torchvision_backend))
    processor = load_model("tiny-llava").processor.image_processor
    assert processor.backend == "pil"
    assert processor.to_dict() == expected.to_dict()
