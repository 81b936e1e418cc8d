"""The few-row linear kernel (norm prologue, SiLU x up and residual epilogues), run by Triton's CPU
interpreter against the unfused LLaMA operations.

Each check runs in a fresh interpreter process (``tests/runtime/interpreter.py``); fp32 only: the
interpreter's bf16 is emulated through numpy and not what a GPU computes.
"""

from __future__ import annotations

import pytest

from tests.runtime.interpreter import run_interpreted

pytest.importorskip("triton", reason="Triton is a test dependency on Linux; the kernel has a cuBLAS fallback")

KERNEL_VS_UNFUSED = """
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from evspec.runtime.few_rows import Tiling, few_rows_linear, few_rows_supported

gen = torch.Generator().manual_seed(0)
cases = [  # rows, N, K, tiling (None: tiling_for's)
    (1, 48, 64, None), (3, 40, 96, Tiling(block_n=16, block_k=32)), (8, 64, 128, Tiling(block_n=32, block_k=64)),
    (16, 33, 70, Tiling(block_n=16, block_k=32)), (5, 100, 256, None),
]
checked = 0
for rows, n, k, tiling in cases:
    x = torch.randn(1, rows, k, generator=gen)
    assert few_rows_supported(x)
    norm = LlamaRMSNorm(k, eps=1e-5)
    norm.weight.data = torch.rand(k, generator=gen) + 0.5
    w = torch.randn(n, k, generator=gen) / k ** 0.5
    gate_up = torch.randn(2 * n, k, generator=gen) / k ** 0.5
    residual = torch.randn(1, rows, n, generator=gen)
    expected = {
        "plain": F.linear(x, w),
        "norm": F.linear(norm(x), w),
        "residual": residual + F.linear(x, w),
        "norm+gated": F.silu(F.linear(norm(x), gate_up[:n])) * F.linear(norm(x), gate_up[n:]),
        "gated+residual": residual + F.silu(F.linear(x, gate_up[:n])) * F.linear(x, gate_up[n:]),
    }
    got = {
        "plain": few_rows_linear(x, w, tiling=tiling),
        "norm": few_rows_linear(x, w, norm_weight=norm.weight, eps=1e-5, tiling=tiling),
        "residual": few_rows_linear(x, w, residual=residual, tiling=tiling),
        "norm+gated": few_rows_linear(x, gate_up, norm_weight=norm.weight, eps=1e-5, gated=True, tiling=tiling),
        "gated+residual": few_rows_linear(x, gate_up, gated=True, residual=residual, tiling=tiling),
    }
    for name, reference in expected.items():
        assert got[name].shape == reference.shape, (name, got[name].shape, reference.shape)
        err = (got[name] - reference).abs().max().item()
        assert err < 1e-4, (rows, n, k, name, err)
        checked += 1
try:
    few_rows_linear(torch.randn(17, 64), torch.randn(8, 64))
except ValueError as error:
    assert "17" in str(error), error
else:
    raise AssertionError("17 rows were accepted")
print("ok", checked)
"""

QKV_INTO_CACHE = """
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from evspec.runtime.few_rows import qkv_into_cache
from evspec.runtime.static import _apply_rotary

gen = torch.Generator().manual_seed(0)
cases = [  # heads, kv_heads, head_dim, hidden, rows, first position, slots, block_k
    (4, 2, 32, 96, 5, 10, 64, 32), (2, 2, 64, 128, 8, 0, 64, 128), (8, 1, 32, 64, 16, 40, 128, 64), (4, 4, 32, 80, 1, 63, 64, 64),
]
for heads, kv_heads, head_dim, hidden, rows, first, slots, block_k in cases:
    x = torch.randn(1, rows, hidden, generator=gen)
    norm = LlamaRMSNorm(hidden, eps=1e-6)
    norm.weight.data = torch.rand(hidden, generator=gen) + 0.5
    weight = torch.randn((heads + 2 * kv_heads) * head_dim, hidden, generator=gen) / hidden ** 0.5
    positions = torch.arange(first, first + rows)
    angles = positions[:, None].float() * torch.rand(head_dim // 2, generator=gen)[None]
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    k_cache, v_cache = (torch.full((1, kv_heads, slots, head_dim), 7.0) for _ in range(2))
    q = qkv_into_cache(x, weight, norm.weight, 1e-6, cos, sin, positions, k_cache, v_cache, block_k=block_k)
    sizes = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
    rq, rk, rv = (t.view(1, rows, -1, head_dim).transpose(1, 2) for t in F.linear(norm(x), weight).split(sizes, -1))
    rk = _apply_rotary(rk, cos[None, None], sin[None, None])
    assert q.shape == rq.shape, (q.shape, rq.shape)
    assert (q - rq).abs().max() < 1e-4, (q - rq).abs().max()
    assert (k_cache[:, :, first:first + rows] - rk).abs().max() < 1e-4
    assert (v_cache[:, :, first:first + rows] - rv).abs().max() < 1e-4
    untouched = torch.ones(slots, dtype=torch.bool)
    untouched[first:first + rows] = False
    assert (k_cache[:, :, untouched] == 7.0).all() and (v_cache[:, :, untouched] == 7.0).all()
try:
    qkv_into_cache(torch.randn(1, 2, 64), torch.randn(64, 64), torch.ones(64), 1e-6, torch.ones(2, 16),
                   torch.zeros(2, 16), torch.arange(2), torch.zeros(1, 1, 8, 16), torch.zeros(1, 1, 8, 16))
except ValueError as error:
    assert "head_dim 16" in str(error), error
else:
    raise AssertionError("head_dim 16 was accepted")
print("ok", len(cases))
"""

