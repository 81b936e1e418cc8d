"""Alignment rows computed inside the training loop (``evspec align train --online``): nothing stored.

Where a store would not fit on disk (a 7B pair's hidden states are ~1 MB a token), the rows a
training batch asks for are made when it asks, by the extraction's own :func:`extract_sample`
with the same models and settings: an online run trains on exactly the rows a store of the same
:class:`ExtractConfig` would hold (a test checks it). What it keeps between epochs is only each
sample's greedy answer (token ids), so the target decodes every sample once and afterwards only
runs the teacher-forced passes. The price: both models sit beside the head (memory), and every
row is recomputed every epoch (time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from evspec.align.extract import (
    ExtractConfig,
    extract_sample,
    field_shapes,
    load_pair,
    load_samples,
    n_layers,
    pair_bridge,
    resolve_layers,
    samples_fingerprint,
)
from evspec.align.store import STORE_DTYPES, AlignRow


class OnlineRows:
    """The rows of a would-be store, computed on request. Reads like :class:`~evspec.align.store.AlignStore`
    for training: ``len``, :meth:`rows`, :attr:`identity`, :meth:`field_width`, :attr:`fingerprint`."""

    def __init__(self, config: ExtractConfig, device: torch.device | str = "cpu") -> None:
        from evspec.models.registry import check_model_name
        from evspec.run.shared import resolve_device, resolve_dtype

        check_model_name(config.target)
        check_model_name(config.draft)
        self.config = replace(config, dataset=str(Path(config.dataset).resolve()))
        self.device = resolve_device(str(device))
        dtype = resolve_dtype(self.config.dtype, self.device)
        self.samples = load_samples(self.config)
        self.path = Path(self.config.dataset)
        self.identity: dict[str, Any] = {**self.config.identity(dtype), "samples_sha256": samples_fingerprint(self.samples),
                                         "online": True}
        self.target, self.draft = load_pair(self.config, self.device, dtype, None)
        self.layers = resolve_layers(self.config.layers, n_layers(self.target))
        self.bridge = pair_bridge(self.draft, self.target)
        self.fields = field_shapes(self.target, self.draft, self.config.store_dtype, self.config.target_visual)
        self._answers: dict[int, tuple[list[int], bool]] = {}  # sample index -> (greedy answer ids, stopped on EOS)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def fingerprint(self) -> str:
        """What names the rows: the samples (ids and questions); the models are in :attr:`identity`."""
        return str(self.identity["samples_sha256"])

    def field_width(self, name: str) -> int | None:
        shape = self.fields.get(name, {}).get("shape")
        return int(shape[-1]) if shape and isinstance(shape[-1], int) else None

    def rows(self, indices: Sequence[int]) -> list[AlignRow]:
        return [self.row(i) for i in indices]

    def row(self, index: int) -> AlignRow:
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} of {len(self)} samples")
        row = extract_sample(self.target, self.draft, self.samples[index], max_new_tokens=self.config.max_new_tokens,
                             layers=self.layers, bridge=self.bridge, store_dtype=STORE_DTYPES[self.config.store_dtype],
                             device="cpu", target_visual=self.config.target_visual, answer=self._answers.get(index))
        ids = row.target_ids[1:].tolist()
        self._answers[index] = (ids, bool(ids) and ids[-1] in self.target.eos_token_ids)
        row.index = index
        return row
