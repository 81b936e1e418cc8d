"""Where evspec's Triton kernels run, shared by ``attention.py`` and ``few_rows.py``.

Triton ships with CUDA builds of PyTorch; CPU builds have none, and the kernels' callers keep
their PyTorch paths there. Under ``TRITON_INTERPRET=1`` the kernels also run on CPU tensors,
through Triton's interpreter, which is how the tests check them.
"""

from __future__ import annotations

import functools
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None


def triton_runs_on(x: torch.Tensor) -> bool:
    """Whether a Triton kernel can take ``x``: Triton present, and a CUDA tensor or the interpreter."""
    return triton is not None and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


@functools.lru_cache(maxsize=None)
def multiprocessors(device: torch.device) -> int:
    """The device's SM count; 2 elsewhere (the interpreter), so launch shapes still use several programs."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2
