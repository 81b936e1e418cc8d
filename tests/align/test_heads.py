"""Adapters and draft heads (evspec/align/heads.py): shapes, frozen target modules, learning on a
synthetic task, causality, incremental drafting equal to a full pass, save/load, bad configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from evspec.align.heads import (
    ADAPTERS,
    CONFIG_NAME,
    WEIGHTS_NAME,
    ECHead,
    Head,
    HeadBatch,
    HeadConfig,
    HeadInputs,
    VisualCompressor,
    build_adapter,
    load_head,
    save_head,
    trainable_parameters,
)
from evspec.errors import ConfigError, ModelError

H, V, HD, VD, HV = 32, 48, 40, 44, 12
B, T, N = 4, 9, 7
CONFIG = HeadConfig(hidden_size=H, vocab_size=V, draft_hidden_size=HD, draft_vocab_size=VD, visual_size=HV,
                    bottleneck=16, wide_bottleneck=48, stacked_blocks=3, token_rank=16, num_heads=4, ffn_size=64,
                    visual_queries=3)
CAUSAL = ["L4", "L5", "B1", "L5F", "EC", "VS"]


def target_modules(seed: int = 0) -> tuple[nn.Embedding, nn.Linear]:
    """The target's embedding and LM head, left trainable (requires_grad) as a loaded model's are."""
    torch.manual_seed(seed)
    return nn.Embedding(V, H), nn.Linear(H, V, bias=False)


def synthetic_batch(embedding: nn.Embedding, lm_head: nn.Linear, seed: int = 1, batch: int = B) -> HeadBatch:
    """A target whose features follow its tokens (f_t = tanh(E x_t M + f_{t-1} R)) and that answers
    greedily (x_{t+1} = argmax lm_head(f_t)); the draft's hidden states are a fixed random linear
    map of the target's (injective: Hd > H), its logits a fixed map of its hidden states."""
    g = torch.Generator().manual_seed(seed)
    mix, recur = torch.randn(H, H, generator=g) / H**0.5, 0.5 * torch.randn(H, H, generator=g) / H**0.5
    to_draft, draft_head = torch.randn(H, HD, generator=g) / H**0.5, torch.randn(HD, VD, generator=g)
    with torch.no_grad():
        ids = torch.zeros(batch, T, dtype=torch.long)
        ids[:, 0] = torch.randperm(V, generator=g)[:batch]  # distinct first tokens
        hidden = torch.zeros(batch, T, H)
        previous = torch.zeros(batch, H)
        for t in range(T):
            previous = torch.tanh(embedding(ids[:, t]) @ mix + previous @ recur) * 3
            hidden[:, t] = previous
            if t + 1 < T:
                ids[:, t + 1] = lm_head(previous).argmax(-1)
        draft = hidden @ to_draft
    mask = torch.ones(batch, T, dtype=torch.bool)
    mask[:, -1] = False  # the last position has no next token
    return HeadBatch(input_ids=ids, loss_mask=mask, target_hidden=hidden, draft_hidden=draft,
                     draft_logits=draft @ draft_head, visual=torch.randn(batch, N, HV, generator=g))


@pytest.fixture(scope="module")
def target() -> tuple[nn.Embedding, nn.Linear]:
    return target_modules()


@pytest.fixture(scope="module")
def batch(target: tuple[nn.Embedding, nn.Linear]) -> HeadBatch:
    return synthetic_batch(*target)


def head(name: str, target: tuple[nn.Embedding, nn.Linear], seed: int = 0) -> Head:
    torch.manual_seed(seed)
    return build_adapter(name, CONFIG, *target)


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_output_shapes_and_loss(name: str, target, batch: HeadBatch) -> None:
    module = head(name, target)
    output = module(batch)
    assert output.features.shape == (B, T, H)
    assert output.logits.shape == (B, T, V)
    loss, metrics = module.loss(batch, output)
    assert loss.dim() == 0 and torch.isfinite(loss)
    counted = B * (T - 1) - (B if "previous_features" in module.reads else 0)
    assert metrics["positions"] == counted
    assert 0 <= metrics["top1_agree"] <= counted
    assert torch.allclose(output.logits, target[1](output.features))  # the target's own LM head


