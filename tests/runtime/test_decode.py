"""The decode seam: equality with transformers' generate(), roll-back, the static cache, sampling."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM

from evspec.errors import ConfigError
from evspec.runtime.decode import (
    EagerState,
    LanguageModel,
    SamplingConfig,
    decode,
    prefill,
    probabilities,
)
from evspec.runtime.static import StaticDecoder

VOCAB = 300


@pytest.fixture(scope="module")
def causal_lm() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    return LlamaForCausalLM(config).eval()


def _prompt(seed: int, length: int = 17) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", range(4))
def test_decoupled_decode_equals_generate(causal_lm: LlamaForCausalLM, seed: int) -> None:
    ids = _prompt(seed)
    reference = causal_lm.generate(ids, max_new_tokens=30, do_sample=False, pad_token_id=0)[0, ids.shape[1]:]
    lm = LanguageModel.from_causal_lm(causal_lm)
    ours = decode(prefill(lm, causal_lm.get_input_embeddings()(ids)), max_new_tokens=30).token_ids
    assert ours == reference.tolist()


def test_rollback_then_extend_reproduces_logits(causal_lm: LlamaForCausalLM) -> None:
    lm = LanguageModel.from_causal_lm(causal_lm)
    ids = _prompt(1, 20)[0]
    state = EagerState(lm)
    state.extend(token_ids=ids[:12])
    first = state.extend(token_ids=ids[12:]).logits
    state.rollback(12)
    assert state.length == 12
    again = state.extend(token_ids=ids[12:]).logits
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    with pytest.raises(ValueError):
        state.rollback(state.length + 1)


def test_static_cache_matches_eager(causal_lm: LlamaForCausalLM) -> None:
    model = LlamaForCausalLM(causal_lm.config).eval().double()
    model.load_state_dict(causal_lm.state_dict())
    lm = LanguageModel.from_causal_lm(model)
    decoder = StaticDecoder(lm, max_length=96)
    for seed in range(3):
        embeds = model.get_input_embeddings()(_prompt(seed))
        eager = decode(prefill(lm, embeds), max_new_tokens=40).token_ids
        static = decode(prefill(lm, embeds, decoder), max_new_tokens=40).token_ids
        assert eager == static
    state = decoder(lm)
    ids = _prompt(7, 30)[0]
    full = state.extend(token_ids=ids).logits
    state.rollback(10)
    part = state.extend(token_ids=ids[10:]).logits
    torch.testing.assert_close(full[10:], part, rtol=1e-9, atol=1e-9)


def test_static_state_is_invalidated_by_a_newer_sequence(causal_lm: LlamaForCausalLM) -> None:
    lm = LanguageModel.from_causal_lm(causal_lm)
    decoder = StaticDecoder(lm, max_length=64)
    old = decoder(lm)
    decoder(lm)
    with pytest.raises(RuntimeError, match="newer sequence"):
        old.extend(token_ids=[1, 2])


def test_context_limit_is_a_clear_error(causal_lm: LlamaForCausalLM) -> None:
    lm = LanguageModel.from_causal_lm(causal_lm)
    too_long = causal_lm.get_input_embeddings()(_prompt(0, lm.context_length))
    with pytest.raises(ConfigError, match="context"):
        prefill(lm, too_long)
    with pytest.raises(ConfigError, match="exceeds"):
        StaticDecoder(lm, max_length=lm.context_length + 1)


def test_decode_stops_at_context_limit(causal_lm: LlamaForCausalLM) -> None:
    lm = LanguageModel.from_causal_lm(causal_lm)
    embeds = causal_lm.get_input_embeddings()(_prompt(0, lm.context_length - 5))
    out = decode(prefill(lm, embeds), max_new_tokens=50)
    assert len(out.token_ids) == 6  # 5 free cache slots + the last token, which needs none


def test_min_new_tokens_masks_eos(causal_lm: LlamaForCausalLM) -> None:
    lm = LanguageModel.from_causal_lm(causal_lm)
    embeds = causal_lm.get_input_embeddings()(_prompt(2))
    free = decode(prefill(lm, embeds), max_new_tokens=12).token_ids
    eos = free[3]  # pretend the 4th greedy token is EOS
    stopped = decode(prefill(lm, embeds), max_new_tokens=12, eos_token_ids=[eos])
    assert stopped.stopped_on_eos and stopped.token_ids[-1] == eos and len(stopped.token_ids) <= 4
    forced = decode(prefill(lm, embeds), max_new_tokens=12, eos_token_ids=[eos], min_new_tokens=12)
    assert len(forced.token_ids) == 12 and eos not in forced.token_ids


def test_sampling_is_seeded(causal_lm: LlamaForCausalLM) -> None:
    lm = LanguageModel.from_causal_lm(causal_lm)
    embeds = causal_lm.get_input_embeddings()(_prompt(3))
    runs = [
        decode(prefill(lm, embeds), max_new_tokens=20, sampling=SamplingConfig(temperature=1.0, seed=s)).token_ids
        for s in (5, 5, 6)
    ]
    assert runs[0] == runs[1] and runs[0] != runs[2]


@settings(max_examples=60, deadline=None)
@given(
    logits=st.lists(st.floats(-8, 8, allow_nan=False), min_size=2, max_size=12),
    temperature=st.floats(0.1, 3.0),
    top_p=st.floats(0.05, 1.0),
)
def test_top_p_keeps_the_smallest_head_reaching_p(logits: list[float], temperature: float, top_p: float) -> None:
    raw = torch.tensor(logits, dtype=torch.float64)
    probs = probabilities(raw, SamplingConfig(temperature=temperature, top_p=top_p))
    assert torch.isclose(probs.sum(), torch.tensor(1.0, dtype=probs.dtype), atol=1e-5)
    full = torch.softmax(raw / temperature, -1)
    kept = probs > 0
    # every kept token is at least as likely as every dropped one, and the kept mass before the
    # least likely kept token is still below top_p (so it was needed).
    if (~kept).any():
        assert full[kept].min() >= full[~kept].max() - 1e-6
    assert full[kept].sum() - full[kept].min() < top_p + 1e-6


def test_bad_sampling_settings() -> None:
    with pytest.raises(ConfigError):
        SamplingConfig(temperature=-1)
    with pytest.raises(ConfigError):
        SamplingConfig(top_p=0)


def test_static_cache_attends_by_length_bucket(causal_lm: LlamaForCausalLM, monkeypatch: pytest.MonkeyPatch) -> None:
    import evspec.runtime.static as static

    monkeypatch.setattr(static, "KV_BUCKET", 8)  # many bucket crossings in a short run
    model = LlamaForCausalLM(causal_lm.config).eval().double()
    model.load_state_dict(causal_lm.state_dict())
    lm = LanguageModel.from_causal_lm(model)
    embeds = model.get_input_embeddings()(_prompt(4, 13))
    eager = decode(prefill(lm, embeds), max_new_tokens=50).token_ids
    static_tokens = decode(prefill(lm, embeds, StaticDecoder(lm, max_length=100)), max_new_tokens=50).token_ids
    assert eager == static_tokens


@pytest.mark.parametrize("k", [1, 3, 5, 6, 7])
def test_static_pads_passes_without_changing_results(causal_lm: LlamaForCausalLM, k: int) -> None:
    """A k-token pass is padded to a power of two; the real rows and later passes are unaffected."""
    model = LlamaForCausalLM(causal_lm.config).eval().double()
    model.load_state_dict(causal_lm.state_dict())
    lm = LanguageModel.from_causal_lm(model)
    ids = _prompt(9, 30)[0]
    eager = EagerState(lm)
    eager.extend(token_ids=ids[:10])
    reference = eager.extend(token_ids=ids[10:10 + k]).logits
    after = eager.extend(token_ids=ids[10 + k:10 + k + 2]).logits
    state = StaticDecoder(lm, max_length=64)(lm)
    state.extend(token_ids=ids[:10])
    padded = state.extend(token_ids=ids[10:10 + k])
    assert padded.logits.shape[0] == k and state.length == 10 + k
    torch.testing.assert_close(padded.logits, reference, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(state.extend(token_ids=ids[10 + k:10 + k + 2]).logits, after, rtol=1e-9, atol=1e-9)


def test_static_does_not_pad_past_the_cache(causal_lm: LlamaForCausalLM) -> None:
    lm = LanguageModel.from_causal_lm(causal_lm)
    state = StaticDecoder(lm, max_length=16)(lm)
    state.extend(token_ids=list(range(10)))
    out = state.extend(token_ids=[1, 2, 3, 4, 5])  # 5 -> 8 would pass the 16-slot cache: stays 5
    assert out.logits.shape[0] == 5 and state.length == 15


def test_static_fuses_projection_weights_in_place(causal_lm: LlamaForCausalLM) -> None:
    """Q/K/V and gate/up become views of one matrix each: same values, no copy kept, reused by a
    second decoder; results equal the unfused decoder's."""
    model = LlamaForCausalLM(causal_lm.config).eval().double()
    model.load_state_dict(causal_lm.state_dict())
    lm = LanguageModel.from_causal_lm(model)
    attn = model.model.layers[0].self_attn
    before = {name: getattr(attn, name).weight.clone() for name in ("q_proj", "k_proj", "v_proj")}
    ids = _prompt(3, 20)[0]
    plain = StaticDecoder(lm, max_length=32, fuse_projections_in_place=False)(lm)
    expected = [plain.extend(token_ids=ids[:12]).logits, plain.extend(token_ids=ids[12:16]).logits]
    first = StaticDecoder(lm, max_length=32)
    storage = attn.q_proj.weight.untyped_storage().data_ptr()
    for name, weight in before.items():
        assert getattr(attn, name).weight.untyped_storage().data_ptr() == storage
        torch.testing.assert_close(getattr(attn, name).weight, weight, rtol=0, atol=0)
    assert StaticDecoder(lm, max_length=32).qkv[0] is first.qkv[0]
    state = first(lm)
    got = [state.extend(token_ids=ids[:12]).logits, state.extend(token_ids=ids[12:16]).logits]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_static_leaves_quantized_layers_unfused(causal_lm: LlamaForCausalLM) -> None:
    class Quantized(torch.nn.Linear):  # stands in for a bitsandbytes layer with its own forward
        pass

    model = LlamaForCausalLM(causal_lm.config).eval()
    attn = model.model.layers[0].self_attn
    q = Quantized(attn.q_proj.in_features, attn.q_proj.out_features, bias=False)
    q.weight = attn.q_proj.weight
    attn.q_proj = q
    decoder = StaticDecoder(LanguageModel.from_causal_lm(model), max_length=16)
    assert decoder.qkv[0] is None and decoder.qkv[1] is not None and decoder.gate_up[0] is not None


