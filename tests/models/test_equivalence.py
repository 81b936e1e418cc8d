"""Decoupled generation (encode once, prefill, decode) == each family's own monolithic generate()."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evspec.models.base import VisionLanguageModel
from evspec.models.eventgpt import spatio_temporal_tokens
from evspec.models.llava import features_from_output
from evspec.runtime.decode import prefill
from tests.models.conftest import visual_input

FAMILIES = ("eventgpt", "videollava", "llava")
QUERIES = ("What objects are in the scene?", "Which way does each object move?", "How many objects are moving?")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", range(3))
def test_decoupled_equals_reference_at_forced_lengths(tiny_models: dict, family: str, seed: int) -> None:
    model: VisionLanguageModel = tiny_models[family]
    prepared = model.preprocess(visual_input(model, seed), QUERIES[seed])
    features = model.encode(prepared)
    for n in (1, 7, 32):
        decoupled = model.generate(prepared, max_new_tokens=n, min_new_tokens=n, features=features).token_ids
        reference = model.reference_generate(prepared, n, n)
        assert len(decoupled) == n
        assert decoupled == reference, f"{family} seed {seed} n {n}"


@pytest.mark.parametrize("family", FAMILIES)
def test_decoupled_equals_reference_with_natural_stop(tiny_models: dict, family: str) -> None:
    model = tiny_models[family]
    prepared = model.preprocess(visual_input(model, 7), "Describe what happens in the scene.")
    assert model.generate(prepared, max_new_tokens=24).token_ids == model.reference_generate(prepared, 24)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_visual_input_changes_the_answer(tiny_models: dict, family: str) -> None:
    """Guards the equality tests against a splice that ignores the features."""
    model = tiny_models[family]
    logits = []
    for seed in (0, 1):
        prepared = model.preprocess(visual_input(model, seed), QUERIES[0])
        logits.append(prefill(model.language_model, model.splice(prepared, model.encode(prepared))).logits)
    assert not torch.allclose(logits[0], logits[1])


@pytest.mark.parametrize("family", ["videollava", "llava"])
def test_encode_gives_the_features_the_model_forward_splices(tiny_models: dict, family: str) -> None:
    model = tiny_models[family]
    prepared = model.preprocess(visual_input(model, 3), QUERIES[1])
    key = "pixel_values_videos" if family == "videollava" else "pixel_values"
    with torch.inference_mode():
        out = model.model(input_ids=prepared.input_ids, **{key: prepared.pixel_values})
    inside = out.video_hidden_states if family == "videollava" else out.image_hidden_states
    # A tensor [B, P, D] up to transformers 5.23, a list of [P, D] per image or video since 5.24.
    inside = torch.cat([v.reshape(-1, v.shape[-1]) for v in inside]) if isinstance(inside, (list, tuple)) else inside
    assert torch.equal(model.encode(prepared).embeds, inside.reshape(-1, inside.shape[-1]))


def test_eventgpt_splice_has_t_plus_p_plus_1_visual_tokens(tiny_models: dict) -> None:
    model = tiny_models["eventgpt"]
    tower = model.model.model.visual_tower.visual_tower.config
    patches = (tower.image_size // tower.patch_size) ** 2
    for t in (5, 3):
        prepared = model.preprocess(visual_input(model, 0, n=t), QUERIES[0])
        assert prepared.pixel_values.shape[0] == t
        features = model.encode(prepared)
        assert features.n_tokens == t + patches + 1 == model.n_visual_tokens(t)
        embeds = model.splice(prepared, features)
        assert embeds.shape[1] == prepared.input_ids.shape[1] - 1 + t + patches + 1
        assert int((prepared.input_ids == -200).sum()) == 1


@pytest.mark.parametrize("t", (1, 5))
def test_eventgpt_encodes_its_frames_as_upstream_does_one_at_a_time(tiny_models: dict, t: int) -> None:
    """``encode`` sends the frames through the tower as one batch; upstream's ``encode_events``
    (the reference path) one at a time: the same block, up to float rounding."""
    model = tiny_models["eventgpt"]
    prepared = model.preprocess(visual_input(model, 3, n=t), QUERIES[1])
    with torch.inference_mode():
        upstream = model.model.encode_events(list(prepared.pixel_values))
        encoded = model.encode(prepared).embeds
    assert encoded.shape == (model.n_visual_tokens(t), upstream.shape[-1])
    torch.testing.assert_close(encoded, upstream, rtol=1e-5, atol=1e-6)


def test_real_eventgpt_sizes_give_582_tokens() -> None:
    """5 frames of CLIP-L/336 (24x24 patches + CLS) -> 5 + 577 = 582 tokens (upstream EventGPT's splice)."""
    assert spatio_temporal_tokens(torch.zeros(5, 577, 4)).shape == (582, 4)


@settings(max_examples=25, deadline=None)
@given(t=st.integers(1, 6), s=st.integers(1, 9), d=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_spatio_temporal_tokens_are_the_two_means(t: int, s: int, d: int, seed: int) -> None:
    x = torch.randn(t, s, d, generator=torch.Generator().manual_seed(seed))
    out = spatio_temporal_tokens(x)
    torch.testing.assert_close(out[:t], x.mean(dim=1))
    torch.testing.assert_close(out[t:], x.mean(dim=0))


def test_placeholder_counts_of_the_llava_families(tiny_models: dict) -> None:
    video, image = tiny_models["videollava"], tiny_models["llava"]
    prepared = video.preprocess(visual_input(video, 0), QUERIES[0])
    assert prepared.pixel_values.shape[:2] == (1, 8)
    assert int((prepared.input_ids == video.placeholder_id).sum()) == 8 * (16 + 1) == video.encode(prepared).n_tokens
    prepared = image.preprocess(visual_input(image, 0), QUERIES[0])
    assert int((prepared.input_ids == image.placeholder_id).sum()) == 16 == image.encode(prepared).n_tokens


def test_features_from_output_accepts_every_return_shape() -> None:
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    x = torch.arange(24.0).reshape(2, 3, 4)
    expected = x.reshape(6, 4)
    assert torch.equal(features_from_output(x), expected)
    assert torch.equal(features_from_output(BaseModelOutputWithPooling(pooler_output=x)), expected)
    assert torch.equal(features_from_output(BaseModelOutputWithPooling(pooler_output=list(x))), expected)
    assert torch.equal(features_from_output((x[0], x[1])), expected)


def test_bfloat16_decoupled_equals_reference(tiny_cache: str) -> None:
    from evspec.models.registry import load_model

    model = load_model("tiny-llava", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    prepared = model.preprocess(visual_input(model, 2), QUERIES[2])
    assert model.generate(prepared, max_new_tokens=8, min_new_tokens=8).token_ids == model.reference_generate(prepared, 8, 8)