def test_the_loss_is_zero_for_the_target_itself_and_counts_what_it_says(target, batch) -> None:
    from evspec.align.heads import HeadOutput

    module = head("B1", target)
    perfect = HeadOutput(batch.target_hidden, target[1](batch.target_hidden).detach())
    loss, metrics = module.loss(batch, perfect)
    counted = B * (T - 2)  # the last position has no next token; B1 lacks f_{-1} at position 0
    assert loss.item() == pytest.approx(0, abs=1e-6)
    assert metrics["positions"] == metrics["top1_agree"] == counted
    assert metrics["cosine_sum"] == pytest.approx(counted, rel=1e-5)
    shifted = HeadOutput(batch.target_hidden + 1, target[1](batch.target_hidden + 1).detach())
    loss, metrics = module.loss(batch, shifted)
    assert metrics["feature_loss_sum"] == pytest.approx(0.5 * counted)  # smooth L1 of a 1.0 error
    assert loss.item() == pytest.approx(0.5 + CONFIG.token_loss_weight * metrics["token_loss_sum"] / counted, rel=1e-5)
    nothing = HeadBatch(**{**batch.__dict__, "loss_mask": torch.zeros(B, T, dtype=torch.bool)})
    loss, metrics = module.loss(nothing, perfect)
    assert loss.item() == 0 and metrics["positions"] == 0


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_the_target_modules_stay_frozen_and_out_of_the_saved_file(name: str, target, batch, tmp_path: Path) -> None:
    embedding, lm_head = target
    module = head(name, target)
    for p in (embedding.weight, lm_head.weight):
        p.grad = None
    loss, _ = module.loss(batch, module(batch))
    loss.backward()
    assert embedding.weight.grad is None and lm_head.weight.grad is None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    own = sum(p.numel() for p in module.parameters())
    assert trainable_parameters(module) == own > 0
    assert not any(p is embedding.weight or p is lm_head.weight for p in module.parameters())
    save_head(module, tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / WEIGHTS_NAME), framework="pt") as f:
        stored = {key: f.get_tensor(key) for key in f.keys()}
    assert set(stored) == set(module.state_dict())
    assert sum(t.numel() for t in stored.values()) == own
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["trainable_parameters"] == own


def test_sizes_follow_the_config(target) -> None:
    count = {name: trainable_parameters(head(name, target)) for name in ("L1", "L2", "L3")}
    block = lambda width: 2 * H + H * width + width + width * H + H  # noqa: E731  LayerNorm, down, up
    projection = HD * H + H
    assert count == {"L1": projection + block(16), "L2": projection + 3 * block(16), "L3": projection + block(48)}
    same_width = HeadConfig(hidden_size=H, vocab_size=V, draft_hidden_size=H, bottleneck=16)
    assert trainable_parameters(build_adapter("L1", same_width, *target)) == block(16)  # no projection needed


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_a_few_optimizer_steps_lower_the_loss(name: str, target, batch) -> None:
    module = head(name, target)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    with torch.no_grad():
        before = module.loss(batch, module(batch))[0].item()
    for _ in range(25):
        optimizer.zero_grad()
        loss, _ = module.loss(batch, module(batch))
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = module.loss(batch, module(batch))[0].item()
    assert after < 0.3 * before, (before, after)


def _perturbed_from(batch: HeadBatch, k: int) -> HeadBatch:
    """``batch`` with every per-position input changed at positions >= k."""
    g = torch.Generator().manual_seed(5)
    ids = batch.input_ids.clone()
    ids[:, k:] = (ids[:, k:] + 1 + torch.randint(0, V - 1, ids[:, k:].shape, generator=g)) % V
    changed = {}
    for field in ("target_hidden", "draft_hidden", "draft_logits"):
        x = getattr(batch, field).clone()
        x[:, k:] += torch.randn(x[:, k:].shape, generator=g)
        changed[field] = x
    return HeadBatch(input_ids=ids, loss_mask=batch.loss_mask, visual=batch.visual, **changed)


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_no_head_looks_ahead(name: str, target, batch) -> None:
    module = head(name, target).eval()
    k = 4
    with torch.no_grad():
        base, changed = module(batch), module(_perturbed_from(batch, k))
    assert torch.allclose(base.features[:, :k], changed.features[:, :k], atol=1e-6)
    assert not torch.allclose(base.features[:, k:], changed.features[:, k:], atol=1e-3)  # later ones do change


