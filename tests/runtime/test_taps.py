"""Hidden-state taps of the decode seam, last-row prefill logits, the feature buffer, and what a
StaticDecoder leaves of the caller's process and model.

Taps are checked against transformers' own ``output_hidden_states`` of one fresh forward pass
over the whole sequence (float64: the cache's passes and the fresh pass differ only in the last
bits), on the eager path and on the static path's three kinds of pass (prefill, one-token step,
pass over several tokens), after roll-backs.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from evspec.errors import ConfigError
from evspec.runtime.decode import (
    FINAL,
    EagerState,
    FeatureBuffer,
    LanguageModel,
    Prefilled,
    Taps,
    decode,
    prefill,
    resolve_taps,
)
from evspec.runtime.static import StaticDecoder

VOCAB = 300
LAYERS = 3
ALL_TAPS = (0, 1, 2, 3)  # embeddings, after layers 1 and 2, after the final norm


def _model(seed: int = 0, dtype: torch.dtype = torch.float64, layers: int = LAYERS) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    return LlamaForCausalLM(config).eval().to(dtype)


@pytest.fixture(scope="module")
def causal_lm() -> LlamaForCausalLM:
    return _model()


def _ids(seed: int, length: int) -> list[int]:
    return torch.randint(0, VOCAB, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def _reference(model: LlamaForCausalLM, ids: list[int]) -> tuple[torch.Tensor, ...]:
    """transformers' hidden_states of one forward pass over ``ids``: index i -> [len(ids), hidden]."""
    with torch.inference_mode():
        out = model.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    assert len(out.hidden_states) == LAYERS + 1
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state, rtol=0, atol=0)  # the convention
    return tuple(h[0] for h in out.hidden_states)


