"""The split-KV Triton attention, run by Triton's CPU interpreter against SDPA.

The interpreter is chosen when ``triton.jit`` decorates the kernels, so each check runs in a fresh
interpreter process with ``TRITON_INTERPRET=1``. fp32 only: the interpreter's bf16 is emulated
through numpy and not what a GPU computes.
"""

from __future__ import annotations

import pytest

from tests.runtime.interpreter import run_interpreted

pytest.importorskip("triton", reason="Triton is a test dependency on Linux; the kernel has a written-out fallback")

KERNEL_VS_SDPA = """
import torch
import torch.nn.functional as F
from evspec.runtime.attention import split_kv_attention, split_kv_supported
from evspec.runtime.static import _apply_rotary

def rope(k, head_dim, positions):
    inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = positions[:, None].float() * inv[None]
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos(), emb.sin()

gen = torch.Generator().manual_seed(0)
cases = [  # heads, kv_heads, head_dim, queries, last position, slots, programs
    (4, 2, 16, 1, 0, 64, 4), (4, 2, 16, 3, 40, 64, 4), (4, 4, 32, 8, 63, 64, 7),
    (8, 1, 16, 5, 130, 192, 4), (4, 2, 32, 2, 199, 256, 16), (2, 2, 16, 8, 64, 128, 3),
]
for heads, kv_heads, head_dim, k, last, slots, programs in cases:
    # q as the decoder makes it: a head-major view of a [1, k, heads * head_dim] projection
    q = torch.randn(1, k, heads * head_dim, generator=gen).view(1, k, heads, head_dim).transpose(1, 2)
    keys, values = (torch.randn(1, kv_heads, slots, head_dim, generator=gen) for _ in range(2))
    keys[:, :, last + 1:] = float("nan")  # slots past the last query are never read
    values[:, :, last + 1:] = float("nan")
    positions = torch.arange(last - k + 1, last + 1)
    cos, sin = rope(k, head_dim, positions)
    assert split_kv_supported(q)
    out = split_kv_attention(q, cos, sin, keys, values, positions, slots, head_dim ** -0.5, programs)
    mask = torch.arange(last + 1)[None] <= positions[:, None]
    rotated = _apply_rotary(q, cos[None, None], sin[None, None])
    reference = F.scaled_dot_product_attention(
        rotated, keys[:, :, :last + 1], values[:, :, :last + 1], attn_mask=mask, enable_gqa=True)
    reference = reference.transpose(1, 2).reshape(1, k, heads * head_dim)
    assert out.shape == reference.shape, (out.shape, reference.shape)
    err = (out - reference).abs().max().item()
    assert err < 1e-5, (heads, kv_heads, head_dim, k, last, slots, programs, err)
print("ok", len(cases))
"""

DECODER_PASS = """
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from evspec.runtime.decode import LanguageModel
from evspec.runtime.static import StaticDecoder

torch.manual_seed(0)
config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
lm = LanguageModel.from_causal_lm(LlamaForCausalLM(config).eval())
decoder = StaticDecoder(lm, max_length=96)
state = decoder(lm)
state.extend(token_ids=list(range(3, 40)))
ids = torch.tensor([[7, 8, 9, 10, 11]])
positions = torch.arange(state.length, state.length + 5)
with torch.inference_mode():
    kernel = decoder._forward(lm.embed_tokens(ids), positions, decoder.slots, few_queries=True)[1]
    sdpa = decoder._forward(lm.embed_tokens(ids), positions, decoder.slots, few_queries=False)[1]
err = (kernel - sdpa).abs().max().item()
assert err < 1e-4, err
print("ok", err)
"""


def test_split_kv_matches_sdpa_with_rotary_and_gqa() -> None:
    """Grouped heads, 1-8 queries, splits that do and do not divide the keys, NaN past the last
    query (so skipped slots are really skipped): equal to rotary + SDPA within fp32 rounding."""
    assert run_interpreted(KERNEL_VS_SDPA).startswith("ok 6")


def test_static_decoder_pass_uses_the_kernel_and_matches_sdpa() -> None:
    """A StaticDecoder pass over several tokens (verify, catch-up) through the kernel gives the
    logits of the same pass through SDPA."""
    assert run_interpreted(DECODER_PASS).startswith("ok")