def _step_inputs(batch: HeadBatch, t: int) -> dict[str, torch.Tensor]:
    inputs = batch.inputs()
    return {"previous_feature": inputs.previous_features[:, t], "draft_hidden": inputs.draft_hidden[:, t],
            "draft_logits": inputs.draft_logits[:, t]}


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_drafting_step_by_step_equals_one_pass(name: str, target, batch) -> None:
    """A prefix through extend, then one draft_step per position (the KV cache), gives the full
    pass's outputs; truncating the cache and re-extending does too."""
    module = head(name, target).eval()
    with torch.no_grad():
        full = module(batch)
        cache = module.start(batch.visual)
        inputs = batch.inputs()
        prefix = HeadInputs(inputs.token_ids[:, :3], inputs.previous_features[:, :3], inputs.draft_hidden[:, :3],
                            inputs.draft_logits[:, :3])
        out, cache = module.extend(cache, prefix)
        pieces = [out.features]
        for t in range(3, T):
            out, cache = module.draft_step(cache, batch.input_ids[:, t], **_step_inputs(batch, t))
            assert out.features.shape == (B, 1, H) and out.logits.shape == (B, 1, V)
            pieces.append(out.features)
        assert cache.length == T
        assert torch.allclose(torch.cat(pieces, dim=1), full.features, atol=1e-5)
        again, _ = module.draft_step(cache.truncate(5), batch.input_ids[:, 5], **_step_inputs(batch, 5))
        assert torch.allclose(again.features[:, 0], full.features[:, 5], atol=1e-5)


@pytest.mark.parametrize("name", CAUSAL)
def test_two_children_of_one_parent_do_not_disturb_each_other(name: str, target, batch) -> None:
    """draft_step leaves the parent's cache as it was: a tree can expand siblings from it."""
    module = head(name, target).eval()
    with torch.no_grad():
        inputs = batch.inputs()
        parent = HeadInputs(inputs.token_ids[:, :4], inputs.previous_features[:, :4], inputs.draft_hidden[:, :4],
                            inputs.draft_logits[:, :4])
        out, cache = module.extend(module.start(batch.visual), parent)
        feature = out.features[:, -1]
        first, second = torch.zeros(B, dtype=torch.long), torch.full((B,), 7)
        a, _ = module.draft_step(cache, first, previous_feature=feature, draft_hidden=batch.draft_hidden[:, 4])
        module.draft_step(cache, second, previous_feature=feature, draft_hidden=batch.draft_hidden[:, 4])
        a_again, _ = module.draft_step(cache, first, previous_feature=feature, draft_hidden=batch.draft_hidden[:, 4])
        b, _ = module.draft_step(cache, second, previous_feature=feature, draft_hidden=batch.draft_hidden[:, 4])
    assert cache.length == 4
    assert torch.equal(a.features, a_again.features)
    if name not in ("L4",):  # L4 reads no token: only heads that embed x_t tell siblings apart
        assert not torch.allclose(a.features, b.features)


def test_ec_encodes_the_event_features_once_and_keeps_a_fixed_number_of_keys(target, batch) -> None:
    module = head("EC", target).eval()
    assert isinstance(module, ECHead)
    calls = []
    module.compressor.register_forward_hook(lambda *_: calls.append(1))
    for n_events in (5, 60):
        calls.clear()
        with torch.no_grad():
            visual = torch.randn(B, n_events, HV)
            cache = module.start(visual)
            out, cache = module.extend(cache, HeadInputs(batch.input_ids[:, :2], batch.inputs().previous_features[:, :2]))
            feature = out.features[:, -1]
            for _ in range(5):
                out, cache = module.draft_step(cache, out.logits[:, -1].argmax(-1), previous_feature=feature)
                feature = out.features[:, -1]
        assert len(calls) == 1  # once per sample, at start
        assert cache.cross_keys.shape[2] == CONFIG.visual_queries  # per-token attention over M keys, whatever N


def test_conditioning_changes_the_output(target, batch) -> None:
    """EC and VS read the visual features (and only them differ between these two passes)."""
    for name in ("EC", "VS"):
        module = head(name, target).eval()
        # (a permutation of the rows or a scale would not do: attention pools, LayerNorm normalises)
        other = HeadBatch(**{**batch.__dict__, "visual": torch.randn(batch.visual.shape, generator=torch.Generator().manual_seed(9))})
        with torch.no_grad():
            assert not torch.allclose(module(batch).features, module(other).features, atol=1e-4)


