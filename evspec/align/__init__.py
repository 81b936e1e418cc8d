"""Alignment: data and modules that make a draft agree with its target (issue 14).

- :mod:`evspec.align.store`: the store the heads train on (sharded safetensors, per-rank index
  parts merged into ``index.json``, memory-mapped :class:`~evspec.align.store.AlignStore` with a
  seeded streaming epoch);
- :mod:`evspec.align.extract`: the target's greedy answers and both models' hidden states and
  visual features, per sample (:func:`~evspec.align.extract.extract_sample`, also online) and into
  a resumable, rank-aware store (:func:`~evspec.align.extract.extract_store`, ``evspec align extract``);
- :mod:`evspec.align.heads`: the adapters and EAGLE-style heads.

Nothing is imported here, so ``import evspec.align`` stays free of torch.
"""
