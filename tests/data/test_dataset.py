"""Dataset schema: seeds' rows, EventGPT conversations rows, path rules, errors, check_dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evspec.data.dataset import ClipRecord, check_dataset, load_dataset, save_dataset_json
from evspec.data.events import EventStream, write_eventgpt_npy
from evspec.data.render import save_png
from evspec.data.video import write_mp4
from evspec.errors import ConfigError, InputError

H, W = 32, 48


def make_files(root: Path, seq: str, clip: str) -> None:
    """One clip's real files in the seeds' layout."""
    rng = np.random.default_rng(abs(hash((seq, clip))) % 2**32)
    n = 50
    stream = EventStream.from_arrays(rng.integers(0, W, n), rng.integers(0, H, n),
                                     np.sort(rng.integers(0, 50_000, n)), rng.integers(0, 2, n),
                                     sensor_size=(W, H))
    for sub in ("event_npy", "event_image"):
        (root / sub / seq).mkdir(parents=True, exist_ok=True)
    write_eventgpt_npy(stream, root / "event_npy" / seq / f"{clip}.npy")
    for i in range(5):
        save_png(rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
                 root / "event_image" / seq / f"{clip}_{i}.png")
    write_mp4(rng.integers(0, 256, (6, H, W, 3), dtype=np.uint8), root / "mp4" / f"{seq}.mp4")


def seeds_row(seq: str, clip: str, split: str = "test", relative_to_subdir: bool = False) -> dict:
    """A row as the seeds write it; some of their files store paths relative to the subfolders."""
    if relative_to_subdir:
        return {"id": f"{seq}/{clip}", "split": split, "query": "What moves?",
                "event_data": f"{seq}/{clip}.npy",
                "event_image": [f"{seq}/{clip}_{i}.png" for i in range(5)],
                "video_data": f"{seq}.mp4"}
    return {"id": f"{seq}/{clip}", "split": split, "query": "What moves?",
            "event_data": f"event_npy/{seq}/{clip}.npy",
            "event_image": [f"event_image/{seq}/{clip}_{i}.png" for i in range(5)],
            "video_data": f"mp4/{seq}.mp4"}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    rows = []
    for k, seq in enumerate(["seq_a", "seq_b", "seq_c"]):
        make_files(tmp_path, seq, "000000")
        rows.append(seeds_row(seq, "000000", "test" if k else "train", relative_to_subdir=k == 2))
    (tmp_path / "dataset.json").write_text(json.dumps(rows))
    return tmp_path


def test_seeds_form_loads_and_resolves_paths(dataset: Path) -> None:
    samples = load_dataset(dataset)
    assert [s.id for s in samples] == ["seq_a/000000", "seq_b/000000", "seq_c/000000"]
    for s in samples:
        assert s.query == "What moves?" and s.answer is None
        assert s.event_path is not None and s.event_path.is_file()
        assert len(s.event_image_paths) == 5 and all(p.is_file() for p in s.event_image_paths)
        assert s.video_path is not None and s.video_path.is_file()
    # seq_c stores subfolder-relative paths: resolved against event_npy/, event_image/, mp4/.
    assert samples[2].event_path == dataset / "event_npy" / "seq_c" / "000000.npy"
    assert samples[2].video_path == dataset / "mp4" / "seq_c.mp4"


def test_split_and_max_samples(dataset: Path) -> None:
    assert [s.id for s in load_dataset(dataset, split="test")] == ["seq_b/000000", "seq_c/000000"]
    assert len(load_dataset(dataset, split="test", max_samples=1)) == 1
    with pytest.raises(InputError, match=r"no split 'val' in the dataset \(splits: test, train\)"):
        load_dataset(dataset, split="val")  # a typo must not look like an empty, clean selection
    with pytest.raises(ConfigError, match="max_samples"):
        load_dataset(dataset, max_samples=0)


def test_missing_file_keeps_root_relative_path(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text(json.dumps([seeds_row("s", "c")]))
    sample = load_dataset(tmp_path)[0]
    assert sample.event_path == tmp_path / "event_npy" / "s" / "c.npy"
    assert not sample.event_path.exists()


def test_conversations_form(tmp_path: Path) -> None:
    rows = [{"id": 7, "event_data": "a/b.npy", "conversations": [
        {"from": "human", "value": "<event>\nDescribe the scene in detail."},
        {"from": "gpt", "value": "A car turns left."}]}]
    (tmp_path / "train.json").write_text(json.dumps(rows))
    [s] = load_dataset(tmp_path, json_name="train.json")
    assert s.id == "7" and s.split == ""
    assert s.query == "Describe the scene in detail."
    assert s.answer == "A car turns left."
    # The JSON file itself may be given as the root.
    assert load_dataset(tmp_path / "train.json")[0].query == s.query


def test_inline_placeholder_is_stripped() -> None:
    rec = ClipRecord.model_validate({"id": "x", "conversations": [
        {"from": "human", "value": "<event> What is moving?"}]})
    assert rec.query == "What is moving?" and rec.answer is None


def test_extra_fields_are_kept_and_saved(tmp_path: Path) -> None:
    row = {**seeds_row("s", "c"), "answer": "A red ball.", "scene": {"objects": 1},
           "event_visible_answer": "A ball.", "weather": "rain"}
    rec = ClipRecord.model_validate(row)
    assert rec.model_extra == {"event_visible_answer": "A ball.", "weather": "rain"}
    save_dataset_json([rec], tmp_path / "dataset.json")
    saved = json.loads((tmp_path / "dataset.json").read_text())
    assert saved == [row]
    [s] = load_dataset(tmp_path)
    assert s.answer == "A red ball." and s.scene == {"objects": 1}


def test_single_image_string_becomes_a_list() -> None:
    rec = ClipRecord.model_validate({"id": "x", "query": "q", "event_image": "a.png"})
    assert rec.event_image == ["a.png"]


def test_bad_row_names_file_row_and_field(tmp_path: Path) -> None:
    rows = [seeds_row("s", "c"), {**seeds_row("s", "d"), "event_image": 5}]
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(InputError) as info:
        load_dataset(tmp_path)
    msg = str(info.value)
    assert "row 1" in msg and "event_image" in msg and "s/d" in msg and str(path) in msg


def test_row_without_question_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text(json.dumps([{"id": "a", "event_data": "x.npy"}]))
    with pytest.raises(InputError, match="row 0.*no question"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("content", ["{not json", json.dumps({"id": "a"}), json.dumps([3])])
def test_malformed_json_is_an_error(tmp_path: Path, content: str) -> None:
    (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(InputError) as info:
        load_dataset(tmp_path)
    assert info.value.path == tmp_path / "dataset.json"


def test_missing_json_lists_candidates(tmp_path: Path) -> None:
    (tmp_path / "EventGPT_test.json").write_text("[]")
    with pytest.raises(InputError, match="EventGPT_test.json.*json_name") as info:
        load_dataset(tmp_path)
    assert info.value.path == tmp_path / "dataset.json"


def test_check_dataset_clean(dataset: Path) -> None:
    assert check_dataset(dataset) == []


def test_check_dataset_finds_missing_truncated_and_corrupt(dataset: Path) -> None:
    (dataset / "event_npy" / "seq_a" / "000000.npy").unlink()
    png = dataset / "event_image" / "seq_b" / "000000_3.png"
    png.write_bytes(png.read_bytes()[:-100])
    mp4 = dataset / "mp4" / "seq_c.mp4"
    mp4.write_bytes(b"\x00" * 64 + mp4.read_bytes()[64:])
    npy = dataset / "event_npy" / "seq_c" / "000000.npy"
    npy.write_bytes(npy.read_bytes()[:150])
    problems = {(p.sample_id, p.path.name): p.message for p in check_dataset(dataset)}
    assert set(problems) == {("seq_a/000000", "000000.npy"), ("seq_b/000000", "000000_3.png"),
                             ("seq_c/000000", "seq_c.mp4"), ("seq_c/000000", "000000.npy")}
    assert problems[("seq_a/000000", "000000.npy")] == "missing"
    assert "truncated" in problems[("seq_b/000000", "000000_3.png")]
    assert "video" in problems[("seq_c/000000", "seq_c.mp4")]


def test_check_dataset_reports_a_shared_file_per_sample(tmp_path: Path) -> None:
    rows = [seeds_row("s", "c"), {**seeds_row("s", "c"), "id": "other"}]
    (tmp_path / "dataset.json").write_text(json.dumps(rows))
    problems = check_dataset(tmp_path)
    assert len(problems) == 2 * 7 and {p.sample_id for p in problems} == {"s/c", "other"}