def test_visual_mask_hides_padding(target) -> None:
    torch.manual_seed(0)
    compressor = VisualCompressor(HV, H, 3, 4).eval()
    visual = torch.randn(2, 6, HV)
    padded = torch.cat([visual, torch.randn(2, 3, HV)], dim=1)
    mask = torch.cat([torch.ones(2, 6), torch.zeros(2, 3)], dim=1).bool()
    with torch.no_grad():
        assert torch.allclose(compressor(visual), compressor(padded, mask), atol=1e-6)


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_save_and_load_give_identical_outputs(name: str, target, batch, tmp_path: Path) -> None:
    module = head(name, target, seed=3).eval()
    save_head(module, tmp_path / "head")
    loaded = load_head(tmp_path / "head", *target).eval()
    assert type(loaded) is type(module) and loaded.config == module.config
    with torch.no_grad():
        assert torch.equal(module(batch).features, loaded(batch).features)


def test_unknown_adapter_name(target) -> None:
    with pytest.raises(ConfigError, match="adapter 'L9' is unknown: use one of TokenAdapter, L1") as error:
        build_adapter("L9", CONFIG, *target)
    assert error.value.parameters == ("adapter",)


@pytest.mark.parametrize(("changes", "match", "parameter"), [
    ({"hidden_size": 64}, r"hidden_size=64 does not fit the target: the target embedding's width is 32", "hidden_size"),
    ({"vocab_size": 50}, r"vocab_size=50 does not fit the target: the target embedding's rows is 48", "vocab_size"),
    ({"num_heads": 3}, r"num_heads=3 must divide hidden_size=32", "num_heads"),
    ({"bottleneck": 0}, r"bottleneck must be > 0", "bottleneck"),
    ({"token_rank": 2.5}, r"token_rank must be an integer", "token_rank"),
])
def test_sizes_that_do_not_fit(changes: dict, match: str, parameter: str, target) -> None:
    with pytest.raises(ConfigError, match=match) as error:
        build_adapter("B1", HeadConfig(**{**CONFIG.__dict__, **changes}), *target)
    assert error.value.parameters == (parameter,)


@pytest.mark.parametrize(("name", "missing"), [("L1", "draft_hidden_size"), ("L5F", "draft_hidden_size"),
                                               ("TokenAdapter", "draft_vocab_size"), ("EC", "visual_size"),
                                               ("VS", "visual_size")])
def test_a_head_without_the_sizes_it_needs(name: str, missing: str, target) -> None:
    with pytest.raises(ConfigError, match=f"{missing} must be > 0 for {name}"):
        build_adapter(name, HeadConfig(**{**CONFIG.__dict__, missing: 0}), *target)


def test_target_modules_of_the_wrong_kind(target) -> None:
    with pytest.raises(ConfigError, match="target_lm_head must be an nn.Linear"):
        build_adapter("B1", CONFIG, target[0], nn.Sequential(target[1]))


def test_missing_inputs_are_named(target, batch) -> None:
    no_draft = HeadBatch(**{**batch.__dict__, "draft_hidden": None})
    with pytest.raises(ConfigError, match="L5 reads draft_hidden, which the inputs lack"):
        head("L5", target)(no_draft)
    with pytest.raises(ConfigError, match="EC is conditioned on visual features"):
        head("EC", target)(HeadBatch(**{**batch.__dict__, "visual": None}))
    narrow = HeadBatch(**{**batch.__dict__, "draft_hidden": batch.draft_hidden[..., :-1]})
    with pytest.raises(ConfigError, match=f"draft_hidden is {HD - 1} wide; this L1 was built for draft_hidden_size={HD}"):
        head("L1", target)(narrow)
    with pytest.raises(ConfigError, match=f"visual is {HV - 1} wide, VS was built for visual_size={HV}"):
        head("VS", target)(HeadBatch(**{**batch.__dict__, "visual": batch.visual[..., :-1]}))


def _saved(tmp_path: Path, target, name: str = "B1") -> Path:
    folder = tmp_path / "head"
    save_head(head(name, target), folder)
    return folder


def _edit_config(folder: Path, edit) -> None:  # noqa: ANN001
    document = json.loads((folder / CONFIG_NAME).read_text())
    edit(document)
    (folder / CONFIG_NAME).write_text(json.dumps(document))


