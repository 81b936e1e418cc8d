"""The one interface every model family implements (docs/ARCHITECTURE.md's data flow).

    load        Sample -> VisualInput            files on disk -> RGB frames (NumPy)
    preprocess  VisualInput, query -> Prepared   pixel tensors + prompt ids on the device
    encode      Prepared -> VisualFeatures       vision tower + projector, computed once
    splice      Prepared, VisualFeatures -> embeds [1, L, D] for prefill
    prefill / decode                             evspec.runtime.decode over ``language_model``

Each arrow is one method with typed inputs and outputs; the benchmark times them from outside.
``reference_generate`` is the family's own monolithic ``generate()``, kept only to prove that the
decoupled path gives the same tokens (``evspec verify``).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import torch

from evspec.runtime.decode import (
    DecodeResult,
    LanguageModel,
    SamplingConfig,
    decode,
    prefill,
)

if TYPE_CHECKING:
    from evspec.data.dataset import Sample

Modality = Literal["event_frames", "video", "image"]

F = TypeVar("F", bound=Callable[..., Any])


def inference_stage(method: F) -> F:
    """A stage runs in inference mode, unless its model's modules are in training mode
    (``evspec train`` calls the same stages with autograd recording): one forward pass for both."""

    @functools.wraps(method)
    def run(self: VisionLanguageModel, *args: Any, **kwargs: Any) -> Any:
        if self.trainable_module.training:
            return method(self, *args, **kwargs)
        with torch.inference_mode():
            return method(self, *args, **kwargs)

    return run  # type: ignore[return-value]


@dataclass
class VisualInput:
    """Raw pixels as loaded from disk: a list of HxWx3 uint8 RGB frames."""

    modality: Modality
    frames: list[np.ndarray]


@dataclass
class Prepared:
    """Model inputs on the device. ``input_ids`` hold the family's visual placeholder(s)."""

    input_ids: torch.Tensor  # [1, L] long
    pixel_values: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class VisualFeatures:
    """Projected visual tokens in the language model's embedding space."""

    embeds: torch.Tensor  # [N, hidden]

    @property
    def n_tokens(self) -> int:
        return int(self.embeds.shape[0])


class VisionLanguageModel(ABC):
    """A VLM split into the stages evspec times. Subclasses: EventGPT, Video-LLaVA, LLaVA-1.5."""

    family: str  # "eventgpt" | "videollava" | "llava"
    modality: Modality
    name: str
    tokenizer: object
    language_model: LanguageModel

    # ---- stages
    @abstractmethod
    def load(self, sample: Sample) -> VisualInput:
        """Read the sample's visual input for this family from disk (no device work)."""

    @abstractmethod
    def prompt(self, query: str) -> str:
        """The family's chat template around ``query``, with its visual placeholder."""

    @abstractmethod
    def preprocess(self, visual: VisualInput, query: str) -> Prepared:
        """Pixels -> normalised tensors, prompt -> ids; both on the model's device."""

    @abstractmethod
    def encode(self, prepared: Prepared) -> VisualFeatures:
        """Vision tower + projector (+ EventGPT's adaptor and aggregation): run once per sample."""

    @abstractmethod
    def splice(self, prepared: Prepared, features: VisualFeatures) -> torch.Tensor:
        """Text embeddings with the visual tokens in place of the placeholder(s): [1, L, hidden]."""

    @abstractmethod
    def reference_generate(self, prepared: Prepared, max_new_tokens: int, min_new_tokens: int = 0) -> list[int]:
        """Greedy tokens from the family's own monolithic generate() (new tokens only)."""

    def encode_batch(self, prepared: Sequence[Prepared]) -> list[VisualFeatures]:
        """``encode`` of several samples, in one pass where the family can batch (training)."""
        return [self.encode(p) for p in prepared]

    def splice_batch(self, prepared: Sequence[Prepared], features: Sequence[VisualFeatures], *,
                     pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``splice`` of several samples, right-padded: embeddings [B, L, D] and each row's length.
        Families whose splice takes a batch of ids do it in one pass (training)."""
        rows = [self.splice(p, f)[0] for p, f in zip(prepared, features)]
        lengths = torch.tensor([r.shape[0] for r in rows])
        width = int(lengths.max())
        padded = torch.stack([torch.nn.functional.pad(r, (0, 0, 0, width - r.shape[0])) for r in rows])
        return padded, lengths

    # ---- shared
    @property
    def trainable_module(self) -> torch.nn.Module:
        """The whole model as one ``nn.Module`` (towers, projector, language model)."""
        return self.model  # type: ignore[attr-defined]

    @property
    def device(self) -> torch.device:
        return self.language_model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.dtype

    @property
    @abstractmethod
    def eos_token_ids(self) -> list[int]:
        """Token ids that end an answer."""

    def decode_text(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True).strip()  # type: ignore[attr-defined]

    def generate(
        self,
        prepared: Prepared,
        *,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        sampling: SamplingConfig = SamplingConfig(),
        features: VisualFeatures | None = None,
    ) -> DecodeResult:
        """Decoupled generation: encode once (unless ``features`` are given), prefill, decode."""
        with torch.inference_mode():
            features = self.encode(prepared) if features is None else features
            embeds = self.splice(prepared, features)
        prefilled = prefill(self.language_model, embeds)
        return decode(
            prefilled, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
            eos_token_ids=self.eos_token_ids, sampling=sampling,
        )
