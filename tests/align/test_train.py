"""`evspec align train` on a tiny store (tiny-videollava target, tiny-eventgpt draft, 3 synthetic
clips): training beats the untrained head, the simulated acceptance equals a brute-force one,
resume reaches the uninterrupted weights, two gloo processes follow one process's loss curve, and
bad input is one clear error."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from evspec.align.heads import HeadCache, HeadInputs
from evspec.align.simulate import SimulatedAcceptance, simulate_batch
from evspec.align.train import AlignTrainConfig, prepare_align_task
from evspec.cli import main
from evspec.errors import ConfigError
from evspec.training.loop import LoopConfig, train
from tests.close_weights import assert_weights_follow

pytestmark = pytest.mark.filterwarnings("ignore::evspec.errors.EvspecWarning")

HEAD = {"num_heads": 4, "ffn_size": 128, "bottleneck": 64, "wide_bottleneck": 128, "token_rank": 32, "visual_queries": 2}
LOOP = LoopConfig(steps=30, batch_size=2, lr=3e-3, warmup_steps=2, eval_every=30, checkpoint_every=10, log_every=1)
HOLDOUT = 0.3  # of 3 samples: 1 held out, 2 trained on


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny matrices: one thread is fastest and the same in every process (the torchrun test)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from evspec.align.extract import ExtractConfig, extract_store
    from evspec.data.synth.builder import SynthConfig, build_dataset

    root = tmp_path_factory.mktemp("align-train")
    build_dataset(root / "data", SynthConfig(clips=3, size=(96, 64), seed=11))
    config = ExtractConfig(target="tiny-videollava", draft="tiny-eventgpt", dataset=str(root / "data"),
                           max_new_tokens=12, shard_rows=2)  # two shards: batches read across them
    extract_store(config, root / "store", device="cpu")
    return root / "store"


def config_for(store: Path, adapter: str = "B1", **changes) -> AlignTrainConfig:
    return replace(AlignTrainConfig(store=str(store), adapter=adapter, loop=LOOP, head=HEAD, holdout=HOLDOUT), **changes)


def _head_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "head" / "model.safetensors")


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- simulated acceptance


def test_acceptance_sums_by_hand() -> None:
    result = SimulatedAcceptance(max_gamma=5)
    result.add_chains(torch.tensor([3, 0, 2]), torch.tensor([8, 8, 2]))  # the last chain starts 2 before the end
    assert result.acceptance_rate(1) == pytest.approx(2 / 3) and result.mean_acceptance_length(1) == pytest.approx(1 + 2 / 3)
    assert result.acceptance_rate(5) == pytest.approx(5 / 12) and result.mean_acceptance_length(5) == pytest.approx(1 + 5 / 3)
    merged = result.merge(result)
    assert merged.rounds == 6 and merged.acceptance_rate(5) == result.acceptance_rate(5)
    assert "simulated (offline)" in merged.as_dict()["label"]
    # the replay walks a row of 6 positions round by round: a round at p with k accepted ends at p + k + 1
    replay = SimulatedAcceptance(max_gamma=5)
    replay.add_replay({0: 3, 1: 0, 2: 1, 3: 0, 4: 1}, length=6)
    assert (replay.replay_rounds[4], replay.replay_accepted[4], replay.replay_drafted[4]) == (2, 4, 6)  # rounds at 0, 4
    assert (replay.replay_rounds[0], replay.replay_accepted[0], replay.replay_drafted[0]) == (3, 3, 3)  # at 0, 2, 4
    assert replay.replay_acceptance_rate(5) == pytest.approx(4 / 6) and replay.replay_mean_acceptance_length(5) == 3.0
    assert "replay" in replay.as_dict()["replay"]["label"] and replay.merge(replay).replay_rounds[4] == 4
    missed = SimulatedAcceptance(max_gamma=5)  # chains that miss are drafted whole, even near the end
    missed.add_replay({0: 0, 1: 0}, length=3)
    assert (missed.replay_rounds[4], missed.replay_accepted[4], missed.replay_drafted[4]) == (2, 0, 10)
    with pytest.raises(ConfigError, match="max_gamma"):
        SimulatedAcceptance(max_gamma=0)


def brute_force_accepted(head, batch, max_gamma: int) -> list[tuple[int, int, int]]:  # noqa: ANN001
    """Each chain on its own: a fresh cache from the row's prefix alone (no shared full pass, no
    truncation, batch of one), greedy drafts checked against the target's tokens. (row, start, accepted)."""
    accepted = []
    inputs = batch.inputs()
    counted = head.counted(batch)
    for b in range(batch.input_ids.shape[0]):
        length = int(batch.loss_mask[b].sum()) + 1

        def one(x, lo, hi):  # noqa: ANN001, ANN202
            return None if x is None else x[b : b + 1, lo:hi]

        for n in range(length - 1):
            if not counted[b, n]:
                continue
            cache = (head.start(one(batch.visual, 0, None), one(batch.visual_mask, 0, None))
                     if "visual" in head.reads else HeadCache())
            out, cache = head.extend(cache, HeadInputs(one(inputs.token_ids, 0, n + 1), one(inputs.previous_features, 0, n + 1),
                                                       one(inputs.draft_hidden, 0, n + 1), one(inputs.draft_logits, 0, n + 1)))
            a = 0
            for k in range(1, max_gamma + 1):
                if n + k >= length or int(out.logits[0, -1].argmax()) != int(batch.input_ids[b, n + k]):
                    break
                a += 1
                if k == max_gamma:
                    break
                token = batch.input_ids[b, n + k : n + k + 1]
                out, cache = head.draft_step(cache, token, previous_feature=out.features[:, -1],
                                             draft_hidden=None if batch.draft_hidden is None else batch.draft_hidden[b : b + 1, n + k],
                                             draft_logits=None if batch.draft_logits is None else batch.draft_logits[b : b + 1, n + k])
            accepted.append((b, n, a))
    return accepted