@pytest.mark.parametrize(("edit", "match"), [
    (lambda d: d.update(adapter="os.system"), r"adapter 'os.system' is not one of TokenAdapter"),
    (lambda d: d.update(format="something-else"), r"not an evspec head"),
    (lambda d: d["config"].update(hidden_size=64), r"hidden_size=64 does not fit the target"),
    (lambda d: d["config"].update(surprise=1), r"unknown: surprise"),
    (lambda d: d["config"].update(num_heads="8"), r"num_heads must be an integer"),
    (lambda d: d["config"].update(ffn_size=128), r"weights do not match the B1 layout of config.json"),
    (lambda d: d.pop("config"), r"'config' must be an object"),
])
def test_load_refuses_a_folder_that_does_not_fit(edit, match: str, target, tmp_path: Path) -> None:  # noqa: ANN001
    folder = _saved(tmp_path, target)
    _edit_config(folder, edit)
    with pytest.raises(ModelError, match=match):
        load_head(folder, *target)


def test_load_refuses_other_weights(target, tmp_path: Path) -> None:
    folder = _saved(tmp_path, target)
    save_head(head("L1", target), tmp_path / "other")
    (tmp_path / "other" / WEIGHTS_NAME).replace(folder / WEIGHTS_NAME)  # L1's weights under B1's config
    with pytest.raises(ModelError, match="weights do not match the model's layout; .* missing key"):
        load_head(folder, *target)
    (folder / WEIGHTS_NAME).write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="unreadable safetensors file"):
        load_head(folder, *target)
    with pytest.raises(ModelError, match="no such head folder"):
        load_head(tmp_path / "nowhere", *target)


def test_load_refuses_a_target_of_another_size(target, tmp_path: Path) -> None:
    folder = _saved(tmp_path, target)
    with pytest.raises(ModelError, match="vocab_size=48 does not fit the target: the target embedding's rows is 60"):
        load_head(folder, nn.Embedding(60, H), nn.Linear(H, 60, bias=False))


def _rows(lengths: list[int], visual_rows: list[int]) -> list:
    from evspec.align.store import AlignRow

    g = torch.Generator().manual_seed(4)
    rows = []
    for i, (t, n) in enumerate(zip(lengths, visual_rows)):
        mask = torch.ones(t, dtype=torch.bool)
        mask[-1] = False
        rows.append(AlignRow(sample_id=f"s{i}", target_ids=torch.randint(0, V, (t,), generator=g), loss_mask=mask,
                             target_hidden=torch.randn(t, H, generator=g), target_low=torch.randn(t, H, generator=g),
                             target_mid=torch.randn(t, H, generator=g), draft_ids=torch.randint(0, VD, (t,), generator=g),
                             draft_hidden=torch.randn(t, HD, generator=g), draft_visual=torch.randn(n, HV, generator=g),
                             target_visual=torch.randn(n + 2, HV, generator=g)))
    return rows


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_store_rows_of_different_lengths_batch_as_they_run_alone(name: str, target) -> None:
    """Right padding (of positions and of visual rows) changes no real position's output or loss."""
    from evspec.align.heads import collate_rows

    module = head(name, target).eval()
    torch.manual_seed(2)
    draft_lm_head = nn.Linear(HD, VD)
    rows = _rows([6, 9, 4], [5, 8, 3])
    batch = collate_rows(rows, module, draft_lm_head=draft_lm_head)
    assert batch.input_ids.shape == (3, 9) and batch.loss_mask.sum() == 5 + 8 + 3
    with torch.no_grad():
        together = module(batch)
        loss, metrics = module.loss(batch, together)
        alone_sums = 0.0
        for i, row in enumerate(rows):
            one = collate_rows([row], module, draft_lm_head=draft_lm_head)
            alone = module(one)
            t = row.target_ids.shape[0]
            assert torch.allclose(together.features[i, :t], alone.features[0], atol=1e-5)
            alone_sums += module.loss(one, alone)[1]["token_loss_sum"]
    assert metrics["token_loss_sum"] == pytest.approx(alone_sums, rel=1e-5)


def test_collate_refuses_rows_a_head_cannot_read(target) -> None:
    from evspec.align.heads import collate_rows

    rows = _rows([5], [3])
    with pytest.raises(ConfigError, match="TokenAdapter reads the draft's logits: pass draft_lm_head"):
        collate_rows(rows, head("TokenAdapter", target))
    rows[0].draft_hidden = rows[0].draft_hidden[:4]  # another vocabulary: 4 draft positions for 5
    with pytest.raises(ConfigError, match="row 's0': the draft has 4 positions, the target 5"):
        collate_rows(rows, head("L1", target))
    collate_rows(rows, head("B1", target))  # B1 does not read the draft
    rows[0].target_visual = None
    with pytest.raises(ConfigError, match="row 's0' has no target_visual, which VS is conditioned on"):
        collate_rows(rows, head("VS", target))
