"""`evspec align extract` on the tiny pair (tiny-videollava target, tiny-eventgpt draft): stored rows
against an independent recomputation, resume after kills and torn shards, refusals, and two gloo
processes under torchrun merging to the rows of one process."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import evspec.align.extract as extract_module
from evspec.align.extract import ExtractConfig, default_layers, extract_sample, extract_store, pair_bridge
from evspec.align.store import AlignRow, AlignStore, sample_ranks
from evspec.cli import main
from evspec.errors import ConfigError, InputError

pytestmark = pytest.mark.filterwarnings("ignore::evspec.errors.EvspecWarning")

MAX_NEW = 6
LAYERS = (0, 1)  # the embeddings and the first layer's output: each checked by its own route below


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny matrices: one thread is fastest and the same in every process (the torchrun test)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from evspec.data.synth.builder import SynthConfig, build_dataset

    root = tmp_path_factory.mktemp("align-data")
    build_dataset(root, SynthConfig(clips=3, size=(160, 120), seed=11))
    return root


@pytest.fixture(scope="module")
def models():
    from evspec.models.registry import load_model

    return load_model("tiny-videollava"), load_model("tiny-eventgpt")


def config_for(dataset: Path, **changes) -> ExtractConfig:
    base = dict(target="tiny-videollava", draft="tiny-eventgpt", dataset=str(dataset), max_new_tokens=MAX_NEW,
                layers=LAYERS, shard_rows=2)
    return ExtractConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, dataset: Path, models) -> Path:
    """One uninterrupted extraction: what every resumed or distributed run must reproduce."""
    out = tmp_path_factory.mktemp("align-ref") / "store"
    summary = extract_store(config_for(dataset), out, device="cpu", models=models)
    assert summary.extracted == 3 and summary.complete and summary.rows == 3
    assert summary.bytes_per_sample and summary.samples_per_second and summary.store_samples_per_second
    return out


def assert_same_rows(a: AlignStore, b: AlignStore, *, exact: bool = True) -> None:
    assert a.sample_ids == b.sample_ids
    for i in range(len(a)):
        ra, rb = a[i].tensors(), b[i].tensors()
        assert ra.keys() == rb.keys()
        for name in ra:
            if exact or not ra[name].is_floating_point():
                assert torch.equal(ra[name], rb[name]), (i, name)
            else:  # another process: at most one 16-bit step apart
                torch.testing.assert_close(ra[name].float(), rb[name].float(), rtol=2**-7, atol=1e-5)


# ----------------------------------------------------------------------------- what is stored


def _fresh(model, sample, ids: list[int], hook_layer: int | None = None):
    """The model's states over prompt + ids by another route: the KV-cached decoding path, one token
    per step, and the output of decoder layer ``hook_layer`` by a forward hook. Returns (the last
    layer at the last prompt position and every id, [n + 1, D]; the hooked layer's, likewise;
    the embeddings there; the visual features)."""
    from evspec.runtime.decode import EagerState

    prepared = model.preprocess(model.load(sample), sample.query)
    features = model.encode(prepared)
    prompt = model.splice(prepared, features)
    hooked: list[torch.Tensor] = []
    handle = None
    if hook_layer is not None:
        layer = model.language_model.body.layers[hook_layer]
        handle = layer.register_forward_hook(lambda m, i, o: hooked.append((o[0] if isinstance(o, tuple) else o)[0]))
    try:
        state = EagerState(model.language_model)
        last = [state.extend(embeds=prompt).hidden[-1:]]
        last += [state.extend(token_ids=[t]).hidden for t in ids]
    finally:
        if handle is not None:
            handle.remove()
    with torch.inference_mode():
        embeds = torch.cat([prompt[0, -1:], model.language_model.embed_tokens(torch.tensor(ids))])
    layer_out = torch.cat([hooked[0][-1:], *hooked[1:]]) if hooked else None
    return torch.cat(last), layer_out, embeds, features.embeds


def _assert_16bit(stored: torch.Tensor, fresh: torch.Tensor) -> None:
    """``stored`` is ``fresh`` rounded to bfloat16 (half a step: 2^-8 relative), up to float32 noise."""
    assert stored.dtype == torch.bfloat16 and stored.shape == fresh.shape
    torch.testing.assert_close(stored.float(), fresh.float(), rtol=2**-8 + 1e-5, atol=1e-5)


def test_stored_rows_equal_a_fresh_pass_to_16bit_rounding(reference: Path, dataset: Path, models) -> None:
    from evspec.data.dataset import load_dataset

    target, draft = models
    store = AlignStore(reference, verify=True)
    samples = load_dataset(dataset)
    assert store.sample_ids == [s.id for s in samples]
    assert store.config["layers"] == list(LAYERS) and store.config["bridge"] == "same"
    assert store.identity["target"] == "tiny-videollava" and store.identity["store_dtype"] == "bfloat16"
    bridge = pair_bridge(draft, target)
    for row, sample in zip((store[i] for i in range(len(store))), samples):
        answer = target.generate(target.preprocess(target.load(sample), sample.query), max_new_tokens=MAX_NEW).token_ids
        assert row.target_ids[1:].tolist() == answer  # the target's own greedy answer
        assert row.loss_mask.tolist() == [True] * len(answer) + [False]
        last, layer0, embeds, visual = _fresh(target, sample, answer, hook_layer=0)
        _assert_16bit(row.target_hidden, last)
        _assert_16bit(row.target_low, embeds)  # hidden-state index 0: the embeddings
        _assert_16bit(row.target_mid, layer0)  # index 1: the first layer's output
        _assert_16bit(row.target_visual, visual)
        assert row.draft_ids[1:].tolist() == bridge.to_draft(answer) == answer  # one vocabulary
        d_last, _, _, d_visual = _fresh(draft, sample, bridge.to_draft(answer))
        _assert_16bit(row.draft_hidden, d_last)
        _assert_16bit(row.draft_visual, d_visual)
        # row 0 is each model's last prompt position: its id is the token there
        for model, first in ((target, row.target_ids[0]), (draft, row.draft_ids[0])):
            prepared = model.preprocess(model.load(sample), sample.query)
            assert int(first) == int(prepared.input_ids[0, -1])
    index = store.index
    assert index["summary"]["bytes_per_sample"] == pytest.approx(index["summary"]["bytes"] / 3)
    assert index["fields"]["target_hidden"] == {"dtype": "bfloat16", "shape": ["T", 64]}
    assert index["identity"]["evspec"] and index["environment"]["torch"]


def test_extract_sample_online_gives_plain_tensors_on_the_model_device(reference: Path, dataset: Path, models) -> None:
    from evspec.data.dataset import load_dataset

    target, draft = models
    sample = load_dataset(dataset)[0]
    row = extract_sample(target, draft, sample, max_new_tokens=MAX_NEW, layers=LAYERS, store_dtype=None, device=None)
    for name, tensor in row.tensors().items():
        assert not tensor.is_inference(), name  # training can use them in autograd
    assert row.target_hidden.dtype == torch.float32
    stored = AlignStore(reference)[0]
    assert torch.equal(row.target_hidden.bfloat16(), stored.target_hidden)
    assert torch.equal(row.target_ids, stored.target_ids)
    with pytest.raises(ConfigError, match="hidden-state indices in 0..1") as error:
        extract_sample(target, draft, sample, max_new_tokens=2, layers=(5, 1))
    assert error.value.parameters == ("layers",)


def test_default_layers_follow_eagle3() -> None:
    assert default_layers(32) == (2, 16)
    assert default_layers(2) == (1, 1)
    assert default_layers(1) == (0, 0)


# ----------------------------------------------------------------------------- resume


class Killed(Exception):
    pass


@pytest.mark.parametrize("kill_after", [0, 1, 2])
def test_killed_extraction_resumes_to_the_rows_of_an_uninterrupted_one(
    tmp_path: Path, dataset: Path, models, reference: Path, monkeypatch: pytest.MonkeyPatch, kill_after: int,
) -> None:
    real = extract_module.extract_sample
    calls = []

    def dying(*args, **kwargs) -> AlignRow:
        if len(calls) == kill_after:
            raise Killed
        calls.append(1)
        return real(*args, **kwargs)

    out = tmp_path / "store"
    monkeypatch.setattr(extract_module, "extract_sample", dying)
    with pytest.raises(Killed):
        extract_store(config_for(dataset), out, device="cpu", models=models)
    monkeypatch.undo()
    with pytest.raises(InputError, match="no index.json"):
        AlignStore(out)  # a killed run is not a store yet
    summary = extract_store(config_for(dataset), out, device="cpu", models=models)
    finished = 2 if kill_after == 2 else 0  # the rows of the one finished shard (shard_rows=2) are kept
    assert (summary.already_done, summary.extracted) == (finished, 3 - finished)
    assert_same_rows(AlignStore(out, verify=True), AlignStore(reference))


def test_deleted_truncated_or_stray_shards_are_redone(tmp_path: Path, dataset: Path, models, reference: Path) -> None:
    out = tmp_path / "store"
    shutil.copytree(reference, out)
    last = sorted(out.glob("shard-*.safetensors"))[-1]
    for damage in ("delete", "truncate", "flip", "stray"):
        if damage == "delete":
            last.unlink()
        elif damage == "truncate":
            last.write_bytes(last.read_bytes()[:-100])
        elif damage == "flip":  # same size and header, another sha256
            data = bytearray(last.read_bytes())
            data[-5] ^= 0x40
            last.write_bytes(bytes(data))
        else:  # a shard a killed run wrote but never listed: removed, nothing duplicated
            shutil.copy(last, out / "shard-r000-00007.safetensors")
        summary = extract_store(config_for(dataset), out, device="cpu", models=models)
        assert (summary.already_done, summary.extracted) == ((2, 1) if damage != "stray" else (3, 0)), damage
        assert sorted(p.name for p in out.glob("shard-*")) == sorted(p.name for p in reference.glob("shard-*"))
        assert_same_rows(AlignStore(out, verify=True), AlignStore(reference))


# ----------------------------------------------------------------------------- the command


def _cli_args(dataset: Path, out: Path, *extra: str) -> list[str]:
    return ["align", "extract", "--target", "tiny-videollava", "--draft", "tiny-eventgpt", "--dataset", str(dataset),
            "--out", str(out), "--max-new-tokens", str(MAX_NEW), "--layers", ",".join(map(str, LAYERS)),
            "--shard-rows", "2", "--device", "cpu", *extra]


def test_cli_resumes_refuses_another_config_and_starts_over_with_force(
    tmp_path: Path, dataset: Path, reference: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "store"
    shutil.copytree(reference, out)
    assert main(_cli_args(dataset, out)) == 0  # the same config: finished, nothing loaded or redone
    printed = capsys.readouterr().out
    assert "extracted 0 samples" in printed and "3 already in the store" in printed and "3 rows" in printed
    assert "per sample" in printed and "complete" in printed
    for extra in (["--max-new-tokens", "5"], ["--layers", "1,1"]):
        assert main(_cli_args(dataset, out) + extra) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "another config" in err and "--force" in err
    assert main([*_cli_args(dataset, out)[:3], "tiny-llava", *_cli_args(dataset, out)[4:]]) == 1  # other models
    assert "target: was 'tiny-videollava', now 'tiny-llava'" in capsys.readouterr().err
    assert main(_cli_args(dataset, out, "--layers", "x")) == 1
    assert "--layers" in capsys.readouterr().err
    assert main(_cli_args(dataset, out, "--max-new-tokens", "3", "--force")) == 0
    printed = capsys.readouterr().out
    assert "extracted 3 samples" in printed and "samples/s" in printed
    assert printed.count("sample=") == 3  # piped: one line per extracted sample, as it finishes
    store = AlignStore(out)
    assert store.identity["max_new_tokens"] == 3 and max(len(store[i].target_ids) for i in range(3)) <= 4
    assert store.index["command"].startswith("evspec align extract --target tiny-videollava")


def test_two_gloo_processes_under_torchrun_merge_to_the_rows_of_one(tmp_path: Path, dataset: Path, reference: Path) -> None:
    out = tmp_path / "store"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "evspec", *_cli_args(dataset, out, "--shard-rows", "1")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("extracted") == 1  # rank 0 reports
    store = AlignStore(out, verify=True)
    ranks = {(s.rank, s.world_size) for s in store.shards}
    owners = sample_ranks(3, 2)
    expected = [[i] for rank in (0, 1) for i in range(3) if owners[i] == rank]
    assert ranks == {(0, 2), (1, 2)} and [s.sample_indices for s in store.shards] == expected
    assert store.identity == AlignStore(reference).identity
    assert_same_rows(store, AlignStore(reference), exact=False)


def test_a_resume_over_rebuilt_weights_is_refused(tmp_path: Path, dataset: Path, models, reference: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The same model names, other weights (a rebuilt demo pair): resuming would mix two models' rows."""
    import copy

    real, calls = extract_module.extract_sample, []

    def dying(*args, **kwargs) -> AlignRow:
        if len(calls) == 2:
            raise Killed
        calls.append(1)
        return real(*args, **kwargs)

    target, draft = models
    out = tmp_path / "store"
    monkeypatch.setattr(extract_module, "extract_sample", dying)
    with pytest.raises(Killed):  # killed after one whole shard (shard_rows=2)
        extract_store(config_for(dataset), out, device="cpu", models=models)
    monkeypatch.undo()
    part = (out / "index.rank000.json").read_bytes()
    rebuilt = copy.deepcopy(draft)
    with torch.no_grad():
        next(rebuilt.trainable_module.parameters()).add_(1e-3)
    with pytest.raises(ConfigError, match=r"other weights of the draft \(draft_weights_sha256\)") as error:
        extract_store(config_for(dataset), out, device="cpu", models=(target, rebuilt))
    assert "force" in str(error.value)
    assert (out / "index.rank000.json").read_bytes() == part  # nothing written
    summary = extract_store(config_for(dataset), out, device="cpu", models=models)  # the same weights resume
    assert (summary.already_done, summary.extracted) == (2, 1)
    assert AlignStore(out).config["draft_weights_sha256"] == AlignStore(reference).config["draft_weights_sha256"]
    assert_same_rows(AlignStore(out), AlignStore(reference))


