"""Training's batched stages (``encode_batch``, ``splice_batch``) give what the per-sample stages
give, row for row, with gradients: the batched paths exist only for speed."""

from __future__ import annotations

import pytest
import torch

from evspec.models.base import Prepared, VisionLanguageModel
from evspec.models.registry import load_model
from evspec.training.vlm import prompt_ids

QUERIES = (("What objects are in the scene?", 5), ("How many objects are moving?", 9), ("Describe it.", 1))


def _batch(model: VisionLanguageModel) -> list[Prepared]:
    """Rows of different prompt and answer lengths, each with its own random frames."""
    from evspec.training.vlm import _blank_input

    generator = torch.Generator().manual_seed(0)
    frames = model.preprocess(_blank_input(model), "x").pixel_values
    rows = []
    for query, n_answer in QUERIES:
        answer = torch.randint(5, 100, (n_answer,), generator=generator)
        pixels = torch.randn(frames.shape, generator=generator)
        rows.append(Prepared(torch.cat([prompt_ids(model, query), answer]).unsqueeze(0), pixels))
    return rows


@pytest.mark.parametrize("name", ["tiny-eventgpt", "tiny-videollava"])
def test_batched_stages_equal_the_per_sample_stages(name: str) -> None:
    model = load_model(name, device="cpu", dtype="float32")
    model.trainable_module.train()  # as in training: autograd records
    rows = _batch(model)
    features = model.encode_batch(rows)
    for batched, row in zip(features, rows):
        torch.testing.assert_close(batched.embeds, model.encode(row).embeds, rtol=1e-5, atol=1e-6)
    embeds, lengths = model.splice_batch(rows, features, pad_id=2)
    one_by_one, expected_lengths = VisionLanguageModel.splice_batch(model, rows, features, pad_id=2)
    assert torch.equal(lengths, expected_lengths)
    for row, length in enumerate(lengths.tolist()):  # what pads a row is masked out: any value does
        assert torch.equal(embeds[row, :length], one_by_one[row, :length])
    embeds.square().sum().backward()
    embedding = model.language_model.embed_tokens.weight
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0