def brute_force_replay(chains: list[tuple[int, int, int]], lengths: list[int], gamma: int) -> tuple[int, int, int]:
    """(rounds, accepted, drafted) of greedy decoding's rounds, walked from the chains by hand."""
    rounds = accepted = drafted = 0
    for row, length in enumerate(lengths):
        starts = {n: a for b, n, a in chains if b == row}
        position = min(starts)
        while position < length - 1:
            k = min(starts[position], gamma)
            room = length - 1 - position
            rounds, accepted, drafted = rounds + 1, accepted + k, drafted + (room if k >= room else gamma)
            position += k + 1
    return rounds, accepted, drafted


@pytest.mark.parametrize("adapter", ["B1", "L5", "EC", "VS", "TokenAdapter"])
def test_simulated_acceptance_equals_chains_drafted_one_by_one(store: Path, tmp_path: Path, adapter: str) -> None:
    """A few training steps first, so chains get accepted; then every row of the store, 8 drafts."""
    task, _ = prepare_align_task(config_for(store, adapter), tmp_path, torch.device("cpu"))
    train(task, replace(LOOP, steps=15, eval_every=100), tmp_path, torch.device("cpu"))
    batch = task.batch(range(len(task.store)))
    with torch.no_grad():
        chains = brute_force_accepted(task.head.eval(), batch, 8)
        simulated = simulate_batch(task.head, batch, 8)
    expected = [a for _, _, a in chains]
    assert sum(expected) > 0  # some drafts accepted: the comparison means something
    assert simulated.rounds == len(expected)
    lengths = (batch.loss_mask.sum(1) + 1).tolist()
    for gamma in range(1, 9):
        assert simulated.accepted[gamma - 1] == sum(min(a, gamma) for a in expected), gamma
        replay = (simulated.replay_rounds[gamma - 1], simulated.replay_accepted[gamma - 1], simulated.replay_drafted[gamma - 1])
        assert replay == brute_force_replay(chains, lengths, gamma), gamma


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("adapter", ["B1", "L5F", "L1"])
def test_a_few_steps_beat_the_untrained_head_on_held_out_rows(store: Path, tmp_path: Path, adapter: str) -> None:
    config = config_for(store, adapter)
    task, _ = prepare_align_task(config, tmp_path, torch.device("cpu"))
    before = task.evaluate(0)
    result = train(task, config.loop, tmp_path, torch.device("cpu"))
    after = result.final_eval
    assert after == task.evaluate(config.loop.steps)
    assert before["rows"] == after["rows"] == 1 and after["positions"] >= 10
    assert after["loss"] < 0.8 * before["loss"]
    assert after["cosine"] > before["cosine"]
    assert after["top1_agree"] > before["top1_agree"]
    gamma5 = (before["simulated"]["mean_acceptance_length"]["5"], after["simulated"]["mean_acceptance_length"]["5"])
    assert gamma5[1] > gamma5[0] >= 1.0
    rates = after["simulated"]["acceptance_rate"]
    assert list(rates) == [str(g) for g in range(1, 9)] and rates["1"] >= rates["8"]


