"""A stand-in VLM over a tiny ``LlamaForCausalLM`` and a tiny on-disk dataset.

The stand-in implements the real ``VisionLanguageModel`` interface (load -> preprocess -> encode ->
splice) so the runner is exercised exactly as with the real families, in milliseconds.
"""

from __future__ import annotations

import gc
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM

from evspec.data.dataset import Sample
from evspec.errors import InputError, ModelError
from evspec.models.base import Prepared, VisionLanguageModel, VisualFeatures, VisualInput
from evspec.runtime.decode import LanguageModel

VOCAB = 64
PLACEHOLDER = 3
EOS = 2


class _Tokenizer:
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(f"t{i}" for i in ids)


class StandInModel(VisionLanguageModel):
    """Event images -> 8x8 pixels -> a linear projection into a 2-layer LLaMA's embedding space."""

    family = "standin"
    modality = "event_frames"

    def __init__(self, name: str, device: torch.device, dtype: torch.dtype, calls: Counter) -> None:
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        )
        self.causal_lm = LlamaForCausalLM(config).eval().to(device=device, dtype=dtype)
        self.language_model = LanguageModel.from_causal_lm(self.causal_lm)
        self.projector = torch.nn.Linear(3 * 8 * 8, 32).to(device=device, dtype=dtype)
        self.name = name
        self.tokenizer = _Tokenizer()
        self.calls = calls

    def load(self, sample: Sample) -> VisualInput:
        self.calls[("load", self.name, sample.id)] += 1
        self.calls[("gc enabled in a sample", gc.isenabled())] += 1
        frames = []
        for path in sample.event_image_paths:
            if not path.is_file():
                raise InputError("event image is missing", path)
            frames.append(np.asarray(Image.open(path).convert("RGB")))
        return VisualInput(modality="event_frames", frames=frames)

    def prompt(self, query: str) -> str:
        return f"USER: <image>\n{query} ASSISTANT:"

    def preprocess(self, visual: VisualInput, query: str) -> Prepared:
        pixels = np.stack([np.asarray(Image.fromarray(f).resize((8, 8))) for f in visual.frames])
        tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(self.device, self.dtype) / 255.0
        ids = [1, PLACEHOLDER] + [4 + (ord(c) % (VOCAB - 4)) for c in query[:20]]
        return Prepared(input_ids=torch.tensor([ids], device=self.device), pixel_values=tensor)

    def encode(self, prepared: Prepared) -> VisualFeatures:
        return VisualFeatures(embeds=self.projector(prepared.pixel_values.flatten(1)))

    def splice(self, prepared: Prepared, features: VisualFeatures) -> torch.Tensor:
        ids = prepared.input_ids[0]
        text = self.language_model.embed_tokens(ids)
        at = int((ids == PLACEHOLDER).nonzero()[0])
        return torch.cat([text[:at], features.embeds, text[at + 1:]]).unsqueeze(0)

    def reference_generate(self, prepared: Prepared, max_new_tokens: int, min_new_tokens: int = 0) -> list[int]:
        return self.generate(prepared, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens).token_ids

    @property
    def eos_token_ids(self) -> list[int]:
        return [EOS]


@pytest.fixture
def calls() -> Counter:
    return Counter()


@pytest.fixture
def loader(calls: Counter) -> Callable[[str, torch.device, torch.dtype], StandInModel]:
    """A model loader like the registry's; names starting with 'bad' fail like an unknown name."""

    def load(name: str, device: torch.device, dtype: torch.dtype) -> StandInModel:
        calls[("model", name)] += 1
        if name.startswith("bad"):
            raise ModelError(f"unknown model {name!r}")
        return StandInModel(name, device, dtype, calls)

    return load


def make_dataset(root: Path, n: int = 3, missing: tuple[int, ...] = ()) -> Path:
    """``n`` clips of two 16x12 event images each; clips in ``missing`` reference absent files."""
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n):
        images = []
        for j in range(2):
            rel = f"event_image/seq/clip{i}_{j}.png"
            if i not in missing:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(root / rel)
            images.append(rel)
        rows.append({"id": f"clip{i}", "split": "test", "query": f"What moves in clip {i}?", "event_image": images})
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(rows), encoding="utf-8")
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data", n=3)
