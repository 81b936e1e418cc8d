"""build_dataset on tiny clips: loadable output, determinism, resume, refusal of a foreign config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

import evspec.data.synth.builder as builder
from evspec.data.dataset import check_dataset, load_dataset
from evspec.data.events import read_events
from evspec.data.synth.builder import SynthConfig, build_dataset, clip_paths
from evspec.data.synth.scenes import SceneSpec
from evspec.data.video import probe_video
from evspec.errors import ConfigError

TINY = SynthConfig(clips=3, seed=11, size=(64, 48), fps=20, duration_s=0.25, test_fraction=0.34)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    calls: list[tuple[int, int]] = []
    summary = build_dataset(out, TINY, progress=lambda d, t: calls.append((d, t)))
    assert (summary.clips, summary.built, summary.skipped) == (3, 3, 0)
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert summary.n_events > 0 and summary.dataset_json == out / "dataset.json"
    return out


def test_output_is_a_loadable_checked_dataset(built: Path) -> None:
    samples = load_dataset(built)
    assert [s.id for s in samples] == [f"synth_{i:04d}_000000" for i in range(3)]
    assert sorted(s.split for s in samples) == ["test", "train", "train"]
    assert check_dataset(built) == []
    for s in samples:
        assert s.answer and s.query.endswith("?")
        assert s.scene is not None and s.scene["sensor_size"] == [64, 48]
        assert set(s.scene["qa"]) == {"objects", "motion", "count_moving", "describe"}
        SceneSpec.from_dict(s.scene)  # the scene is kept in full
        assert s.event_path is not None and s.video_path is not None
        info = probe_video(s.video_path)
        assert (info.n_frames, info.width, info.height, info.fps) == (5, 64, 48, 20.0)
        events = read_events(s.event_path, sensor_size=(64, 48))
        assert len(events) == s.scene["n_events"] > 0
        assert 0 < events.t.min() and events.t.max() <= 250_000  # the whole clip, in us
        assert len(s.event_image_paths) == 5
    rows = json.loads((built / "dataset.json").read_text())
    assert all("event_visible_answer" in r and "question_type" in r for r in rows)
    assert json.loads((built / "synth_config.json").read_text()) == TINY.model_dump(mode="json")


def test_same_seed_same_bytes(built: Path, tmp_path: Path) -> None:
    other = tmp_path / "again"
    build_dataset(other, TINY)
    assert (other / "dataset.json").read_bytes() == (built / "dataset.json").read_bytes()
    for i in range(3):
        paths = clip_paths(TINY, i)
        for rel in (paths.event_data, *paths.event_image):
            assert (other / rel).read_bytes() == (built / rel).read_bytes(), rel


def test_rerun_skips_finished_clips(built: Path) -> None:
    before = (built / "dataset.json").read_bytes()
    summary = build_dataset(built, TINY)
    assert (summary.built, summary.skipped) == (0, 3)
    assert (built / "dataset.json").read_bytes() == before


def test_resume_redoes_only_the_damaged_clip(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    build_dataset(out, TINY)
    paths = clip_paths(TINY, 1)
    original = (out / paths.event_data).read_bytes()
    mtimes = {i: (out / clip_paths(TINY, i).row).stat().st_mtime_ns for i in range(3)}
    (out / paths.event_data).unlink()
    summary = build_dataset(out, TINY)
    assert (summary.built, summary.skipped) == (1, 2)
    assert (out / paths.event_data).read_bytes() == original
    assert (out / clip_paths(TINY, 0).row).stat().st_mtime_ns == mtimes[0]
    assert (out / clip_paths(TINY, 2).row).stat().st_mtime_ns == mtimes[2]


def test_killed_build_keeps_finished_clips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Die while writing clip 1's images: clip 0 stays done, clip 1 has files but no row."""
    out = tmp_path / "ds"
    real_save_png = builder.save_png
    calls = {"n": 0}

    def dying_save_png(image: np.ndarray, path: Path) -> None:
        calls["n"] += 1
        if calls["n"] == TINY.n_event_images + 2:
            raise KeyboardInterrupt
        real_save_png(image, path)

    monkeypatch.setattr(builder, "save_png", dying_save_png)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(out, TINY)
    monkeypatch.setattr(builder, "save_png", real_save_png)
    assert (out / clip_paths(TINY, 0).row).is_file()
    assert (out / clip_paths(TINY, 1).event_data).is_file()
    assert not (out / clip_paths(TINY, 1).row).exists()
    assert not (out / "dataset.json").exists()
    summary = build_dataset(out, TINY)
    assert (summary.built, summary.skipped) == (2, 1)
    assert check_dataset(out) == []
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_other_config_is_refused(built: Path) -> None:
    with pytest.raises(ConfigError, match=r"another config \(seed: 11 -> 12\)"):
        build_dataset(built, TINY.model_copy(update={"seed": 12}))


def test_foreign_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text("[]")
    with pytest.raises(ConfigError, match="not empty"):
        build_dataset(tmp_path, TINY)


@pytest.mark.parametrize("bad", [{"size": (65, 48)}, {"clips": 0}, {"question_types": ("colour",)},
                                 {"min_objects": 3, "max_objects": 2}, {"colour": "red"}])
def test_config_validation(bad: dict) -> None:
    with pytest.raises(ValidationError):
        SynthConfig(**bad)