def _close(got: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def _factories(lm: LanguageModel) -> dict[str, object]:
    return {"eager": EagerState, "static": StaticDecoder(lm, max_length=96)}


@pytest.mark.parametrize("path", ["eager", "static"])
def test_taps_equal_transformers_hidden_states(causal_lm: LlamaForCausalLM, path: str) -> None:
    """Prefill (embeddings), a pass over several tokens, one-token steps, after a roll-back: each
    appended row of each tapped layer equals that position's row of output_hidden_states."""
    lm = LanguageModel.from_causal_lm(causal_lm)
    state = _factories(lm)[path](lm)
    ids = _ids(1, 40)
    taps = (3, 0, 2, -3)  # any order; -3 is layer 1 counted from the end
    got: dict[int, list[torch.Tensor]] = {t: [] for t in taps}

    def add(step) -> None:
        assert set(step.taps) == set(taps)
        for t in taps:
            got[t].append(step.taps[t])

    step = state.extend(embeds=lm.embed_tokens(torch.tensor([ids[:20]])), last_only=True, taps=taps)
    assert step.logits.shape == (1, VOCAB) and step.hidden.shape == (1, 64)
    assert all(rows.shape == (20, 64) for rows in step.taps.values())  # every prompt row, also with last_only
    add(step)
    add(state.extend(token_ids=ids[20:27], taps=taps))  # a verify-like pass over 7 (padded to 8 when static)
    state.rollback(24)  # reject the last three
    for t in taps:
        got[t][-1] = got[t][-1][:4]
    for i in range(24, 30):
        add(state.extend(token_ids=[ids[i]], taps=taps))  # one-token steps
    add(state.extend(token_ids=ids[30:33], taps=taps))
    reference = _reference(causal_lm, ids[:33])
    for t in taps:
        _close(torch.cat(got[t]), reference[t])


@pytest.mark.parametrize("path", ["eager", "static"])
def test_no_taps_asked_none_returned(causal_lm: LlamaForCausalLM, path: str) -> None:
    lm = LanguageModel.from_causal_lm(causal_lm)
    state = _factories(lm)[path](lm)
    assert state.extend(token_ids=_ids(2, 5)).taps == {}
    assert state.extend(token_ids=[3]).taps == {}


def test_eager_taps_hook_only_while_asked() -> None:
    """The hooks that collect layer outputs come off after the pass (also when it fails)."""
    lm = LanguageModel.from_causal_lm(_model(12))

    def hooks() -> list[int]:  # transformers installs its own (output_hidden_states) once, for good
        return [len(layer._forward_hooks) for layer in lm.body.layers]

    before = hooks()
    state = EagerState(lm)
    state.extend(token_ids=_ids(3, 6), taps=(1, 2))
    assert hooks() == before
    with pytest.raises(ConfigError):
        state.extend(token_ids=[1], taps=(LAYERS + 1,))
    lm.body.layers[1].register_forward_hook(lambda *args: 1 / 0)  # a pass that fails mid-way
    with pytest.raises(ZeroDivisionError):
        state.extend(token_ids=[1], taps=(1,))
    lm.body.layers[1]._forward_hooks.popitem()
    assert hooks() == before


def test_tap_indices_are_checked() -> None:
    assert resolve_taps((0, -1, FINAL, 2, -4), 3) == (0, 3, 3, 2, 0)
    with pytest.raises(ConfigError, match=r"out of range for a model of 3 layers"):
        resolve_taps((4,), 3)
    with pytest.raises(ConfigError, match="out of range"):
        resolve_taps((-5,), 3)
    with pytest.raises(ConfigError, match="must not repeat"):
        Taps(layers=(1, 1))
    with pytest.raises(ConfigError, match="integers"):
        Taps(layers=(True,))
    with pytest.raises(ConfigError, match="needs layers"):
        Taps(prompt=True)
    assert not Taps() and Taps(layers=(FINAL,))


def test_static_step_graph_has_no_tap_outputs_unless_asked(causal_lm: LlamaForCausalLM) -> None:
    """Taps are outputs of the same pass: asked for, they come with the step's logits unchanged;
    not asked, the pass returns no extra tensors."""
    lm = LanguageModel.from_causal_lm(causal_lm)
    decoder = StaticDecoder(lm, max_length=64)
    decoder(lm).extend(token_ids=_ids(4, 10))
    ids, positions = torch.tensor([[5, 6, 7, 8]]), torch.arange(10, 14)
    with torch.inference_mode():
        plain = decoder._forward_ids(ids, positions, decoder.slots)
        tapped = decoder._forward_ids(ids, positions, decoder.slots, (1, 3))
    assert plain[2] == ()
    assert len(tapped[2]) == 2 and tapped[2][1] is tapped[0]  # the final tap is the final hidden itself
    assert torch.equal(plain[1], tapped[1])


# --------------------------------------------------------------------------- prefill logits


@pytest.mark.parametrize("path", ["eager", "static"])
def test_prefill_runs_the_lm_head_on_the_last_row_only(causal_lm: LlamaForCausalLM, path: str) -> None:
    lm = LanguageModel.from_causal_lm(causal_lm)
    rows: list[int] = []
    handle = lm.lm_head.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[-2]))
    try:
        prefilled = prefill(lm, lm.embed_tokens(torch.tensor([_ids(5, 30)])), _factories(lm)[path])
    finally:
        handle.remove()
    assert rows == [1] and prefilled.logits.shape == (VOCAB,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_static_last_row_prefill_decodes_as_before(dtype: torch.dtype) -> None:
    """The tokens from last-row prefill logits equal those from every row's logits (the static
    path before), first token included; the used row's logits agree to rounding (a one-row product
    and the whole prompt's GEMM may round differently in float32 on a CPU)."""
    model = _model(7, dtype)
    lm = LanguageModel.from_causal_lm(model)
    decoder = StaticDecoder(lm, max_length=96)
    for seed in range(4):
        embeds = lm.embed_tokens(torch.tensor([_ids(10 + seed, 25 + seed)]))
        before_state = decoder(lm)
        every_row = before_state.extend(embeds=embeds)  # all rows' logits, as static prefill computed them
        assert every_row.logits.shape[0] == embeds.shape[1]
        before = decode(Prefilled(before_state, every_row.logits[-1], every_row.hidden[-1], embeds.shape[1]),
                        max_new_tokens=30).token_ids
        now = prefill(lm, embeds, decoder)
        torch.testing.assert_close(now.logits, every_row.logits[-1], rtol=1e-5, atol=1e-5)
        assert int(now.logits.argmax()) == before[0]
        assert decode(now, max_new_tokens=30).token_ids == before


# --------------------------------------------------------------------------- feature buffer


def test_feature_buffer_holds_one_row_per_position_through_rollbacks() -> None:
    buffer = FeatureBuffer((2, FINAL), capacity=10, start=3)
    rows = {layer: torch.arange(7 * 4, dtype=torch.float32).reshape(7, 4) + 100 * i
            for i, layer in enumerate((2, FINAL))}
    assert buffer.length == 3 and buffer[2].numel() == 0
    buffer.append({layer: r[:4] for layer, r in rows.items()})
    assert buffer.length == 7
    buffer.truncate(5)  # roll back two positions
    buffer.append({layer: r[4:7] for layer, r in rows.items()})
    assert buffer.length == 8
    for layer, r in rows.items():
        torch.testing.assert_close(buffer[layer], torch.cat([r[:2], r[4:7]]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="exceed"):
        buffer.append({layer: r[:3] for layer, r in rows.items()})
    with pytest.raises(ValueError, match="same number of rows"):
        buffer.append({2: rows[2][:1], FINAL: rows[FINAL][:2]})
    with pytest.raises(ValueError, match="cannot truncate"):
        buffer.truncate(2)
    with pytest.raises(KeyError):
        buffer[1]


# --------------------------------------------------------------------------- the caller's process and model


def test_static_decoder_scopes_dynamo_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """More compiled shapes than dynamo's default recompile limit compile (the limit is raised
    inside the decoder's calls), and the process's dynamo config is the same afterwards.
    Compiled with a counting eager backend: dynamo's decisions without inductor's code generation."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    import evspec.runtime.static as static

    config = torch._dynamo.config
    before = {name: getattr(config, name) for name in ("recompile_limit", "cache_size_limit",
                                                      "accumulated_recompile_limit")}
    counter = CompileCounter()
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: real_compile(fn, backend=counter, **kwargs))
    monkeypatch.setattr(static, "KV_BUCKET", 8)  # a new attended length every 8 positions
    model = _model(3, torch.float32, layers=1)
    lm = LanguageModel.from_causal_lm(model)
    torch._dynamo.reset()
    try:
        decoder = StaticDecoder(lm, max_length=96, compile=True)
        assert {name: getattr(config, name) for name in before} == before
        eager = EagerState(lm)
        state = decoder(lm)
        ids = _ids(6, 70)
        eager.extend(token_ids=ids[:5])
        state.extend(token_ids=ids[:5])
        position = 5
        while position < 64:  # one-token steps and 2-token passes: two shapes per length bucket
            k = 1 + position % 2
            expected = eager.extend(token_ids=ids[position:position + k]).logits
            torch.testing.assert_close(state.extend(token_ids=ids[position:position + k]).logits, expected,
                                       rtol=1e-4, atol=1e-5)
            position += k
        assert counter.frame_count > before["recompile_limit"]  # past the default: the raised limit applied
        assert {name: getattr(config, name) for name in before} == before
    finally:
        torch._dynamo.reset()


def test_static_decoder_fuses_the_callers_parameters_in_place(causal_lm: LlamaForCausalLM) -> None:
    """fuse_projections_in_place: the model's Parameters stay the same objects with the same values
    (state_dict unchanged in values) and now share the fused matrices' storage."""
    model = _model(8)
    lm = LanguageModel.from_causal_lm(model)
    params = dict(model.named_parameters())
    values = {name: t.clone() for name, t in model.state_dict().items()}
    decoder = StaticDecoder(lm, max_length=32)
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(p is params[name] for name, p in model.named_parameters())
    for name, value in model.state_dict().items():
        assert torch.equal(value, values[name]), name
    for i, layer in enumerate(model.model.layers):
        fused = decoder.qkv[i]
        assert fused is not None and decoder.gate_up[i] is not None
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            assert proj.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
        for proj in (layer.mlp.gate_proj, layer.mlp.up_proj):
            assert proj.weight.untyped_storage().data_ptr() == decoder.gate_up[i].untyped_storage().data_ptr()
        assert layer.self_attn.q_proj.weight.requires_grad


def test_static_decoder_without_fusion_leaves_the_model_untouched() -> None:
    model = _model(9)
    lm = LanguageModel.from_causal_lm(model)
    pointers = {name: p.data_ptr() for name, p in model.named_parameters()}
    decoder = StaticDecoder(lm, max_length=32, fuse_projections_in_place=False)
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == pointers
    assert decoder.qkv == [None] * LAYERS
    reference = EagerState(lm)
    ids = _ids(11, 12)
    torch.testing.assert_close(decoder(lm).extend(token_ids=ids).logits, reference.extend(token_ids=ids).logits,
                               rtol=1e-9, atol=1e-9)


def test_compiled_step_returns_taps_from_its_one_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiled (dynamo, recording backend): a tap-free step's graph outputs only the hidden states
    and logits; a tapped step is one other graph whose extra outputs are the taps, run once per
    pass (no second pass), with the uncompiled decoder's values."""
    import torch._dynamo

    graphs: list[torch.fx.GraphModule] = []
    runs: list[int] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        index = len(graphs)
        graphs.append(gm)
        return lambda *args: (runs.append(index), gm.forward(*args))[1]

    def outputs(gm: torch.fx.GraphModule) -> int:
        (node,) = [n for n in gm.graph.nodes if n.op == "output"]
        return len(node.args[0])

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: real_compile(fn, backend=backend, **kwargs))
    lm = LanguageModel.from_causal_lm(_model(13, torch.float32, layers=2))
    torch._dynamo.reset()
    try:
        compiled = StaticDecoder(lm, max_length=64, compile=True)(lm)
        plain = StaticDecoder(lm, max_length=64)(lm)
        ids = _ids(14, 12)
        compiled.extend(token_ids=ids[:8])
        plain.extend(token_ids=ids[:8])
        assert len(graphs) == 1 and outputs(graphs[0]) == 2  # hidden states and logits, nothing else
        got = compiled.extend(token_ids=ids[8:12], taps=(0, 1))
        expected = plain.extend(token_ids=ids[8:12], taps=(0, 1))
        assert len(graphs) == 2 and outputs(graphs[1]) == 4  # the same pass, two taps more
        assert runs == [0, 1]  # one graph run per pass
        for layer in (0, 1):
            torch.testing.assert_close(got.taps[layer], expected.taps[layer], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-6)
    finally:
        torch._dynamo.reset()