DECODER_PASS = """
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from evspec.runtime.decode import LanguageModel
from evspec.runtime.static import StaticDecoder

torch.manual_seed(0)
config = LlamaConfig(vocab_size=300, hidden_size=128, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
model = LlamaForCausalLM(config).eval()
with torch.no_grad():  # norms start as ones: make each layer's two norms tell apart
    for name, param in model.named_parameters():
        if "norm" in name:
            param.uniform_(0.5, 1.5)
lm = LanguageModel.from_causal_lm(model)
fused = StaticDecoder(lm, max_length=96)
cublas = StaticDecoder(lm, max_length=96, few_row_kernels=False)
assert fused.few_row_layers is not None and cublas.few_row_layers is None
logits = []
for decoder in (fused, cublas):
    state = decoder(lm)
    state.extend(token_ids=list(range(3, 40)))
    logits.append(state.extend(token_ids=[7, 8, 9, 10, 11]).logits)
err = (logits[0] - logits[1]).abs().max().item()
assert err < 1e-4, err
print("ok", err)
"""

SPECULATIVE = """
import torch
from evspec.runtime.static import StaticDecoder
from evspec.spec.engine import speculative_generate, target_only
from evspec.spec.proposers import DraftModelProposer, NgramProposer
from evspec.spec.vocab import identity_map
from tests.spec.conftest import EOS, tiny_lm
from tests.spec.test_lossless_greedy import noisy_copy, prompt_for

target = tiny_lm(3, 64, hidden=128)  # head_dim 32: the QKV kernel's smallest
near = noisy_copy(target, 64, 0.05, seed=1)
target_decoder, draft_decoder = StaticDecoder(target, max_length=64), StaticDecoder(near, max_length=64)
assert target_decoder.few_row_layers is not None and draft_decoder.few_row_layers is not None
same = identity_map(64, 64, draft_eos=[EOS], target_eos=[EOS])
runs = 0
for gamma in (1, 2, 3, 5, 8):
    prompt = prompt_for(gamma, vocab=64)
    base = target_only(target, prompt_ids=prompt, eos_token_ids=[EOS], max_new_tokens=20, state_factory=target_decoder)
    for proposer in (DraftModelProposer(near, same, state_factory=draft_decoder), NgramProposer()):
        out = speculative_generate(target, proposer, prompt_ids=prompt, eos_token_ids=[EOS], max_new_tokens=20,
                                   gamma=gamma, adaptive_gamma=gamma == 3, state_factory=target_decoder)
        assert out.token_ids == base.token_ids, (gamma, proposer.name, out.token_ids, base.token_ids)
        assert out.counts.target_passes < len(base.token_ids) or gamma == 1 or proposer.name == "ngram"
        runs += 1
print("ok", runs)
"""


def test_few_rows_kernel_matches_the_unfused_operations() -> None:
    """Plain, RMSNorm prologue, residual and SiLU x up epilogues, alone and together; 1-16 rows,
    K and N that the tiles do and do not divide: equal to the unfused LLaMA operations."""
    assert run_interpreted(KERNEL_VS_UNFUSED).startswith("ok 25")


def test_qkv_into_cache_matches_norm_projection_rotary_and_cache_writes() -> None:
    """GQA and plain heads, 1-16 rows, K blocks that do and do not divide the width: queries equal
    the unrotated projection, the cache holds the rotated keys and the values at exactly the
    rows' positions, and every other slot is untouched."""
    assert run_interpreted(QKV_INTO_CACHE).startswith("ok 4")


def test_static_decoder_pass_through_the_kernel_matches_cublas() -> None:
    """A StaticDecoder pass over several tokens through the fused kernels gives the logits of the
    same pass through the unfused products."""
    assert run_interpreted(DECODER_PASS).startswith("ok")


def test_speculative_decoding_through_the_kernels_is_lossless() -> None:
    """Greedy speculative decoding with target and draft in StaticDecoders whose verify and
    catch-up passes run the fused kernels and the split-KV attention equals the target alone
    through the same decoder (where the kernels never run: one-token steps), for gamma 1-8."""
    assert run_interpreted(SPECULATIVE).startswith("ok 10")
