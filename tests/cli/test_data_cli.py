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


# --------------------------------------------------------------------------- output a user can pipe


def _broken_copy(dataset: Path, root: Path) -> tuple[Path, Path, Path]:
    """A copy under a long folder name with one truncated events file and one missing video."""
    import shutil

    broken = root / ("a-rather-long-folder-name-that-a-terminal-would-cut-" * 3) / "broken"
    shutil.copytree(dataset, broken)
    npy = sorted((broken / "event_npy").rglob("*.npy"))[0]
    npy.write_bytes(npy.read_bytes()[:100])
    mp4 = sorted((broken / "mp4").glob("*.mp4"))[0]
    mp4.unlink()
    return broken, npy, mp4


def test_piped_check_names_every_damaged_file_in_full(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken, npy, mp4 = _broken_copy(dataset, tmp_path)
    assert main(["data", "check", str(broken)]) == 1
    out = capsys.readouterr().out
    rows = [line.split("\t") for line in out.splitlines() if not line.startswith("#")]
    assert rows[0] == ["sample", "file", "problem"]
    assert {row[1] for row in rows[1:]} == {str(npy), str(mp4)}  # whole paths: nothing cut, nothing wrapped


def test_check_json_is_one_document_and_progress_goes_to_stderr(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    import evspec.cli.data as data_cli

    broken, npy, mp4 = _broken_copy(dataset, tmp_path)
    seen: list[tuple[int, int]] = []
    real_progress = data_cli._progress

    def watched(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        progress = real_progress(*args, **kwargs)  # type: ignore[arg-type]
        real_update = progress.update
        progress.update = lambda task, **kw: (seen.append((kw.get("completed"), kw.get("total"))), real_update(task, **kw))
        assert progress.console.stderr  # progress never mixes into stdout
        return progress

    monkeypatch.setattr(data_cli, "_progress", watched)
    assert main(["data", "check", str(broken), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is False and document["n_samples"] == 3
    assert {p["file"] for p in document["problems"]} == {str(npy), str(mp4)}
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_inspect_json_is_one_document(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    npy = next((dataset / "event_npy").rglob("*.npy"))
    mp4 = next((dataset / "mp4").glob("*.mp4"))
    for path, kind, key in ((dataset, "dataset", "samples"), (npy, "events", "events"), (mp4, "video", "frames")):
        assert main(["data", "inspect", str(path), "--json"]) == 0
        document = json.loads(capsys.readouterr().out)
        assert document["kind"] == kind and document["path"] == str(path) and isinstance(document[key], int)
    assert main(["data", "inspect", str(dataset), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 3


def test_check_refuses_an_unknown_split_and_an_empty_selection(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["data", "check", str(dataset), "--split", "nosuch"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no split 'nosuch'" in err and len(err.splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "dataset.json").write_text("[]")
    assert main(["data", "check", str(empty)]) == 1
    assert "holds no rows" in capsys.readouterr().err
