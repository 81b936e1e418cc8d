"""`evspec data ...` end to end: synth, inspect, render, check, and one-line errors on bad input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from evspec.cli import main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "ds"
    assert main(["data", "synth", str(root), "--clips", "3", "--size", "64x48", "--duration", "0.5", "--seed", "3"]) == 0
    return root


def test_synth_writes_a_checkable_dataset(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (dataset / "dataset.json").exists()
    assert main(["data", "check", str(dataset)]) == 0
    assert "3 samples" in capsys.readouterr().out


def test_synth_resumes_and_refuses_another_config(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "synth", str(dataset), "--clips", "3", "--size", "64x48", "--duration", "0.5", "--seed", "3"]) == 0
    assert "0 built, 3 already done" in " ".join(capsys.readouterr().out.split())
    assert main(["data", "synth", str(dataset), "--clips", "3", "--size", "64x48", "--seed", "4"]) == 1
    assert "error" in capsys.readouterr().err


def test_inspect_every_kind(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    npy = next((dataset / "event_npy").rglob("*.npy"))
    mp4 = next((dataset / "mp4").glob("*.mp4"))
    for path in (dataset, npy, mp4):
        assert main(["data", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "samples" in out and "events" in out and "fps" in out


@pytest.mark.parametrize("style,expected", [("eventgpt", 5), ("histogram", 5), ("voxel", 2)])
def test_render_styles(dataset: Path, tmp_path: Path, style: str, expected: int) -> None:
    npy = next((dataset / "event_npy").rglob("*.npy"))
    assert main(["data", "render", str(npy), "--out", str(tmp_path), "--style", style, "--sensor", "64x48"]) == 0
    assert len(list(tmp_path.iterdir())) == expected


def test_check_lists_truncated_and_missing_files(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken"
    os.system(f"cp -r {dataset} {broken}")  # noqa: S605 - test-local copy
    npy = sorted((broken / "event_npy").rglob("*.npy"))[0]
    npy.write_bytes(npy.read_bytes()[:100])
    next((broken / "mp4").glob("*.mp4")).unlink()
    assert main(["data", "check", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "2 problems" in out


class _RunsCode:
    def __reduce__(self):  # noqa: ANN204
        return (os.system, ("touch should_not_exist",))


def test_malicious_pickle_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.npy"
    np.save(path, np.array({"x": _RunsCode()}, dtype=object), allow_pickle=True)
    assert main(["data", "inspect", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "should_not_exist").exists()


@pytest.mark.parametrize("args", [
    ["data", "inspect", "/no/such/file.npy"],
    ["data", "render", "/no/such/file.npy", "--out", "/tmp/x"],
    ["data", "synth", "/tmp/never", "--size", "65x48"],
    ["data", "check", "/no/such/dataset"],
])
def test_bad_input_is_one_error_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "Traceback" not in err


def test_debug_shows_the_traceback() -> None:
    from evspec.errors import InputError

    with pytest.raises(InputError):
        main(["--debug", "data", "inspect", "/no/such/file.npy"])


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "render", "x.npy", "--out", "o", "--style", "bogus"]) == 2