def test_cli_trains_writes_the_run_and_resumes_after_a_kill(store: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    """Killed after step 3 (checkpoint at 2), rerun: it resumes from step 2 and ends with the
    weights of an uninterrupted run, bit for bit."""
    import evspec.training.loop as loop

    def args(out: Path) -> list[str]:
        return ["align", "train", "--store", str(store), "--adapter", "L5F", "--out", str(out), "--steps", "6",
                "--batch-size", "2", "--lr", "3e-3", "--warmup-steps", "1", "--eval-every", "3", "--checkpoint-every",
                "2", "--log-every", "1", "--holdout", str(HOLDOUT), "--device", "cpu", "--num-heads", "4", "--ffn-size", "128"]

    whole = tmp_path / "whole"
    assert main(args(whole)) == 0
    printed = capsys.readouterr().out
    assert "trained L5F for 6 steps" in printed and "SIMULATED (offline) at gamma 5" in printed
    assert {"config.json", "state.pt", "metrics.jsonl", "loss.png", "align.png", "head"} <= {p.name for p in whole.iterdir()}
    run_config = json.loads((whole / "config.json").read_text())
    assert run_config["identity"]["adapter"] == "L5F" and run_config["command"].startswith("evspec align train --store")
    evals = [r["eval"] for r in _metrics(whole) if "eval" in r]
    assert [sorted(e["simulated"]) for e in evals] == [["acceptance_rate", "label", "mean_acceptance_length", "replay", "rounds"]] * 2
    assert "replaying the live loop's rounds" in printed

    killed = tmp_path / "killed"
    original = loop.save_state

    def save_then_die(path, module, optimizer, step, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        original(path, module, optimizer, step, *args, **kwargs)
        if step == 2:
            raise KeyboardInterrupt  # as a kill right after the checkpoint (the loop never finishes)

    monkeypatch.setattr(loop, "save_state", save_then_die)
    assert main(args(killed)) != 0  # the CLI reports the interruption
    capsys.readouterr()
    monkeypatch.setattr(loop, "save_state", original)
    assert not (killed / "head").exists()
    assert main(args(killed)) == 0
    assert "resumed at step 2" in capsys.readouterr().out
    for name, tensor in _head_weights(whole).items():
        assert torch.equal(tensor, _head_weights(killed)[name]), name
    assert [r for r in _metrics(whole) if "loss" in r][-1]["loss"] == [r for r in _metrics(killed) if "loss" in r][-1]["loss"]


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_gloo_processes_follow_the_loss_curve_of_one(store: Path, tmp_path: Path, sharding: str) -> None:
    """torchrun --nproc_per_node 2 on the CPU (gloo), global batch 2 (one row per rank), against one
    process with batch 2: the same losses within 1e-5 relative (float summation order differs: the
    gradients are averaged across ranks after each rank's backward), replicated (DDP) or sharded
    (--fsdp: each rank holds half of each weight). A sharded run's state.pt holds whole tensors:
    rerun, it loads them back into its shards and exports the same head again."""
    common = ["align", "train", "--store", str(store), "--adapter", "B1", "--steps", "8", "--batch-size", "2",
              "--lr", "3e-3", "--warmup-steps", "1", "--eval-every", "4", "--checkpoint-every", "4", "--log-every", "1",
              "--holdout", str(HOLDOUT), "--device", "cpu", "--num-heads", "4", "--ffn-size", "128"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*common, "--out", str(one)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "evspec", *common, "--out", str(two), *(["--fsdp"] if sharding == "fsdp" else [])]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("trained B1") == 1 and "on 2 processes" in done.stdout  # rank 0 reports
    if sharding == "fsdp":
        state = torch.load(two / "state.pt", weights_only=True)
        whole = {k: tuple(v.shape) for k, v in state["model"].items()}
        assert state["sharded"] and whole == {k: tuple(v.shape) for k, v in _head_weights(one).items()}  # not halves
        exported = _head_weights(two)
        again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
        assert again.returncode == 0, again.stderr[-2000:]
        assert "resumed at step 8" in again.stdout
        for name, tensor in exported.items():
            assert torch.equal(_head_weights(two)[name], tensor), name
    curve = {r["step"]: r for r in _metrics(one) if "loss" in r}
    parallel = {r["step"]: r for r in _metrics(two) if "loss" in r}
    assert sorted(curve) == sorted(parallel) == list(range(1, 9))
    for step in curve:
        assert parallel[step]["world_size"] == 2
        assert parallel[step]["loss"] == pytest.approx(curve[step]["loss"], rel=1e-5), step
        assert parallel[step]["positions"] == curve[step]["positions"]  # counts summed over ranks
    assert curve[8]["loss"] < 0.7 * curve[1]["loss"]  # it learnt something: the curves are not flat
    assert_weights_follow(_head_weights(one), _head_weights(two), lr=3e-3, steps=8, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- bad input


def _error_line(capsys) -> str:  # noqa: ANN001
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    return lines[0]


def test_bad_input_is_one_clear_error(store: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    def args(out: Path, adapter: str = "B1", store_path: Path = store, *extra: str) -> list[str]:
        return ["align", "train", "--store", str(store_path), "--adapter", adapter, "--out", str(out), "--steps", "2",
                "--batch-size", "2", "--warmup-steps", "1", "--holdout", str(HOLDOUT), "--device", "cpu",
                "--num-heads", "4", "--ffn-size", "128", *extra]

    out = tmp_path / "run"
    assert main(args(tmp_path / "nothing", "L9")) == 1
    line = _error_line(capsys)
    assert "'L9' is unknown" in line and "--adapter" in line and "B1" in line

    assert main(args(out)) == 0
    capsys.readouterr()
    assert main(args(out, "EC")) == 1  # a run folder of another adapter
    line = _error_line(capsys)
    assert "another config" in line and "adapter" in line and "--force" in line
    assert main(args(out, "EC", store, "--force")) == 0
    capsys.readouterr()

    other = tmp_path / "other-store"  # a store of another config (its identity differs)
    shutil.copytree(store, other)
    index = json.loads((other / "index.json").read_text())
    index["identity"]["max_new_tokens"] = 99
    (other / "index.json").write_text(json.dumps(index))
    assert main(args(out, "EC", other)) == 1
    assert "another config" in _error_line(capsys)

    del index["config"]["fields"]["target_visual"]  # a store extracted without the target's visual tokens
    index["fields"] = index["config"]["fields"]
    (other / "index.json").write_text(json.dumps(index))
    assert main(args(tmp_path / "vs", "VS", other)) == 1
    assert "holds no target_visual" in _error_line(capsys)

    assert main(args(tmp_path / "x", "B1", tmp_path / "no-store")) == 1
    assert "not an alignment store" in _error_line(capsys)

    rebuilt = tmp_path / "rebuilt-store"  # rows of models rebuilt since under the same names
    shutil.copytree(store, rebuilt)
    index = json.loads((rebuilt / "index.json").read_text())
    assert len(index["config"]["target_weights_sha256"]) == 64 and len(index["config"]["draft_weights_sha256"]) == 64
    for role, adapter in (("target", "B1"), ("draft", "EC")):
        edited = json.loads(json.dumps(index))
        edited["config"][f"{role}_weights_sha256"] = "0" * 64
        (rebuilt / "index.json").write_text(json.dumps(edited))
        assert main(args(tmp_path / f"rebuilt-{role}", adapter, rebuilt)) == 1
        line = _error_line(capsys)
        assert f"other weights of tiny-{'videollava' if role == 'target' else 'eventgpt'}" in line
        assert f"{role}_weights_sha256" in line and "extract it again" in line
        assert not (tmp_path / f"rebuilt-{role}" / "state.pt").exists()

    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun --nproc_per_node 2: checked before any work
    assert main([*args(tmp_path / "y"), "--batch-size", "3"]) == 1
    line = _error_line(capsys)
    assert "not divisible by the world size 2" in line and "--batch-size" in line
    monkeypatch.delenv("WORLD_SIZE")
    assert main(args(tmp_path / "z", "B1", store, "--epochs", "1")) == 1
    assert "exactly one of" in _error_line(capsys)


# ----------------------------------------------------------------------------- --online


def test_online_rows_are_the_stores_rows(store: Path) -> None:
    """Computed in the loop, a row is the row the extraction stored, bit for bit, also the second
    time (when the target's answer is not decoded again)."""
    from evspec.align.extract import ExtractConfig
    from evspec.align.online import OnlineRows
    from evspec.align.store import AlignStore

    stored = AlignStore(store)
    online = OnlineRows(ExtractConfig(target="tiny-videollava", draft="tiny-eventgpt", dataset=stored.identity["dataset"],
                                      max_new_tokens=12))
    assert len(online) == len(stored) == 3
    for _ in range(2):
        for a, b in zip(online.rows([2, 0, 1]), stored.rows([2, 0, 1])):
            assert (a.sample_id, a.index) == (b.sample_id, b.index)
            for name, tensor in b.tensors().items():
                assert torch.equal(getattr(a, name), tensor), name
    assert online.field_width("target_hidden") == stored.field_width("target_hidden")
    assert online.field_width("draft_visual") == stored.field_width("draft_visual")


def test_online_training_follows_the_store_run(store: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from evspec.align.store import AlignStore

    dataset = AlignStore(store).identity["dataset"]
    common = ["--adapter", "EC", "--steps", "4", "--batch-size", "2", "--lr", "3e-3", "--warmup-steps", "1",
              "--eval-every", "4", "--log-every", "1", "--holdout", str(HOLDOUT), "--device", "cpu", "--num-heads", "4",
              "--ffn-size", "128", "--visual-queries", "2"]
    assert main(["align", "train", "--store", str(store), "--out", str(tmp_path / "stored"), *common]) == 0
    online = ["align", "train", "--online", "--target", "tiny-videollava", "--draft", "tiny-eventgpt", "--dataset", dataset,
              "--max-new-tokens", "12", "--out", str(tmp_path / "online"), *common]
    assert main(online) == 0
    capsys.readouterr()
    def untimed(run: Path) -> list[dict]:  # the same rows give the same losses and evaluations; times differ
        return [{k: v for k, v in r.items() if "second" not in k} for r in _metrics(run)]

    assert untimed(tmp_path / "online") == untimed(tmp_path / "stored")
    assert any("eval" in r for r in untimed(tmp_path / "online"))
    run = json.loads((tmp_path / "online" / "config.json").read_text())
    assert run["identity"]["online"]["target"] == "tiny-videollava" and run["identity"]["store"] == ""
    assert run["command"].startswith("evspec align train --online --target tiny-videollava")
    assert not list((tmp_path / "online").glob("*.safetensors")) and (tmp_path / "online" / "head").is_dir()


@pytest.mark.parametrize(("extra", "says"), [
    (["--online", "--draft", "tiny-eventgpt", "--dataset", "d"], "--online needs --target"),
    (["--target", "tiny-videollava"], "give --store, or --online"),
    (["--online", "--store", "s", "--target", "t", "--draft", "d", "--dataset", "d"], "not both"),
])
def test_online_options_are_checked(extra: list[str], says: str, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert main(["align", "train", "--adapter", "B1", "--out", str(tmp_path / "run"), "--steps", "1", *extra]) == 1
    assert says in _error_line(capsys)