def test_a_dataset_edited_at_the_same_path_is_another_store(tmp_path: Path, dataset: Path, models) -> None:
    import json

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    out = tmp_path / "store"
    extract_store(config_for(data, max_samples=1), out, device="cpu", models=models)
    rows = json.loads((data / "dataset.json").read_text())
    rows[0]["query"] = "What moves?"
    (data / "dataset.json").write_text(json.dumps(rows))
    with pytest.raises(ConfigError, match="samples_sha256") as error:
        extract_store(config_for(data, max_samples=1), out, device="cpu", models=models)
    assert "max_new_tokens" not in str(error.value)  # only the rows differ


def test_draft_ids_of_another_tokenizer_are_the_same_text_re_encoded() -> None:
    """The cross-tokenizer case (evspec's families share one vocabulary, so the store tests take the
    other path): the draft's ids are its tokenizer's encoding of the target's answer text, EOS kept."""
    from types import SimpleNamespace

    from evspec.align.extract import draft_answer_ids
    from evspec.spec.vocab import TextBridge, bridge_vocabularies
    from tests.spec.conftest import build_tokenizer

    target_tok, draft_tok = build_tokenizer(64), build_tokenizer(96)
    bridge = bridge_vocabularies(draft_tok, target_tok, draft_vocab_size=len(draft_tok), target_vocab_size=len(target_tok),
                                 draft_eos=[2], target_eos=[2])
    assert isinstance(bridge, TextBridge)
    target = SimpleNamespace(decode_text=lambda ids: target_tok.decode(ids, skip_special_tokens=True).strip())
    draft = SimpleNamespace(tokenizer=draft_tok, eos_token_ids=[2])
    answer = target_tok.encode("the red circle moves left", add_special_tokens=False)
    expected = draft_tok.encode("the red circle moves left", add_special_tokens=False)
    assert expected != answer  # the vocabularies really differ
    assert draft_answer_ids(bridge, target, draft, [*answer, 2], stopped_on_eos=True) == [*expected, 2]
    assert draft_answer_ids(bridge, target, draft, answer, stopped_on_eos=False) == expected
