"""The GPU command line's models at small shapes: ``random-7b-*`` weights made decisive (each family
walking its own t -> t + shift), ``random-0.2b-eventgpt`` as the oracle's draft, and a sample whose
run compiles a graph measured again. The real shapes (7B) need a GPU; these patch the shape
constants down and take exactly the same code path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evspec.models import tiny

SMALL_LLAMA = dict(hidden_size=512, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=4, max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1,
                   eos_token_id=2)
SMALL_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                  projection_dim=32, patch_size=112)  # 224 px -> 4 patches a frame


@pytest.fixture
def small_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiny, "VICUNA_7B", SMALL_LLAMA)
    monkeypatch.setattr(tiny, "SMALL_DRAFT_LLAMA", {**SMALL_LLAMA, "hidden_size": 32, "num_hidden_layers": 1})
    monkeypatch.setattr(tiny, "CLIP_L", SMALL_CLIP)


def _greedy_walk(name: str, steps: int = 6) -> tuple[list[int], float]:
    """Greedy tokens from a text prompt, and the smallest top-1 minus top-2 logit margin seen."""
    from evspec.models.registry import load_model
    from evspec.runtime.decode import decode, prefill

    model = load_model(name, device="cpu", dtype="float32")
    lm = model.language_model
    embeds = lm.embed_tokens(torch.tensor([[5, 900, 17]]))
    margins: list[float] = []

    def margin(logits: torch.Tensor) -> None:
        top = logits.reshape(-1).float().topk(2).values
        margins.append(float(top[0] - top[1]))

    out = decode(prefill(lm, embeds), max_new_tokens=steps, min_new_tokens=steps, on_logits=margin)
    return out.token_ids, min(margins)


@pytest.mark.parametrize("name", ["random-7b-videollava", "random-7b-llava", "random-7b-eventgpt"])
def test_random_7b_weights_walk_their_own_shift_with_wide_margins(small_shapes: None, name: str) -> None:
    tokens, margin = _greedy_walk(name)
    shift = tiny.DECISIVE_SHIFT[name]
    assert all(b - a == shift for a, b in zip(tokens, tokens[1:])), tokens
    # The winning logit is about width / 50 (~80 at 7B's 4096; ~10 here), the rest random at ~1:
    # plain random weights tie within ~0.3.
    assert margin > 5, margin


def test_distinct_families_never_agree_by_construction() -> None:
    assert len(set(tiny.DECISIVE_SHIFT.values())) == len(tiny.DECISIVE_SHIFT)


def test_the_oracles_small_draft_keeps_plain_random_weights(small_shapes: None) -> None:
    from evspec.models.registry import load_model

    draft = load_model("random-0.2b-eventgpt", device="cpu", dtype="float32")
    assert draft.language_model.hidden_size == 32
    lm_head, embed = draft.language_model.lm_head.weight, draft.language_model.embed_tokens.weight
    assert not torch.allclose(lm_head, torch.roll(embed, 3, dims=0) / 50.0)


def test_oracle_draft_auto_follows_the_target() -> None:
    from evspec.spec.run import SpecRunConfig

    assert SpecRunConfig(target="random-7b-videollava", draft="oracle:0.8").oracle_draft_model == "random-0.2b-eventgpt"
    assert SpecRunConfig(target="tiny-videollava", draft="oracle:0.8").oracle_draft_model == "tiny-eventgpt"
    assert SpecRunConfig(draft="oracle:0.8", oracle_draft="tiny-llava").oracle_draft_model == "tiny-llava"
    assert SpecRunConfig(target="random-7b-videollava", draft="oracle:0.8").model_names()[1] == "random-0.2b-eventgpt"


# The built-in clips are 1 s long: EventGPT's (expected) warning that upstream refuses such windows.
@pytest.mark.filterwarnings("ignore::evspec.models.eventgpt.EventWindowWarning")
def test_spec_command_at_random_shapes_is_lossless_with_the_oracle(small_shapes: None, tmp_path: Path) -> None:
    from evspec.spec.run import SpecRunConfig, run_spec

    config = SpecRunConfig(target="random-7b-videollava", draft="oracle:0.8", gamma=5, max_new_tokens=12,
                           min_new_tokens=12, max_samples=2, device="cpu", dtype="float32")
    result = run_spec(config, tmp_path / "run")
    assert [r["error"] for r in result.records] == [None, None]
    assert all(r["lossless"] and r["exact"] for r in result.records)
    assert all(r["counts"]["accepted_tokens"] > 0 for r in result.records)  # the answer key held
    identity = json.loads((tmp_path / "run" / "config.json").read_text())["identity"]
    assert identity["oracle_draft"] == "random-0.2b-eventgpt"


def test_a_sample_that_compiles_is_measured_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from evspec.spec import run

    counter = iter([0, 1, 1, 1])  # the first run compiles a graph, the second does not
    runs: list[int] = []
    monkeypatch.setattr(run, "compilations", lambda: next(counter))
    monkeypatch.setattr(run, "run_spec_sample", lambda *a: runs.append(1) or {"id": "s", "error": None})
    record = run.run_measured_sample(None, None, None, None, None)  # type: ignore[arg-type]
    assert len(runs) == 2 and record["compile_retries"] == 1 and record["compiled_during_run"] is False


def test_the_gpu_script_builds_what_the_command_line_loads() -> None:
    """benchmarks/gpu_spec.py takes its shapes, decisive weights and decoder from the library, so
    the script and `evspec spec --target random-7b-videollava` cannot drift apart."""
    from evspec.run.shared import state_factory_for
    from evspec.runtime.static import StaticDecoder
    from tests.benchmark_scripts import load_benchmark

    gpu_spec = load_benchmark("gpu_spec")
    assert gpu_spec.VICUNA_7B.items() <= tiny.VICUNA_7B.items()
    assert gpu_spec.DRAFT_200M.items() <= tiny.SMALL_DRAFT_LLAMA.items()
    assert gpu_spec.VOCAB == tiny.VOCAB_7B

    def small_lm():  # the script's builder at a small shape, the same seed twice
        return gpu_spec.build_lm(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=4), 300, 4096, torch.device("cpu"), torch.float32, seed=0)

    ours, theirs = tiny.make_decisive(small_lm(), tiny.DECISIVE_SHIFT["random-7b-videollava"]), gpu_spec.make_decisive(small_lm())
    for a, b in zip(ours.body.parameters(), theirs.body.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(ours.lm_head.weight, theirs.lm_head.weight)
    factory = gpu_spec.Factories("static", torch.device("cpu"))(theirs, 4096)
    assert isinstance(factory, StaticDecoder) and isinstance(state_factory_for("static", ours), StaticDecoder)
    assert factory.max_length == state_factory_for("static", ours).max_length == 4096
