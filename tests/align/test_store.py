"""The alignment store without models: shards and index written by ranks, rows read back exactly,
the streaming loader's epochs (every row once, order from seed and epoch only, bounded memory),
and damaged or foreign stores refused with one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evspec.align.store import (
    INDEX_NAME,
    AlignRow,
    AlignStore,
    RankWriter,
    claim_store,
    merge_index,
    read_parts,
    sample_ranks,
)
from evspec.errors import ConfigError, InputError

IDENTITY = {"target": "t", "draft": "d", "layers": [1, 2]}


def fake_row(i: int) -> AlignRow:
    """Row i: lengths and values that differ per sample, so a row read back from another sample shows."""
    g = torch.Generator().manual_seed(i)
    t, td = 3 + i % 4, 2 + i % 3
    mask = torch.ones(t, dtype=torch.bool)
    mask[-1] = False
    return AlignRow(
        sample_id=f"s{i:03d}", target_ids=torch.randint(0, 100, (t,), generator=g), loss_mask=mask,
        target_hidden=torch.randn(t, 8, generator=g).bfloat16(), target_low=torch.randn(t, 8, generator=g).bfloat16(),
        target_mid=torch.randn(t, 8, generator=g).bfloat16(), draft_ids=torch.randint(0, 100, (td,), generator=g),
        draft_hidden=torch.randn(td, 6, generator=g).bfloat16(), draft_visual=torch.randn(5, 6, generator=g).bfloat16(),
        target_visual=torch.randn(7, 8, generator=g).bfloat16() if i % 2 == 0 else None,
    )


def make_store(folder: Path, n: int = 10, shard_rows: int = 3, world_size: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"n_samples": n}
    for rank in range(world_size):
        writer = RankWriter(folder, rank, world_size, IDENTITY, config, shard_rows)
        for i in [i for i, owner in enumerate(sample_ranks(n, world_size)) if owner == rank]:
            writer.add(fake_row(i), i)
        writer.flush()
    merge_index(folder, n_samples=n)
    return folder


def assert_rows_equal(a: AlignRow, b: AlignRow) -> None:
    assert a.sample_id == b.sample_id
    ta, tb = a.tensors(), b.tensors()
    assert ta.keys() == tb.keys()
    for name in ta:
        assert ta[name].dtype == tb[name].dtype and torch.equal(ta[name], tb[name]), name


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    return make_store(tmp_path / "store")


def test_rows_read_back_exactly_in_dataset_order_whatever_the_ranks(tmp_path: Path) -> None:
    one = AlignStore(make_store(tmp_path / "one"))
    three = AlignStore(make_store(tmp_path / "three", shard_rows=2, world_size=3), verify=True)
    assert len(one) == len(three) == 10
    assert one.sample_ids == three.sample_ids == [f"s{i:03d}" for i in range(10)]
    for i in range(10):
        assert_rows_equal(one[i], fake_row(i))
        assert_rows_equal(three[i], fake_row(i))
        assert three[i].index == i
    assert three[-1].sample_id == "s009"
    assert three[3].target_visual is None and three[4].target_visual is not None
    with pytest.raises(IndexError):
        three[10]
    index = json.loads((tmp_path / "three" / INDEX_NAME).read_text())
    assert index["complete"] and index["rows"] == 10 and len(index["shards"]) == 6  # ranks of 4, 3, 3 rows
    assert {s["file"] for s in index["shards"]} == {f"shard-r{r:03d}-{k:05d}.safetensors" for r in range(3) for k in range(2)}
    summary = index["summary"]
    assert summary["bytes"] == sum(s["bytes"] for s in index["shards"]) == sum(
        p.stat().st_size for p in (tmp_path / "three").glob("shard-*.safetensors"))
    assert summary["bytes_per_sample"] == pytest.approx(summary["bytes"] / 10)


@pytest.mark.parametrize(("shard_rows", "buffer_rows"), [(3, 1), (3, 4), (4, 100), (1, 2)])
def test_stream_visits_every_row_once_in_an_order_set_by_seed_and_epoch(tmp_path: Path, shard_rows: int, buffer_rows: int) -> None:
    folder = make_store(tmp_path / "s", n=11, shard_rows=shard_rows)
    store = AlignStore(folder)

    def epoch(s: AlignStore, e: int, seed: int = 7) -> list[str]:
        stream = s.stream(e, seed, buffer_rows=buffer_rows)
        opened = s.shards_opened
        rows = list(stream)
        assert len(stream) == len(rows)
        # memory: at most the buffer's rows held, and each shard opened once (one open at a time)
        assert stream.peak_rows_held <= buffer_rows
        assert s.shards_opened - opened <= len(s.shards)
        for row in rows:  # rows come whole and keep their store index
            assert_rows_equal(row, fake_row(int(row.sample_id[1:])))
            assert s.sample_ids[row.index] == row.sample_id
        return [r.sample_id for r in rows]

    first = epoch(store, 0)
    assert sorted(first) == store.sample_ids  # every row exactly once
    assert epoch(AlignStore(folder), 0) == first  # seed and epoch alone decide: a fresh reader agrees
    second = epoch(store, 1)
    assert sorted(second) == store.sample_ids and second != first
    assert epoch(store, 0, seed=8) != first
    # under two ranks each epoch splits the shards: disjoint, together every row
    halves = [[r.sample_id for r in store.stream(3, 7, buffer_rows=buffer_rows, rank=k, world_size=2)] for k in range(2)]
    assert not set(halves[0]) & set(halves[1]) and sorted(halves[0] + halves[1]) == store.sample_ids


def test_stream_buffer_bounds_rows_held(store: Path) -> None:
    s = AlignStore(store)
    stream = s.stream(0, 1, buffer_rows=2)
    iterator = iter(stream)
    next(iterator)
    assert stream.peak_rows_held == 2  # two read, one handed out
    list(iterator)
    assert stream.peak_rows_held == 2
    with pytest.raises(RuntimeError):
        list(stream)  # one pass per stream
    with pytest.raises(ConfigError, match="buffer_rows"):
        s.stream(0, 1, buffer_rows=0)


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_shards_are_refused_with_one_clear_error(store: Path) -> None:
    shard = sorted(store.glob("shard-*.safetensors"))[1]
    original = shard.read_bytes()
    _flip_byte(shard, len(original) - 3)  # a tensor byte: same size, same header
    AlignStore(store)  # the cheap checks pass ...
    with pytest.raises(InputError, match="sha256") as error:
        AlignStore(store, verify=True)  # ... the sha256 does not
    assert shard.name in str(error.value) and "\n" not in str(error.value)
    shard.write_bytes(original[:-10])
    with pytest.raises(InputError, match="truncated"):
        AlignStore(store)
    shard.write_bytes(b"\xff" * 8 + original[8:])  # a header length safetensors cannot read
    with pytest.raises(InputError, match="not a readable safetensors shard"):
        AlignStore(store)
    shard.unlink()
    with pytest.raises(InputError, match="is missing"):
        AlignStore(store)
    shard.write_bytes(original)
    AlignStore(store, verify=True)


def test_foreign_incomplete_and_inconsistent_stores_are_refused(tmp_path: Path, store: Path) -> None:
    s = AlignStore(store)
    s.require(target="t", draft="d")
    with pytest.raises(ConfigError, match="target is 't', not 'other'"):
        s.require(target="other")
    with pytest.raises(InputError, match="no index.json"):
        AlignStore(tmp_path)
    # a store whose parts hold fewer rows than the dataset: incomplete
    partial = tmp_path / "partial"
    partial.mkdir()
    writer = RankWriter(partial, 0, 1, IDENTITY, {"n_samples": 5}, 2)
    writer.add(fake_row(0), 0)
    writer.flush()
    assert merge_index(partial)["complete"] is False
    with pytest.raises(InputError, match="incomplete"):
        AlignStore(partial)
    # a part claiming a sample its rank was never given (sample_ranks gave it to rank 1)
    part = json.loads((partial / "index.rank000.json").read_text())
    part["shards"][0]["world_size"] = 2
    part["shards"][0]["sample_indices"] = [sample_ranks(5, 2).index(1)]
    (partial / "index.rank000.json").write_text(json.dumps(part))
    with pytest.raises(InputError, match="inconsistent"):
        merge_index(partial)
    (partial / "index.rank000.json").write_text("{not json")
    with pytest.raises(InputError, match="index.rank000.json"):
        merge_index(partial)


def test_claim_drops_torn_and_unlisted_shards_and_refuses_other_configs(store: Path) -> None:
    shards = sorted(store.glob("shard-*.safetensors"))
    shards[-1].write_bytes(shards[-1].read_bytes()[:-5])  # torn: its samples must be redone
    orphan = store / "shard-r000-00042.safetensors"
    orphan.write_bytes(shards[0].read_bytes())  # written by a run killed before its part listed it
    dropped = claim_store(store, IDENTITY, force=False)
    assert len(dropped) == 1 and shards[-1].name in dropped[0] and "truncated" in dropped[0]
    assert not orphan.exists() and not shards[-1].exists()
    kept = [s for p in read_parts(store) for s in p.shards]
    assert [s.file for s in kept] == [p.name for p in shards[:-1]]
    with pytest.raises(ConfigError, match="another config") as error:
        claim_store(store, {**IDENTITY, "layers": [0, 1]}, force=False)
    assert error.value.parameters == ("force",)
    claim_store(store, {**IDENTITY, "layers": [0, 1]}, force=True)
    assert list(store.iterdir()) == []


def test_ranks_share_samples_evenly_across_the_question_rotation() -> None:
    """Synthetic rows rotate four question types (two short answers, two long) with the index:
    each rank gets about as many of each as the others, every sample exactly one rank."""
    for world_size in (2, 3, 4):
        ranks = sample_ranks(1200, world_size)
        assert ranks == sample_ranks(1200, world_size)  # the same in every process
        counts = [[sum(1 for i, r in enumerate(ranks) if r == rank and i % 4 == kind) for kind in range(4)]
                  for rank in range(world_size)]
        assert sum(map(sum, counts)) == 1200
        for per_rank in counts:
            assert abs(sum(per_rank) - 1200 / world_size) <= 1
            for count in per_rank:  # i % world_size would give 0 or 2x for some pairs
                assert abs(count - 300 / world_size) < 0.25 * 300 / world_size
    assert sample_ranks(5, 1) == [0] * 5