def test_static_attends_aligned_lengths(causal_lm: LlamaForCausalLM) -> None:
    """An odd max_length still gives every token pass an attended length that is a multiple of
    SLOT_ALIGN (aligned GEMMs); positions stay within max_length."""
    import evspec.runtime.static as static

    lm = LanguageModel.from_causal_lm(causal_lm)
    decoder = StaticDecoder(lm, max_length=37)
    seen: list[int] = []
    step = decoder._step
    decoder._step = lambda ids, positions, kv_len, *taps: (seen.append(kv_len), step(ids, positions, kv_len, *taps))[1]  # type: ignore[method-assign]
    state = decoder(lm)
    state.extend(token_ids=list(range(30)))
    state.extend(token_ids=[1, 2, 3])
    assert decoder.slots % static.SLOT_ALIGN == 0 and decoder.slots >= 37 and state.capacity == 37
    assert seen and all(kv_len % static.SLOT_ALIGN == 0 for kv_len in seen)
    with pytest.raises(ConfigError, match="exceeds the cache's 37 positions"):
        state.extend(token_ids=list(range(10)))  # past max_length, even though slots remain


def test_one_token_step_attention_matches_written_out(causal_lm: LlamaForCausalLM) -> None:
    """One-token steps use SDPA, passes over several tokens the written-out products: both must
    give the same logits for the same token (grouped K/V heads included)."""
    lm = LanguageModel.from_causal_lm(causal_lm)
    decoder = StaticDecoder(lm, max_length=64)
    state = decoder(lm)
    state.extend(token_ids=_prompt(3)[0].tolist())
    length = state.length
    ids = torch.tensor([[7]])
    positions = torch.tensor([length])
    with torch.inference_mode():
        fused = decoder._forward(lm.embed_tokens(ids), positions, decoder.slots, few_queries=False)[1]
        written_out = decoder._forward(lm.embed_tokens(ids), positions, decoder.slots, few_queries=True)[1]
        stepped = decoder._forward_ids(ids, positions, decoder.slots)[1]
    torch.testing.assert_close(fused, written_out, rtol=1e-4, atol=1e-5)
    assert torch.equal(stepped, fused) and not torch.equal(stepped, written_out)  # the step really runs SDPA
